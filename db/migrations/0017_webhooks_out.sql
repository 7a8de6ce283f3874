-- Webhooks out (issue 18): a client's callback URL on its task, and the transactional outbox.
--
-- A row trigger on tasks writes the outbox: every change of status or progress, whoever makes
-- it (taskhook_transition_many, and through it taskhook_receive_many), is an UPDATE of tasks,
-- so the event commits with the move or not at all, and no function that moves tasks has to
-- restate it. Its WHEN clause is judged without calling the function, so tasks without a
-- webhook pay nothing.

ALTER TABLE tasks ADD COLUMN webhook_url text, ADD COLUMN webhook_events text[];

CREATE TABLE webhook_outbox (
    id               bigserial PRIMARY KEY,
    task_id          uuid NOT NULL,  -- no foreign key: a log, like task_events
    user_id          uuid NOT NULL,
    url              text NOT NULL,
    host             text NOT NULL,  -- the URL's host[:port]: the unit of isolation
    event            text NOT NULL CHECK (event IN ('start', 'progress', 'completed')),
    task_status      task_status NOT NULL,  -- the state that caused the event
    progress         smallint NOT NULL,
    webhook_id       text NOT NULL UNIQUE,  -- the same on every attempt: clients dedupe on it
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed', 'gone', 'superseded')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_task ON webhook_outbox (task_id, id);
-- Finished events, oldest first: pruning after TASKHOOK_DELIVERY_RETENTION, failures lists.
CREATE INDEX webhook_outbox_finished ON webhook_outbox (updated_at) WHERE state <> 'pending';

-- What was sent, when, and the answer: GET /v1/tasks/{id}/webhook_attempts.
CREATE TABLE webhook_attempts (
    id            bigserial PRIMARY KEY,
    outbox_id     bigint NOT NULL REFERENCES webhook_outbox (id) ON DELETE CASCADE,
    task_id       uuid NOT NULL,
    attempt       integer NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   integer NOT NULL,
    status_code   integer,  -- NULL: no answer (refused, timed out, address not allowed)
    error         text,
    response_body text  -- its first bytes only
);
CREATE INDEX webhook_attempts_task ON webhook_attempts (task_id, id);
CREATE INDEX webhook_attempts_outbox ON webhook_attempts (outbox_id);

-- A placeholder for the trigger below. Its body lives in db/functions/taskhook_webhook_outbox.sql
-- (issue 19.4), which `taskhook migrate` applies after the migrations.
CREATE FUNCTION taskhook_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN NULL;
END
$fn$;

CREATE TRIGGER tasks_webhook_outbox AFTER UPDATE OF status, progress ON tasks
    FOR EACH ROW
    WHEN (NEW.webhook_url IS NOT NULL
          AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress))
    EXECUTE FUNCTION taskhook_webhook_outbox();
