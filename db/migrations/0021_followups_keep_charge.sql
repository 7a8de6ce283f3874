-- 0021_followups_keep_charge: a task a follow-up action builds on keeps its charge when its
-- output cannot be stored (issue 14.2's leftover). An action may be taken on a parent in
-- `storing`: the vendor finished it. If storing it then fails (storage_failed,
-- output_limit_exceeded, result_expired), refunding it gave the client the vendor's job its
-- follow-up used for free. Such a task fails (recorded as ever) without a refund.
--
-- Whether a task was refunded can no longer be read from its status, so the transition
-- records it on the row (`refunded`, set in the statement that writes the refund), and
-- task_rows reads it from there: still no ledger lookup per row (0014_live_paths.sql).
ALTER TABLE tasks ADD COLUMN refunded boolean NOT NULL DEFAULT false;
-- Every failed or canceled task so far was refunded (audit_refunds proved it); along the
-- partial index tasks_refunded, without touching the rest.
UPDATE tasks SET refunded = true WHERE status IN ('failed', 'canceled') AND NOT refunded;

CREATE OR REPLACE VIEW task_rows AS
SELECT t.id, t.user_id, t.vendor, t.model, COALESCE(t.vendor_model, t.model) AS vendor_model,
       t.fallbacks, t.parent_id, t.input, t.cost, t.status::text AS status, t.progress,
       t.vendor_task_id, t.outputs, t.result, t.error, t.trace_id, t.attempts,
       t.storage_attempts, t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.completed_at, t.next_attempt_at, t.next_poll_at,
       t.refunded,
       t.vendor_urls, t.create_ambiguous_at
  FROM tasks AS t;

-- The rule itself is in the transition: db/functions/taskhook_transition_many.sql.
