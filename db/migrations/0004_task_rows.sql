-- 0004_task_rows: a task as the code reads it (db.models.Task), in one place: every query that
-- returns tasks selects from this view, so the column list and `refunded` are written once.

CREATE VIEW task_rows AS
SELECT t.id, t.user_id, t.vendor, t.model, t.input, t.cost, t.status::text AS status, t.progress,
       t.vendor_task_id, t.outputs, t.result, t.error, t.trace_id, t.attempts,
       t.storage_attempts, t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.completed_at, t.next_attempt_at, t.next_poll_at,
       EXISTS (SELECT 1 FROM credit_ledger AS l WHERE l.task_id = t.id AND l.kind = 'refund')
           AS refunded
  FROM tasks AS t;
