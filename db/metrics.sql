-- Queue depths for /metrics (db/metrics_queries.py wraps each block). Read at every scrape, so
-- each count stays on a partial index and touches only live tasks and dead letters, however
-- many finished tasks and accepted deliveries the tables hold.

-- queue_depths --
-- One row: live tasks per state (tasks_pending_due, tasks_poll_due, tasks_storing_due), live
-- tasks past their deadline (tasks_deadline_open), polls the reconciler would make now
-- (tasks_poll_due, as claim_due_polls, less the tasks it would only defer because news asked
-- for a later date) and dead letters (webhook_deliveries_rejected).
SELECT (SELECT count(*) FROM tasks WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM tasks WHERE status = 'submitted') AS submitted,
       (SELECT count(*) FROM tasks WHERE status = 'processing') AS processing,
       (SELECT count(*) FROM tasks WHERE status = 'storing') AS storing,
       (SELECT count(*) FROM tasks
         WHERE status IN ('pending', 'submitted', 'processing', 'storing')
           AND deadline_at < now()) AS overdue,
       (SELECT count(*) FROM tasks
         WHERE status IN ('submitted', 'processing') AND next_poll_at <= now()
           AND (poll_not_before IS NULL OR poll_not_before <= now())) AS due_polls,
       (SELECT count(*) FROM webhook_deliveries WHERE status = 'rejected') AS dead_letters;
