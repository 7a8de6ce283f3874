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

-- search_tasks --
-- Operators find tasks by id ($1), owner ($2 user id, or $3 email) and status ($4: one state,
-- 'active' for every unfinished one, NULL for all), newest first.
SELECT r.* FROM task_rows AS r JOIN users AS u ON u.id = r.user_id
 WHERE ($1::uuid IS NULL OR r.id = $1)
   AND ($2::uuid IS NULL OR r.user_id = $2)
   AND ($3::text IS NULL OR u.email = $3)
   AND ($4::text IS NULL OR r.status = $4
        OR ($4 = 'active' AND r.status IN ('pending', 'submitted', 'processing', 'storing')))
 ORDER BY r.created_at DESC, r.id DESC
 LIMIT $5;

-- retry_registration_now --
-- A pending task waiting out a registration backoff is due now. Only one that waits longer
-- than a registration may take ($2 s): a shorter wait may be a registration in flight (the
-- claim's lease is next_attempt_at), and making that due again would create twice.
UPDATE tasks SET next_attempt_at = now()
 WHERE id = $1 AND status = 'pending' AND next_attempt_at > now() + make_interval(secs => $2)
RETURNING id;

-- retry_storage_now --
-- A storing task whose last storage attempt failed (its lease released, waiting out a
-- backoff) may be claimed again now; one a worker holds is left to it.
UPDATE tasks SET lease_expires_at = now()
 WHERE id = $1 AND status = 'storing' AND lease_owner IS NULL
   AND lease_expires_at > now()
RETURNING id;

-- pause_vendor --
-- No process calls a paused vendor (circuit_permits, open_circuits) until it is resumed.
INSERT INTO vendor_state (vendor, paused_at, paused_reason)
VALUES ($1, clock_timestamp(), $2)
ON CONFLICT (vendor) DO UPDATE
   SET paused_at = COALESCE(vendor_state.paused_at, clock_timestamp()),
       paused_reason = $2, updated_at = clock_timestamp()
RETURNING paused_at;

-- resume_vendor --
UPDATE vendor_state SET paused_at = NULL, paused_reason = NULL, updated_at = clock_timestamp()
 WHERE vendor = $1 AND paused_at IS NOT NULL
RETURNING vendor;

-- paused_vendors --
SELECT vendor, paused_at, paused_reason, last_error, last_error_at FROM vendor_state
 WHERE vendor NOT LIKE '%:create';

-- dead_letters_since --
-- Rejected deliveries received since $1, oldest first (webhook_deliveries_rejected).
SELECT id FROM webhook_deliveries
 WHERE status = 'rejected' AND received_at >= $1
 ORDER BY received_at, id
 LIMIT $2;
