-- 0005_routing: one model served by several vendors, and follow-up actions on finished jobs.
--   vendor_model: the id the current vendor knows the model by (NULL = the same as model, the
--                 name the client asked for).
--   fallbacks:    the routes still to try, in order of preference, while the task is pending;
--                 a registration that certainly did not reach its vendor moves to the next one.
--   parent_id:    the finished task an upscale/variation acts on (its input holds the action).

ALTER TABLE tasks
    ADD COLUMN vendor_model text,
    ADD COLUMN fallbacks    jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN parent_id    uuid REFERENCES tasks (id);

CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;

DROP VIEW task_rows;
CREATE VIEW task_rows AS
SELECT t.id, t.user_id, t.vendor, t.model, COALESCE(t.vendor_model, t.model) AS vendor_model,
       t.fallbacks, t.parent_id, t.input, t.cost, t.status::text AS status, t.progress,
       t.vendor_task_id, t.outputs, t.result, t.error, t.trace_id, t.attempts,
       t.storage_attempts, t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.completed_at, t.next_attempt_at, t.next_poll_at,
       EXISTS (SELECT 1 FROM credit_ledger AS l WHERE l.task_id = t.id AND l.kind = 'refund')
           AS refunded
  FROM tasks AS t;
