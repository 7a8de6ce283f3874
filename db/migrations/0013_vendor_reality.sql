-- 0013_vendor_reality: what real vendors need remembered of a task (issue 16).
--
-- vendor_urls: the status, result and cancel URLs fal's submit answer gives; its docs say to
-- use those rather than build them (older tasks keep NULL and get the built form).
-- create_ambiguous_at: when a create whose answer never came (a timeout, a 5xx) was sent.
-- No vendor offers an idempotency key, so before another create is sent the registration
-- asks the vendor whether that one made a job (Replicate's prediction list), and a task so
-- marked never fails over to another vendor: the job may exist where it was.

ALTER TABLE tasks ADD COLUMN vendor_urls jsonb;
ALTER TABLE tasks ADD COLUMN create_ambiguous_at timestamptz;

-- Results the vendor deleted before we stored them (issue 16.4), counted on /admin: few rows,
-- so a partial index keeps the count off the whole history.
CREATE INDEX tasks_result_expired ON tasks (vendor, completed_at)
    WHERE status = 'failed' AND error ->> 'code' = 'result_expired';

CREATE OR REPLACE VIEW task_rows AS
SELECT t.id, t.user_id, t.vendor, t.model, COALESCE(t.vendor_model, t.model) AS vendor_model,
       t.fallbacks, t.parent_id, t.input, t.cost, t.status::text AS status, t.progress,
       t.vendor_task_id, t.outputs, t.result, t.error, t.trace_id, t.attempts,
       t.storage_attempts, t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.completed_at, t.next_attempt_at, t.next_poll_at,
       EXISTS (SELECT 1 FROM credit_ledger AS l WHERE l.task_id = t.id AND l.kind = 'refund')
           AS refunded,
       t.vendor_urls, t.create_ambiguous_at
  FROM tasks AS t;
