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

CREATE FUNCTION taskhook_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    v_event text;
BEGIN
    -- Which of the client's events this move is: `completed` for any terminal state, `start`
    -- for the first move out of pending, `progress` for everything else.
    IF NEW.status IN ('completed', 'failed', 'canceled') THEN
        v_event := 'completed';
    ELSIF OLD.status = 'pending' AND NEW.status <> 'pending' THEN
        v_event := 'start';
    ELSE
        v_event := 'progress';
    END IF;
    IF NOT v_event = ANY(NEW.webhook_events) THEN
        RETURN NULL;
    END IF;
    -- A 410 Gone from this task's URL stops its deliveries.
    IF EXISTS (SELECT FROM webhook_outbox AS o WHERE o.task_id = NEW.id AND o.state = 'gone') THEN
        RETURN NULL;
    END IF;
    -- A newer state makes older undelivered non-terminal events moot: the body is the task as
    -- it is when sent, so the newer event carries it. (Under the task's row lock, held by the
    -- move: a task's events are written one at a time.)
    UPDATE webhook_outbox AS o SET state = 'superseded', updated_at = now()
     WHERE o.task_id = NEW.id AND o.state = 'pending' AND o.event <> 'completed';
    INSERT INTO webhook_outbox (task_id, user_id, url, host, event, task_status, progress,
                                webhook_id)
    VALUES (NEW.id, NEW.user_id, NEW.webhook_url,
            lower(COALESCE(substring(NEW.webhook_url
                                     FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)'),
                           NEW.webhook_url)),
            v_event, NEW.status, NEW.progress,
            'msg_' || replace(gen_random_uuid()::text, '-', ''));
    PERFORM pg_notify('taskhook_webhooks', '');
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
       t.status IN ('failed', 'canceled') AS refunded,
       t.vendor_urls, t.create_ambiguous_at
  FROM tasks AS t;

-- The state machine's one statement and a batch of webhooks' whole database work (0008);
-- taskhook_transition is the previous release's entry point, a wrapper.
CREATE FUNCTION taskhook_transition_many(
    p_task_id uuid[], p_event_key text[], p_to task_status[], p_allowed text[], p_cause text[],
    p_progress int[], p_vendor_task_id text[], p_outputs text[], p_result text[],
    p_error text[], p_detail text[], p_next_poll_at timestamptz[]
) RETURNS TABLE (
    ord int, from_status text, applied boolean, status text, progress int, refunds bigint,
    ended bigint, notified bigint
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    -- Per row: lock the task, record the event once, move it if the state machine allows
    -- (allowed: db.states.ALLOWED_FROM, comma-joined; a same-state report applies only when
    -- its progress grows), refund once when it fails or is canceled, and notify listeners.
    -- Tasks are locked in id order, so two callers cannot deadlock on each other's tasks.
    -- Users are updated once each, with the sum of their tasks' refunds, and visited in id
    -- order by the plan PostgreSQL picks for a batch's few rows; were another plan ever to
    -- deadlock with a concurrent caller, PostgreSQL breaks it and the receiver retries its
    -- batch one delivery at a time.
    IF cardinality(p_task_id) > (SELECT count(DISTINCT t) FROM unnest(p_task_id) AS t) THEN
        RAISE EXCEPTION 'taskhook_transition_many: one row per task';
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT *
          FROM unnest(p_task_id, p_event_key, p_to, p_allowed, p_cause, p_progress,
                      p_vendor_task_id, p_outputs, p_result, p_error, p_detail, p_next_poll_at)
               WITH ORDINALITY AS u(task_id, event_key, to_status, allowed, cause, progress,
                                    vendor_task_id, outputs, result, error, detail,
                                    next_poll_at, n)
    ), cur AS (
        SELECT t.id, t.status, t.progress
          FROM tasks AS t
         WHERE t.id = ANY(p_task_id)
         ORDER BY t.id
           FOR UPDATE
    ), decision AS (
        SELECT i.*, c.status AS from_status,
               (c.status = ANY(string_to_array(i.allowed, ',')::task_status[])
                AND (c.status <> i.to_status OR COALESCE(i.progress, -1) > c.progress))
                   AS applies
          FROM input AS i JOIN cur AS c ON c.id = i.task_id
    ), ev AS (
        INSERT INTO task_events (task_id, event_key, from_status, to_status, applied, cause,
                                 detail)
        SELECT d.task_id, d.event_key, d.from_status, d.to_status, d.applies, d.cause,
               d.detail::jsonb
          FROM decision AS d
        ON CONFLICT (task_id, event_key) DO NOTHING
        RETURNING task_id, applied
    ), moved AS (
        UPDATE tasks AS t
           SET status = CASE WHEN ev.applied THEN d.to_status ELSE t.status END,
               progress = CASE
                   WHEN NOT ev.applied THEN t.progress
                   WHEN d.to_status = 'completed' THEN 100
                   ELSE GREATEST(t.progress, COALESCE(d.progress, t.progress))
               END,
               vendor_task_id = COALESCE(t.vendor_task_id, d.vendor_task_id),
               outputs = CASE WHEN ev.applied THEN COALESCE(d.outputs::jsonb, t.outputs)
                              ELSE t.outputs END,
               result = CASE WHEN ev.applied THEN COALESCE(d.result::jsonb, t.result)
                             ELSE t.result END,
               error = CASE WHEN ev.applied THEN COALESCE(d.error::jsonb, t.error)
                            ELSE t.error END,
               -- Same status, a later date: the indexed next_poll_at stays (a HOT update) and
               -- the claim defers the poll to poll_not_before (claim_due_polls).
               next_poll_at = CASE
                   WHEN NOT ev.applied THEN t.next_poll_at
                   WHEN d.to_status = t.status AND d.next_poll_at >= t.next_poll_at
                       THEN t.next_poll_at
                   ELSE d.next_poll_at
               END,
               poll_not_before = CASE WHEN ev.applied THEN d.next_poll_at
                                      ELSE t.poll_not_before END,
               next_attempt_at = CASE WHEN ev.applied THEN NULL ELSE t.next_attempt_at END,
               lease_owner = CASE WHEN ev.applied THEN NULL ELSE t.lease_owner END,
               lease_expires_at = CASE WHEN ev.applied THEN NULL ELSE t.lease_expires_at END,
               updated_at = CASE WHEN ev.applied THEN now() ELSE t.updated_at END,
               completed_at = CASE
                   WHEN ev.applied AND d.to_status IN ('completed', 'failed', 'canceled')
                       THEN now()
                   ELSE t.completed_at
               END
          FROM decision AS d JOIN ev ON ev.task_id = d.task_id
         WHERE t.id = d.task_id
           AND (ev.applied OR (t.vendor_task_id IS NULL AND d.vendor_task_id IS NOT NULL))
        RETURNING t.id, t.user_id, t.cost, t.status, t.progress, ev.applied
    ), refund AS (
        INSERT INTO credit_ledger (user_id, task_id, kind, amount)
        SELECT m.user_id, m.id, 'refund', m.cost
          FROM moved AS m
         WHERE m.applied AND m.status IN ('failed', 'canceled')
        ON CONFLICT (task_id, kind) WHERE task_id IS NOT NULL DO NOTHING
        RETURNING user_id, task_id, amount
    ), ending AS (
        SELECT m.user_id, count(*) AS ended
          FROM moved AS m
         WHERE m.applied AND m.status IN ('completed', 'failed', 'canceled')
         GROUP BY m.user_id
    ), credited AS (
        -- One update per user: their refunds (if any) and their live tasks that ended.
        UPDATE users AS u
           SET balance = u.balance + COALESCE((SELECT sum(r.amount) FROM refund AS r
                                                WHERE r.user_id = u.id), 0),
               active_tasks = u.active_tasks - e.ended
          FROM (SELECT * FROM ending ORDER BY user_id) AS e
         WHERE u.id = e.user_id
        RETURNING u.id
    ), notified AS (
        SELECT m.id
          FROM moved AS m
         WHERE m.applied
           AND pg_notify('taskhook_tasks',
                         json_build_object('id', m.id, 'status', m.status,
                                           'progress', m.progress)::text) IS NOT NULL
    )
    SELECT i.n::int,
           d.from_status::text,
           ev.applied,
           m.status::text,
           m.progress::int,
           (r.task_id IS NOT NULL)::int::bigint,
           COALESCE(m.applied AND m.status IN ('completed', 'failed', 'canceled')
                    AND c.id IS NOT NULL, false)::int::bigint,
           (x.id IS NOT NULL)::int::bigint
      FROM input AS i
      LEFT JOIN decision AS d ON d.n = i.n
      LEFT JOIN ev ON ev.task_id = i.task_id
      LEFT JOIN moved AS m ON m.id = i.task_id
      LEFT JOIN refund AS r ON r.task_id = i.task_id
      LEFT JOIN credited AS c ON c.id = m.user_id
      LEFT JOIN notified AS x ON x.id = i.task_id;
END
$fn$;

CREATE FUNCTION taskhook_transition(
    p_task_id uuid, p_event_key text, p_to task_status, p_allowed task_status[], p_cause text,
    p_progress int, p_vendor_task_id text, p_outputs jsonb, p_result jsonb, p_error jsonb,
    p_detail jsonb, p_next_poll_at timestamptz
) RETURNS TABLE (
    from_status text, applied boolean, status text, progress int, refunds bigint, ended bigint,
    notified bigint
) LANGUAGE sql AS $fn$
    SELECT t.from_status, t.applied, t.status, t.progress, t.refunds, t.ended, t.notified
      FROM taskhook_transition_many(
               ARRAY[p_task_id], ARRAY[p_event_key], ARRAY[p_to],
               ARRAY[array_to_string(p_allowed, ',')], ARRAY[p_cause], ARRAY[p_progress],
               ARRAY[p_vendor_task_id], ARRAY[p_outputs::text], ARRAY[p_result::text],
               ARRAY[p_error::text], ARRAY[p_detail::text], ARRAY[p_next_poll_at]) AS t
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
#variable_conflict use_column
DECLARE
    v_rounds int := 1;  -- the most deliveries the batch holds for one task
    r int := 0;
    -- This round's deliveries (ordinals), their verdicts and what goes with them.
    c_n int[];
    c_verdict text[];
    c_message text[];
    c_trace text[];
    -- The round's deliveries that move their task: taskhook_transition_many's arguments.
    m_n int[];
    m_task uuid[];
    m_key text[];
    m_to task_status[];
    m_allowed text[];
    m_cause text[];
    m_progress int[];
    m_vendor_task_id text[];
    m_outputs text[];
    m_result text[];
    m_error text[];
    m_detail text[];
    m_next_poll_at timestamptz[];
BEGIN
    -- One batch of verified deliveries, each given exactly the work and answer it would get
    -- alone, in one round trip and one commit. The arrays are parallel, one element per
    -- delivery, `ord` says which answer is whose; JSON comes as text and `allowed` as a
    -- comma-joined list (PostgreSQL arrays cannot be ragged). A batch holding n deliveries
    -- for one task runs in n rounds, each taking the next delivery of every task.
    --
    -- A task's row lock held elsewhere must not keep a batch (and the receiver's commit
    -- slot) waiting: after a second (the function's lock_timeout setting) the call gives up
    -- (lock_not_available, all rolled back), the caller applies each delivery alone
    -- (db/group_commit.py), and only the delivery for the locked task fails, with a 503 its
    -- vendor retries.
    WHILE r < v_rounds LOOP
        r := r + 1;
        -- Lock this round's tasks (in id order) and judge each delivery. The lock comes
        -- before everything else: it serializes a task's deliveries, so the duplicate check
        -- sees any copy of this one that committed before us, and every row written below
        -- (events, inbox) is written under it, for a task that exists. (Every array_agg of
        -- one query sees the rows in the same order, so the arrays stay parallel.)
        WITH ranked AS (
            SELECT u.*, row_number() OVER (PARTITION BY u.task_id ORDER BY u.n)::int AS rk
              FROM unnest(p_vendor, p_delivery_id, p_task_id, p_signed, p_vendor_task_id)
                   WITH ORDINALITY AS u(vendor, delivery_id, task_id, signed, vendor_task_id,
                                        n)
        ), input AS (
            SELECT * FROM ranked WHERE ranked.rk = r
        ), locked AS (
            SELECT t.id, t.vendor, t.vendor_task_id, t.trace_id
              FROM tasks AS t
             WHERE t.id IN (SELECT i.task_id FROM input AS i)
             ORDER BY t.id
               FOR UPDATE
        ), judged AS (
            SELECT i.n::int AS n, t.trace_id,
                   CASE
                       WHEN t.id IS NULL THEN 'no_task'
                       WHEN t.vendor <> i.vendor THEN 'moved'
                       WHEN t.vendor_task_id <> i.vendor_task_id THEN 'rejected'
                       WHEN EXISTS (SELECT FROM webhook_deliveries AS w
                                     WHERE w.vendor = i.vendor
                                       AND w.delivery_id = i.delivery_id) THEN 'duplicate'
                       WHEN NOT i.signed THEN 'confirming'
                       ELSE 'transition'
                   END AS verdict,
                   CASE
                       WHEN t.vendor <> i.vendor
                           THEN format('The task is served by %s now, not %s.', t.vendor,
                                       i.vendor)
                       WHEN t.vendor_task_id <> i.vendor_task_id
                           THEN 'The payload''s job id does not match this callback''s task.'
                   END AS message
              FROM input AS i LEFT JOIN locked AS t ON t.id = i.task_id
        )
        SELECT array_agg(j.n), array_agg(j.verdict), array_agg(j.message),
               array_agg(j.trace_id), (SELECT max(x.rk) FROM ranked AS x)
          INTO c_n, c_verdict, c_message, c_trace, v_rounds
          FROM judged AS j;

        IF 'moved' = ANY(c_verdict) OR 'rejected' = ANY(c_verdict) THEN
            -- Kept for forensics; 'moved': the task failed over to another vendor, whose
            -- job this is not.
            INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, error,
                                            headers, body)
            SELECT p_vendor[c.n], p_delivery_id[c.n], p_task_id[c.n], 'rejected', c.message,
                   p_headers[c.n]::jsonb, p_body[c.n]
              FROM unnest(c_n, c_verdict, c_message) AS c(n, verdict, message)
             WHERE c.verdict IN ('moved', 'rejected')
             ORDER BY c.n
            ON CONFLICT (vendor, delivery_id) DO NOTHING;
        END IF;
        IF 'confirming' = ANY(c_verdict) THEN
            -- Unsigned vendors' callbacks are hints: due for a poll now, confirmed by the
            -- caller from the vendor's API.
            INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome,
                                            headers, body)
            SELECT p_vendor[c.n], p_delivery_id[c.n], p_task_id[c.n], 'accepted',
                   'confirming', p_headers[c.n]::jsonb, p_body[c.n]
              FROM unnest(c_n, c_verdict) AS c(n, verdict)
             WHERE c.verdict = 'confirming'
             ORDER BY c.n;
            UPDATE tasks AS t SET next_poll_at = now(), poll_not_before = NULL
              FROM unnest(c_n, c_verdict) AS c(n, verdict)
             WHERE c.verdict = 'confirming' AND t.id = p_task_id[c.n]
               AND t.status IN ('submitted', 'processing');
        END IF;

        IF NOT 'transition' = ANY(c_verdict) THEN
            RETURN QUERY
            SELECT c.n, c.verdict, c.message, c.trace_id, NULL::text, NULL::boolean,
                   NULL::text, 0::bigint
              FROM unnest(c_n, c_verdict, c_message, c_trace)
                   AS c(n, verdict, message, trace_id);
            CONTINUE;
        END IF;
        SELECT array_agg(c.n), array_agg(p_task_id[c.n]),
               array_agg('webhook:' || p_delivery_id[c.n]), array_agg(p_to[c.n]),
               array_agg(p_allowed[c.n]), array_agg('webhook'::text),
               array_agg(p_progress[c.n]), array_agg(p_vendor_task_id[c.n]),
               array_agg(p_outputs[c.n]), array_agg(NULL::text), array_agg(p_error[c.n]),
               array_agg(p_detail[c.n]), array_agg(p_next_poll_at[c.n])
          INTO m_n, m_task, m_key, m_to, m_allowed, m_cause, m_progress, m_vendor_task_id,
               m_outputs, m_result, m_error, m_detail, m_next_poll_at
          FROM unnest(c_n, c_verdict) AS c(n, verdict)
         WHERE c.verdict = 'transition';
        -- The moves, then the inbox rows, written once with what each delivery did. A plain
        -- INSERT: the same delivery id arriving for another task at this moment (no shared
        -- row lock) fails with unique_violation and takes the batch back with it; alone, the
        -- later copy is then answered as a duplicate.
        RETURN QUERY
        WITH moved AS (
            SELECT m_n[tr.ord] AS n, tr.*
              FROM taskhook_transition_many(m_task, m_key, m_to, m_allowed, m_cause,
                                            m_progress, m_vendor_task_id, m_outputs,
                                            m_result, m_error, m_detail, m_next_poll_at)
                   AS tr
        ), inbox AS (
            INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome,
                                            headers, body)
            SELECT p_vendor[m.n], p_delivery_id[m.n], p_task_id[m.n], 'accepted',
                   CASE WHEN m.from_status IS NULL THEN 'not_found'
                        WHEN m.applied IS NULL THEN 'duplicate'
                        WHEN m.applied THEN 'applied'
                        ELSE 'stale' END,
                   p_headers[m.n]::jsonb, p_body[m.n]
              FROM moved AS m
             ORDER BY m.n
        )
        SELECT c.n, c.verdict, c.message, c.trace_id, m.from_status, m.applied, m.status,
               COALESCE(m.refunds, 0)
          FROM unnest(c_n, c_verdict, c_message, c_trace) AS c(n, verdict, message, trace_id)
          LEFT JOIN moved AS m ON m.n = c.n;
    END LOOP;
END
$fn$;

-- Generic plans, made once per session: the arrays' sizes vary from call to call, and left to
-- choose, PostgreSQL kept planning these statements afresh on every call (custom plans
-- estimated cheaper for small arrays), which cost more than running them.
ALTER FUNCTION taskhook_transition_many SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION taskhook_receive_many SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION taskhook_receive_many SET lock_timeout = '1s';

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
