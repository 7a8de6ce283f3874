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
