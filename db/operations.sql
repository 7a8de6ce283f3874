-- What operators read and do beyond the dashboard's overview (issue 17.3 and 17.5): one
-- task's whole story, finding tasks, live tasks for `tasks list --status active`.
-- Wrapped by db/operations_queries.py.

-- task_owner --
SELECT u.id, u.email FROM tasks AS t JOIN users AS u ON u.id = t.user_id WHERE t.id = $1;

-- task_timeline --
-- Every transition attempt of one task, in order (UNIQUE (task_id, event_key) is the index).
SELECT id, event_key, from_status::text AS from_status, to_status::text AS to_status, applied,
       cause, detail, created_at
  FROM task_events WHERE task_id = $1
 ORDER BY id;

-- task_ledger --
SELECT kind, amount, note, created_at FROM credit_ledger WHERE task_id = $1 ORDER BY id;

-- task_deliveries --
-- Webhooks that named this task. Read along received_at from the task's creation (the log
-- has no index by task: it is the receiver's hot table), so an old task's are found until
-- they are pruned.
SELECT id, vendor, delivery_id, status, outcome, error, received_at, length(body) AS bytes
  FROM webhook_deliveries
 WHERE task_id = $1 AND received_at >= $2
 ORDER BY received_at, id
 LIMIT $3;

-- list_tasks_active --
-- Operators' view of every live task, newest first (only live tasks are read).
SELECT r.* FROM tasks AS k JOIN task_rows AS r ON r.id = k.id
 WHERE k.status IN ('pending', 'submitted', 'processing', 'storing')
 ORDER BY k.created_at DESC, k.id DESC
 LIMIT $1;
