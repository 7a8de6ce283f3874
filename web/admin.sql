-- Operator dashboard reads (web/admin_queries.py wraps each block). Read-only: the only thing
-- the dashboard changes, a dead-letter replay, goes through receiver.replay.

-- count_by_state --
-- Tasks per state, every state of the enum included (zero when none), in life order.
SELECT s.status::text AS status, count(t.id) AS n
  FROM unnest(enum_range(NULL::task_status)) AS s (status)
  LEFT JOIN tasks AS t ON t.status = s.status
 GROUP BY s.status
 ORDER BY s.status;

-- stuck_tasks --
-- Open tasks past their deadline, or with no news for $1 seconds; the worst first.
SELECT t.id, u.email, t.status::text AS status, t.progress, t.vendor, t.model, t.attempts,
       t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.deadline_at < now() AS overdue
  FROM tasks AS t JOIN users AS u ON u.id = t.user_id
 WHERE t.status IN ('pending', 'submitted', 'processing', 'storing')
   AND (t.deadline_at < now() OR t.updated_at < now() - make_interval(secs => $1))
 ORDER BY t.deadline_at, t.id
 LIMIT $2;

-- dead_letters --
-- Validly signed deliveries that could not be applied, newest first, until replayed.
SELECT id, vendor, delivery_id, task_id, error, received_at, length(body) AS bytes
  FROM webhook_deliveries
 WHERE status = 'rejected'
 ORDER BY received_at DESC, id DESC
 LIMIT $1;

-- vendor_health --
-- Rate-limit and circuit-breaker state each vendor shares across processes; a create budget's
-- own row (`<vendor>:create`, vendors/health.py) shows as that vendor's creates_blocked_until.
SELECT v.vendor, v.circuit, v.failures, v.open_until, v.blocked_until, v.updated_at,
       c.blocked_until AS creates_blocked_until
  FROM vendor_state AS v
  LEFT JOIN vendor_state AS c ON c.vendor = v.vendor || ':create'
 WHERE v.vendor NOT LIKE '%:create'
 ORDER BY v.vendor;

-- results_expired --
-- Per vendor, finished jobs whose result the vendor deleted before we stored it: ever, and
-- in the last day (the partial index tasks_result_expired).
SELECT vendor, count(*) AS total,
       count(*) FILTER (WHERE completed_at > now() - interval '1 day') AS last_day
  FROM tasks
 WHERE status = 'failed' AND error ->> 'code' = 'result_expired'
 GROUP BY vendor;

-- recent_refunds --
-- The newest refunds with their task, who got the credits back and why.
SELECT l.id, l.task_id, u.email, l.amount, l.created_at, t.status::text AS task_status,
       t.error ->> 'code' AS error_code
  FROM credit_ledger AS l
  JOIN users AS u ON u.id = l.user_id
  JOIN tasks AS t ON t.id = l.task_id
 WHERE l.kind = 'refund'
 ORDER BY l.created_at DESC, l.id DESC
 LIMIT $1;

-- user_credits --
-- Every user's balance and how many of their tasks are still open, by email.
SELECT u.id, u.email, u.balance,
       (SELECT count(*) FROM tasks AS t
         WHERE t.user_id = u.id
           AND t.status IN ('pending', 'submitted', 'processing', 'storing')) AS active_tasks
  FROM users AS u
 ORDER BY u.email
 LIMIT $1;
