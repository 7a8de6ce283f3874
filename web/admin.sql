-- Operator dashboard reads (web/admin_queries.py wraps each block). Read-only: the only thing
-- the dashboard changes, a dead-letter replay, goes through receiver.replay.

-- counts_mark --
-- Up to where the reconciler's housekeeping folded ended tasks into task_state_counts.
SELECT at, task_id FROM progress_marks WHERE name = 'counts';

-- count_by_state --
-- Tasks per state, every state of the enum included (zero when none), in life order, without
-- reading history: live states counted on their partial index (tasks_deadline_open), terminal
-- ones from task_state_counts (folded up to the 'counts' mark, $1 and $2) plus those that
-- ended after it (tasks_ended). The mark comes as values, planned for (web/admin_queries.py).
SELECT s.status::text AS status,
       COALESCE(c.n, 0) + COALESCE(r.n, 0) + COALESCE(l.n, 0) AS n
  FROM unnest(enum_range(NULL::task_status)) AS s (status)
  LEFT JOIN task_state_counts AS c ON c.status = s.status
  LEFT JOIN (SELECT t.status, count(*) AS n
               FROM tasks AS t
              WHERE t.completed_at IS NOT NULL
                AND (t.completed_at, t.id) > ($1::timestamptz, $2::uuid)
              GROUP BY t.status) AS r ON r.status = s.status
  LEFT JOIN (SELECT status, count(*) AS n FROM tasks
              WHERE status IN ('pending', 'submitted', 'processing', 'storing')
              GROUP BY status) AS l ON l.status = s.status
 ORDER BY s.status;

-- stuck_tasks --
-- Open tasks past their deadline, or with no news for $1 seconds, or pending and retrying
-- their registration after a failed attempt (last_error says why); the worst first (the page
-- chosen on the live tasks' index before their users are looked up).
SELECT t.id, u.email, t.status::text AS status, t.progress, t.vendor, t.model, t.attempts,
       t.last_error, t.created_at, t.updated_at, t.deadline_at,
       t.deadline_at < now() AS overdue,
       t.status = 'pending' AND t.last_error IS NOT NULL AS retrying
  FROM (SELECT * FROM tasks
         WHERE status IN ('pending', 'submitted', 'processing', 'storing')
           AND (deadline_at < now() OR updated_at < now() - make_interval(secs => $1)
                OR (status = 'pending' AND last_error IS NOT NULL))
         ORDER BY deadline_at, id
         LIMIT $2) AS t
  JOIN users AS u ON u.id = t.user_id
 ORDER BY t.deadline_at, t.id;

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
-- The newest refunds with their task, who got the credits back and why (the stored error's
-- detail, which its client never sees: taskhook.errors.TASK_ERRORS).
SELECT l.id, l.task_id, u.email, l.amount, l.created_at, t.status::text AS task_status,
       t.error ->> 'code' AS error_code, t.error ->> 'message' AS error_detail
  FROM credit_ledger AS l
  JOIN users AS u ON u.id = l.user_id
  JOIN tasks AS t ON t.id = l.task_id
 WHERE l.kind = 'refund'
 ORDER BY l.created_at DESC, l.id DESC
 LIMIT $1;

-- user_credits --
-- Users' balances and how many of their tasks are still open (users.active_tasks, kept by
-- submit and the transition, proven by `taskhook audit`), by email.
SELECT u.id, u.email, u.balance, u.active_tasks::bigint AS active_tasks
  FROM users AS u
 ORDER BY u.email
 LIMIT $1;
