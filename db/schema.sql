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
    UNIQUE (user_id, idempotency_key)
);

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

CREATE TABLE task_events (
    id          bigserial PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES tasks (id),
    event_key   text NOT NULL,
    from_status task_status NOT NULL,
    to_status   task_status NOT NULL,
    applied     boolean NOT NULL,
    cause       text NOT NULL,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (task_id, event_key)
);

CREATE TABLE credit_ledger (
    id         bigserial PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    task_id    uuid REFERENCES tasks (id),
    kind       text NOT NULL CHECK (kind IN ('grant', 'charge', 'refund')),
    amount     bigint NOT NULL,
    note       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'grant') = (task_id IS NULL)),
    -- Charges take credits away, grants and refunds give them back.
    CHECK (CASE kind WHEN 'charge' THEN amount <= 0 ELSE amount >= 0 END)
);
-- At most one charge and one refund per task, whoever races.
CREATE UNIQUE INDEX credit_ledger_task_kind ON credit_ledger (task_id, kind)
    WHERE task_id IS NOT NULL;
CREATE INDEX credit_ledger_user ON credit_ledger (user_id);

CREATE TABLE webhook_deliveries (
    id          bigserial PRIMARY KEY,
    vendor      text NOT NULL,
    delivery_id text NOT NULL,
    task_id     uuid REFERENCES tasks (id),
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
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE rate_windows (
    user_id      uuid NOT NULL REFERENCES users (id),
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (user_id, window_start)
);

CREATE VIEW task_rows AS
SELECT t.id, t.user_id, t.vendor, t.model, COALESCE(t.vendor_model, t.model) AS vendor_model,
       t.fallbacks, t.parent_id, t.input, t.cost, t.status::text AS status, t.progress,
       t.vendor_task_id, t.outputs, t.result, t.error, t.trace_id, t.attempts,
       t.storage_attempts, t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.completed_at, t.next_attempt_at, t.next_poll_at,
       EXISTS (SELECT 1 FROM credit_ledger AS l WHERE l.task_id = t.id AND l.kind = 'refund')
           AS refunded
  FROM tasks AS t;

CREATE FUNCTION taskhook_transition(
    p_task_id uuid, p_event_key text, p_to task_status, p_allowed task_status[], p_cause text,
    p_progress int, p_vendor_task_id text, p_outputs jsonb, p_result jsonb, p_error jsonb,
    p_detail jsonb, p_next_poll_at timestamptz
) RETURNS TABLE (
    from_status text, applied boolean, status text, progress int, refunds bigint, ended bigint,
    notified bigint
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    -- Lock the task, record the event once, move it if the state machine allows (p_allowed:
    -- db.states.ALLOWED_FROM; a same-state report applies only when its progress grows),
    -- refund once when it fails or is canceled, and notify listeners.
    RETURN QUERY
    WITH cur AS (
        SELECT id, user_id, status, progress, cost
          FROM tasks
         WHERE id = p_task_id
           FOR UPDATE
    ), decision AS (
        SELECT cur.*,
               (cur.status = ANY(p_allowed::task_status[])
                AND (cur.status <> p_to::task_status OR COALESCE(p_progress::int, -1) > cur.progress)) AS applies
          FROM cur
    ), ev AS (
        INSERT INTO task_events (task_id, event_key, from_status, to_status, applied, cause, detail)
        SELECT id, p_event_key, status, p_to::task_status, applies, p_cause, p_detail::jsonb FROM decision
        ON CONFLICT (task_id, event_key) DO NOTHING
        RETURNING applied
    ), moved AS (
        UPDATE tasks AS t
           SET status = CASE WHEN ev.applied THEN p_to::task_status ELSE t.status END,
               progress = CASE
                   WHEN NOT ev.applied THEN t.progress
                   WHEN p_to::task_status = 'completed' THEN 100
                   ELSE GREATEST(t.progress, COALESCE(p_progress::int, t.progress))
               END,
               vendor_task_id = COALESCE(t.vendor_task_id, p_vendor_task_id::text),
               outputs = CASE WHEN ev.applied THEN COALESCE(p_outputs::jsonb, t.outputs) ELSE t.outputs END,
               result = CASE WHEN ev.applied THEN COALESCE(p_result::jsonb, t.result) ELSE t.result END,
               error = CASE WHEN ev.applied THEN COALESCE(p_error::jsonb, t.error) ELSE t.error END,
               next_poll_at = CASE WHEN ev.applied THEN p_next_poll_at::timestamptz ELSE t.next_poll_at END,
               next_attempt_at = CASE WHEN ev.applied THEN NULL ELSE t.next_attempt_at END,
               lease_owner = CASE WHEN ev.applied THEN NULL ELSE t.lease_owner END,
               lease_expires_at = CASE WHEN ev.applied THEN NULL ELSE t.lease_expires_at END,
               updated_at = CASE WHEN ev.applied THEN now() ELSE t.updated_at END,
               completed_at = CASE
                   WHEN ev.applied AND p_to::task_status IN ('completed', 'failed', 'canceled') THEN now()
                   ELSE t.completed_at
               END
          FROM ev
         WHERE t.id = p_task_id
           AND (ev.applied OR (t.vendor_task_id IS NULL AND p_vendor_task_id::text IS NOT NULL))
        RETURNING t.id, t.user_id, t.cost, t.status, t.progress, ev.applied
    ), refund AS (
        INSERT INTO credit_ledger (user_id, task_id, kind, amount)
        SELECT user_id, id, 'refund', cost
          FROM moved
         WHERE applied AND status IN ('failed', 'canceled')
        ON CONFLICT (task_id, kind) WHERE task_id IS NOT NULL DO NOTHING
        RETURNING user_id, amount
    ), credited AS (
        -- One update of the user row: the refund (if any) and one live task fewer.
        UPDATE users AS u
           SET balance = u.balance + COALESCE((SELECT sum(r.amount) FROM refund AS r), 0),
               active_tasks = u.active_tasks - 1
          FROM moved AS m
         WHERE u.id = m.user_id AND m.applied AND m.status IN ('completed', 'failed', 'canceled')
        RETURNING u.id
    )
    SELECT (SELECT status::text FROM decision) AS from_status,
           (SELECT applied FROM ev) AS applied,
           (SELECT status::text FROM moved) AS status,
           (SELECT progress FROM moved)::int AS progress,
           (SELECT count(*) FROM refund) AS refunds,
           (SELECT count(*) FROM credited) AS ended,
           (SELECT count(pg_notify('taskhook_tasks',
                                   json_build_object('id', m.id, 'status', m.status,
                                                     'progress', m.progress)::text))
              FROM moved AS m WHERE m.applied) AS notified;
END
$fn$;

CREATE FUNCTION taskhook_receive(
    p_vendor text, p_delivery_id text, p_task_id uuid, p_headers jsonb, p_body bytea,
    p_signed boolean, p_vendor_task_id text, p_to task_status, p_allowed task_status[],
    p_progress int, p_outputs jsonb, p_error jsonb, p_detail jsonb, p_next_poll_at timestamptz
) RETURNS TABLE (
    verdict text, message text, trace_id text, from_status text, applied boolean, status text,
    refunds bigint
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    task record;
    reason text;
    moved record;
BEGIN
    -- The task's row lock first: the inbox row's foreign key takes KEY SHARE, and taking FOR
    -- UPDATE after it would deadlock with a concurrent delivery for the same task. The lock
    -- also serializes a task's deliveries, so the duplicate check below sees any copy of this
    -- one that committed before us.
    SELECT t.vendor, t.vendor_task_id, t.trace_id INTO task
      FROM tasks AS t WHERE t.id = p_task_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_task'::text, NULL::text, NULL::text, NULL::text, NULL::boolean,
                            NULL::text, 0::bigint;
        RETURN;
    END IF;
    IF task.vendor <> p_vendor THEN
        reason := format('The task is served by %s now, not %s.', task.vendor, p_vendor);
    ELSIF task.vendor_task_id IS NOT NULL AND task.vendor_task_id <> p_vendor_task_id THEN
        reason := 'The payload''s job id does not match this callback''s task.';
    END IF;
    IF reason IS NOT NULL THEN
        INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, error, headers,
                                        body)
        VALUES (p_vendor, p_delivery_id, p_task_id, 'rejected', reason, p_headers, p_body)
        ON CONFLICT (vendor, delivery_id) DO NOTHING;
        -- 'moved': the task failed over to another vendor, whose job this is not.
        RETURN QUERY SELECT CASE WHEN task.vendor <> p_vendor THEN 'moved' ELSE 'rejected' END,
                            reason, task.trace_id, NULL::text, NULL::boolean, NULL::text,
                            0::bigint;
        RETURN;
    END IF;
    PERFORM FROM webhook_deliveries AS d
      WHERE d.vendor = p_vendor AND d.delivery_id = p_delivery_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::text, task.trace_id, NULL::text,
                            NULL::boolean, NULL::text, 0::bigint;
        RETURN;
    END IF;
    IF NOT p_signed THEN
        -- Unsigned vendors' callbacks are hints: due for a poll now, confirmed by the caller.
        INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome, headers,
                                        body)
        VALUES (p_vendor, p_delivery_id, p_task_id, 'accepted', 'confirming', p_headers, p_body);
        UPDATE tasks AS t SET next_poll_at = now()
         WHERE t.id = p_task_id AND t.status IN ('submitted', 'processing');
        RETURN QUERY SELECT 'confirming'::text, NULL::text, task.trace_id, NULL::text,
                            NULL::boolean, NULL::text, 0::bigint;
        RETURN;
    END IF;
    SELECT * INTO moved
      FROM taskhook_transition(p_task_id, 'webhook:' || p_delivery_id, p_to, p_allowed,
                               'webhook', p_progress, p_vendor_task_id, p_outputs, NULL,
                               p_error, p_detail, p_next_poll_at);
    -- The inbox row is written once, with what the delivery did. A plain INSERT: the same
    -- delivery id arriving for another task at this moment (no shared row lock) fails with
    -- unique_violation and takes this transition back with it.
    INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome, headers, body)
    VALUES (p_vendor, p_delivery_id, p_task_id, 'accepted',
            CASE WHEN moved.from_status IS NULL THEN 'not_found'
                 WHEN moved.applied IS NULL THEN 'duplicate'
                 WHEN moved.applied THEN 'applied'
                 ELSE 'stale' END,
            p_headers, p_body);
    RETURN QUERY SELECT 'transition'::text, NULL::text, task.trace_id, moved.from_status,
                        moved.applied, moved.status, moved.refunds;
END
$fn$;

CREATE FUNCTION taskhook_receive_many(
    p_vendor text[], p_delivery_id text[], p_task_id uuid[], p_headers text[],
    p_body bytea[], p_signed boolean[], p_vendor_task_id text[], p_to task_status[],
    p_allowed text[], p_progress int[], p_outputs text[], p_error text[], p_detail text[],
    p_next_poll_at timestamptz[]
) RETURNS TABLE (
    ord int, verdict text, message text, trace_id text, from_status text, applied boolean,
    status text, refunds bigint
) LANGUAGE plpgsql AS $fn$
DECLARE
    d record;
BEGIN
    -- d.allowed is the comma-joined set of states delivery d may move from, and the JSON
    -- arguments come as text: PostgreSQL arrays cannot be ragged, and a JSON list inside a
    -- parameter array would read as another dimension. unnest walks the arrays once.
    -- One task's row lock held elsewhere must not keep a batch (and the receiver's commit
    -- slot) waiting: after a second it gives up (lock_not_available, all rolled back), the
    -- caller applies each delivery alone (db/group_commit.py), and only the delivery for the
    -- locked task fails, with a 503 its vendor retries. Writers hold task rows for a statement.
    PERFORM set_config('lock_timeout', '1s', true);
    FOR d IN
        SELECT *
          FROM unnest(p_vendor, p_delivery_id, p_task_id, p_headers, p_body, p_signed,
                      p_vendor_task_id, p_to, p_allowed, p_progress, p_outputs, p_error,
                      p_detail, p_next_poll_at)
               WITH ORDINALITY AS u(vendor, delivery_id, task_id, headers, body, signed,
                                    vendor_task_id, to_status, allowed, progress, outputs,
                                    error, detail, next_poll_at, n)
         ORDER BY u.task_id, u.n
    LOOP
        RETURN QUERY
        SELECT d.n::int, r.*
          FROM taskhook_receive(d.vendor, d.delivery_id, d.task_id, d.headers::jsonb, d.body,
                                d.signed, d.vendor_task_id, d.to_status,
                                string_to_array(d.allowed, ',')::task_status[], d.progress,
                                d.outputs::jsonb, d.error::jsonb, d.detail::jsonb,
                                d.next_poll_at) AS r;
    END LOOP;
END
$fn$;
