-- The whole current schema. Keep in step with migrations/ (tests/migration checks).

CREATE TYPE task_status AS ENUM (
    'pending', 'submitted', 'processing', 'storing', 'completed', 'failed', 'canceled'
);

CREATE TABLE users (
    id         uuid PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    balance    bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    active_tasks integer NOT NULL DEFAULT 0 CHECK (active_tasks >= 0)
);

CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    key_hash   bytea NOT NULL UNIQUE,
    prefix     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id, created_at);

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id),
    vendor           text NOT NULL,
    model            text NOT NULL,
    input            jsonb NOT NULL,
    cost             integer NOT NULL CHECK (cost >= 0),
    status           task_status NOT NULL DEFAULT 'pending',
    progress         smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    vendor_task_id   text,
    outputs          jsonb,
    result           jsonb,
    error            jsonb,
    idempotency_key  text,
    request_hash     bytea,
    trace_id         text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    storage_attempts integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    next_poll_at     timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deadline_at      timestamptz NOT NULL,
    completed_at     timestamptz,
    vendor_model     text,
    fallbacks        jsonb NOT NULL DEFAULT '[]'::jsonb,
    parent_id        uuid REFERENCES tasks (id),
    poll_not_before  timestamptz,
    confirmed_at     timestamptz,  -- the last confirmation fetch (0011)
    vendor_urls      jsonb,  -- fal's status/result/cancel URLs, as its submit answer gave them
    create_ambiguous_at timestamptz,  -- a create whose answer never came was sent then
    webhook_url      text,    -- the client's callback (0017)
    webhook_events   text[],  -- which of start, progress, completed it wants
    refunded         boolean NOT NULL DEFAULT false,  -- set with its refund (0021)
    UNIQUE (user_id, idempotency_key)
) WITH (fillfactor = 80);

CREATE INDEX tasks_user_created ON tasks (user_id, created_at DESC, id DESC);
CREATE INDEX tasks_vendor_task ON tasks (vendor, vendor_task_id) WHERE vendor_task_id IS NOT NULL;
-- Claim indexes cover only live tasks, so terminal rows age out of the hot paths.
CREATE INDEX tasks_pending_due ON tasks (next_attempt_at) WHERE status = 'pending';
CREATE INDEX tasks_storing_due ON tasks (lease_expires_at) WHERE status = 'storing';
CREATE INDEX tasks_poll_due ON tasks (next_poll_at)
    WHERE status IN ('submitted', 'processing');
CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_deadline_open ON tasks (deadline_at)
    WHERE status IN ('pending', 'submitted', 'processing', 'storing');
CREATE INDEX tasks_result_expired ON tasks (vendor, completed_at)
    WHERE status = 'failed' AND error ->> 'code' = 'result_expired';
-- Paths that must not read history (0014_live_paths.sql): a user's live tasks, the newest
-- tasks, tasks in the order they ended (retention, counts, incremental audit).
CREATE INDEX tasks_user_live ON tasks (user_id, created_at DESC, id DESC)
    WHERE status IN ('pending', 'submitted', 'processing', 'storing');
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_ended ON tasks (completed_at, id) WHERE completed_at IS NOT NULL;
-- Failed and canceled tasks, a few percent of all, newest first (0016_refunded_lists.sql).
CREATE INDEX tasks_user_refunded ON tasks (user_id, created_at DESC, id DESC)
    WHERE status IN ('failed', 'canceled');
CREATE INDEX tasks_refunded ON tasks (created_at DESC, id DESC)
    WHERE status IN ('failed', 'canceled');

CREATE TABLE task_events (
    id          bigserial PRIMARY KEY,
    task_id     uuid NOT NULL,  -- no foreign key: a log (0009_log_tables.sql)
    event_key   text NOT NULL,
    from_status task_status NOT NULL,
    to_status   task_status NOT NULL,
    applied     boolean NOT NULL,
    cause       text NOT NULL,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_id, event_key)
);
CREATE INDEX task_events_created ON task_events USING brin (created_at);

CREATE TABLE credit_ledger (
    id         bigserial PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    task_id    uuid REFERENCES tasks (id),
    kind       text NOT NULL CHECK (kind IN ('grant', 'charge', 'refund', 'adjust')),
    amount     bigint NOT NULL,
    note       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind IN ('grant', 'adjust')) = (task_id IS NULL)),
    -- Charges take credits away, grants and refunds give them back, an operator's adjustment
    -- (with its reason in note) either.
    CHECK (CASE kind WHEN 'charge' THEN amount <= 0
                     WHEN 'adjust' THEN amount <> 0
                     ELSE amount >= 0 END)
);
-- At most one charge and one refund per task, whoever races.
CREATE UNIQUE INDEX credit_ledger_task_kind ON credit_ledger (task_id, kind)
    WHERE task_id IS NOT NULL;
-- A user's ledger, newest first, a page at a time (GET /v1/me/usage).
CREATE INDEX credit_ledger_user_page ON credit_ledger (user_id, id);
CREATE INDEX credit_ledger_refunds ON credit_ledger (created_at DESC, id DESC)
    WHERE kind = 'refund';
CREATE INDEX credit_ledger_created ON credit_ledger USING brin (created_at);

CREATE TABLE webhook_deliveries (
    id          bigserial PRIMARY KEY,
    vendor      text NOT NULL,
    delivery_id text NOT NULL,
    task_id     uuid,  -- no foreign key: a log (0009_log_tables.sql)
    status      text NOT NULL CHECK (status IN ('accepted', 'rejected', 'replayed')),
    outcome     text,
    error       text,
    headers     jsonb NOT NULL,
    body        bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vendor, delivery_id)
);
CREATE INDEX webhook_deliveries_rejected ON webhook_deliveries (received_at)
    WHERE status = 'rejected';
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at)
    WHERE status <> 'rejected';

-- Where a step that walks history in order has got to (0014): the dashboard's counts,
-- retention of events and stored results, the incremental audit.
CREATE TABLE progress_marks (
    name       text PRIMARY KEY,
    at         timestamptz NOT NULL,
    task_id    uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO progress_marks (name, at, task_id)
VALUES ('events', '-infinity', DEFAULT), ('results', '-infinity', DEFAULT),
       ('counts', '-infinity', 'ffffffff-ffff-ffff-ffff-ffffffffffff');

-- Tasks per terminal state that ended up to the 'counts' mark (0014).
CREATE TABLE task_state_counts (
    status task_status PRIMARY KEY,
    n      bigint NOT NULL
);
INSERT INTO task_state_counts (status, n) VALUES ('completed', 0), ('failed', 0), ('canceled', 0);

CREATE TABLE vendor_state (
    vendor        text PRIMARY KEY,
    tokens        double precision NOT NULL DEFAULT 0,
    refilled_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_grant    integer NOT NULL DEFAULT 0,
    blocked_until timestamptz,
    failures      integer NOT NULL DEFAULT 0,
    circuit       text NOT NULL DEFAULT 'closed'
                  CHECK (circuit IN ('closed', 'open', 'half-open')),
    open_until    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- An operator's pause (0020): no process calls a paused vendor until it is resumed.
    paused_at     timestamptz,
    paused_reason text,
    -- The last failed call, so the dashboard can say why a circuit opened (0020).
    last_error    text,
    last_error_at timestamptz
);

-- The vendor account webhooks must come from, configured or learned and pinned (0011).
CREATE TABLE vendor_accounts (
    vendor     text PRIMARY KEY,
    account_id text NOT NULL,
    learned_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rate_windows (
    user_id      uuid NOT NULL REFERENCES users (id),
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (user_id, window_start)
);

-- Webhooks out to clients (0017, 0018): the outbox its trigger writes, attempts, secrets.
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

-- A placeholder for the trigger below; its body: db/functions/taskhook_webhook_outbox.sql,
-- applied after this file as after the migrations.
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

CREATE TABLE webhook_secrets (
    id         bigserial PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    key        bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE UNIQUE INDEX webhook_secrets_current ON webhook_secrets (user_id) WHERE expires_at IS NULL;
CREATE INDEX webhook_secrets_user ON webhook_secrets (user_id, id);

CREATE VIEW task_rows AS
SELECT t.id, t.user_id, t.vendor, t.model, COALESCE(t.vendor_model, t.model) AS vendor_model,
       t.fallbacks, t.parent_id, t.input, t.cost, t.status::text AS status, t.progress,
       t.vendor_task_id, t.outputs, t.result, t.error, t.trace_id, t.attempts,
       t.storage_attempts, t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.completed_at, t.next_attempt_at, t.next_poll_at,
       t.refunded,  -- 0021: a task a follow-up builds on keeps its charge
       t.vendor_urls, t.create_ambiguous_at
  FROM tasks AS t;

-- The SQL functions (taskhook_transition_many, taskhook_receive_many, the outbox trigger's) are
-- not written here: each lives in one file in db/functions/, applied after this file as after
-- the migrations (db/migrate.py: apply_functions).

-- Autovacuum by churn, not by a fifth of the table (0015_autovacuum.sql).
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE users SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE vendor_state SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000
);
ALTER TABLE progress_marks SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200
);
ALTER TABLE rate_windows SET (
    autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_threshold = 1000
);
ALTER TABLE task_events SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE credit_ledger SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE webhook_deliveries SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
