-- 0014_live_paths: every client, dashboard and reconciler path costs what the live work costs,
-- not what the history costs (issue 20). Measured by bench/growth.py, pinned by
-- tests/integration/test_plans.py.
--
-- Built in the migration's transaction (CREATE INDEX, not CONCURRENTLY: migrations run each in
-- one transaction): on 2M tasks this takes about a minute, during which writes to these tables
-- wait (bench/RESULTS.md). Run it in the release step, as every migration.

-- A user's live tasks, newest first: GET /v1/tasks?status=active (every 2 s per open tab)
-- reads them without walking the user's history.
CREATE INDEX tasks_user_live ON tasks (user_id, created_at DESC, id DESC)
    WHERE status IN ('pending', 'submitted', 'processing', 'storing');
-- Every user's tasks, newest first: `taskhook tasks list` reads its page, not the table.
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
-- Tasks in the order they ended: retention takes the oldest, the incremental audit and the
-- dashboard's counts of terminal states the newest since their watermark.
CREATE INDEX tasks_ended ON tasks (completed_at, id) WHERE completed_at IS NOT NULL;
-- The dashboard's newest refunds.
CREATE INDEX credit_ledger_refunds ON credit_ledger (created_at DESC, id DESC)
    WHERE kind = 'refund';
-- Ledger rows and events by time, for the incremental audit: both tables are append-only, so
-- a BRIN index (a few pages for millions of rows, next to nothing per insert) finds the recent
-- ones.
CREATE INDEX credit_ledger_created ON credit_ledger USING brin (created_at);
CREATE INDEX task_events_created ON task_events USING brin (created_at);
-- The inbox's pruning and the audit's recent deliveries: accepted and replayed ones by time
-- (dead letters have webhook_deliveries_rejected). Pruning deletes from the old end, so a
-- pass with nothing due reads one index page, not the inbox.
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at)
    WHERE status <> 'rejected';

-- `refunded` without the ledger: the transition writes a task's refund in the statement that
-- fails or cancels it, and only then (taskhook_transition_many), so a task is refunded exactly
-- when it is failed or canceled; `taskhook audit` proves it (audit_refunds). The subquery
-- this replaces became a scan of the whole ledger in generic plans.
CREATE OR REPLACE VIEW task_rows AS
SELECT t.id, t.user_id, t.vendor, t.model, COALESCE(t.vendor_model, t.model) AS vendor_model,
       t.fallbacks, t.parent_id, t.input, t.cost, t.status::text AS status, t.progress,
       t.vendor_task_id, t.outputs, t.result, t.error, t.trace_id, t.attempts,
       t.storage_attempts, t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.completed_at, t.next_attempt_at, t.next_poll_at,
       t.status IN ('failed', 'canceled') AS refunded,
       t.vendor_urls, t.create_ambiguous_at
  FROM tasks AS t;

-- Where a step that walks history in order has got to: the dashboard's counts, retention of
-- events and of stored results (tasks ended up to (at, task_id) are done), the incremental
-- audit (its last clean run started at `at`). One row per step.
CREATE TABLE progress_marks (
    name       text PRIMARY KEY,
    at         timestamptz NOT NULL,
    task_id    uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO progress_marks (name, at) VALUES ('events', '-infinity'), ('results', '-infinity');

-- Tasks per terminal state that ended up to the 'counts' mark, folded in by the reconciler's
-- housekeeping; the dashboard adds those ended since (tasks_ended) and counts live states on
-- their partial index. Filled here from the existing history.
CREATE TABLE task_state_counts (
    status task_status PRIMARY KEY,
    n      bigint NOT NULL
);
INSERT INTO progress_marks (name, at, task_id)
SELECT 'counts', COALESCE(max(completed_at), '-infinity'), 'ffffffff-ffff-ffff-ffff-ffffffffffff'
  FROM tasks WHERE completed_at IS NOT NULL AND completed_at < now() - interval '10 minutes';
INSERT INTO task_state_counts (status, n)
SELECT s.status, count(t.id)
  FROM unnest(enum_range(NULL::task_status)) AS s (status)
  LEFT JOIN tasks AS t
    ON t.status = s.status AND t.completed_at IS NOT NULL
   AND t.completed_at <= (SELECT at FROM progress_marks WHERE name = 'counts')
 WHERE s.status IN ('completed', 'failed', 'canceled')
 GROUP BY s.status;
