-- Every statement, named. Lock order, for every statement and transaction: task rows first
-- (several: in id order), then user rows. The transition (taskhook_transition_many) locks its
-- tasks and then credits their users; a follow-up action locks its parent (lock_parent)
-- before create_task charges the user. Transactions that take rows in one order can wait for
-- each other but never deadlock.

-- transition --
-- The only writer of tasks.status: taskhook_transition_many (db/migrations/0008_set_based.sql),
-- here for one task. JSON arguments come as text, the allowed states comma-joined. `age`: the
-- seconds since submit of a task this move ended (taskhook_task_duration_seconds), else NULL.
SELECT t.from_status, t.applied, t.status, t.progress, t.refunds, t.ended, t.notified,
       CASE WHEN t.applied AND t.status IN ('completed', 'failed', 'canceled') THEN
           (SELECT extract(epoch FROM now() - k.created_at)::float8
              FROM tasks AS k WHERE k.id = $1::uuid)
       END AS age
  FROM taskhook_transition_many(ARRAY[$1::uuid], ARRAY[$2::text], ARRAY[$3::task_status],
                                ARRAY[$4::text], ARRAY[$5::text], ARRAY[$6::int],
                                ARRAY[$7::text], ARRAY[$8::text], ARRAY[$9::text],
                                ARRAY[$10::text], ARRAY[$11::text], ARRAY[$12::timestamptz])
       AS t;

-- receive_webhooks --
-- Verified webhooks' whole database work in one round trip and one commit
-- (taskhook_receive_many, 0008); `age` as in transition, looked up only for a task that ended.
SELECT r.*,
       CASE WHEN r.applied AND r.status IN ('completed', 'failed', 'canceled') THEN
           (SELECT extract(epoch FROM now() - k.created_at)::float8
              FROM tasks AS k WHERE k.id = ($3::uuid[])[r.ord])
       END AS age
  FROM taskhook_receive_many($1, $2, $3, $4, $5, $6, $7, $8::task_status[], $9, $10,
                             $11, $12, $13, $14) AS r;

-- create_user --
-- A new user and their first API key (stored only as a hash).
WITH u AS (
    INSERT INTO users (id, email) VALUES ($1, $2) RETURNING id
)
INSERT INTO api_keys (id, user_id, key_hash, prefix)
SELECT $3, u.id, $4, $5 FROM u
RETURNING user_id;

-- get_user_by_email --
SELECT id, email, balance, created_at FROM users WHERE email = $1;

-- get_user --
SELECT id, email, balance, created_at FROM users WHERE id = $1;

-- authenticate --
-- The user behind an API key hash, if the key is not revoked, and (when $2 > 0) this request
-- counted against their per-minute window: one round trip for both.
WITH u AS (
    SELECT u.id, u.email, u.balance, u.created_at
      FROM api_keys AS k JOIN users AS u ON u.id = k.user_id
     WHERE k.key_hash = $1 AND k.revoked_at IS NULL
), hit AS (
    INSERT INTO rate_windows (user_id, window_start, hits)
    SELECT u.id, date_trunc('minute', now()), 1 FROM u WHERE $2 > 0
    ON CONFLICT (user_id, window_start) DO UPDATE SET hits = rate_windows.hits + 1
    RETURNING hits, window_start
)
SELECT u.*, hit.hits,
       extract(epoch FROM hit.window_start + interval '1 minute' - now()) AS window_left
  FROM u LEFT JOIN hit ON true;

-- user_limits --
SELECT balance, active_tasks FROM users WHERE id = $1;

-- prune_rate_windows --
DELETE FROM rate_windows WHERE window_start < now() - interval '1 hour';

-- grant_credits --
-- Credits given by an operator: the ledger row and the balance move together.
WITH g AS (
    INSERT INTO credit_ledger (user_id, kind, amount, note)
    VALUES ($1, 'grant', $2, $3)
    RETURNING user_id, amount
)
UPDATE users AS u SET balance = u.balance + g.amount FROM g WHERE u.id = g.user_id
RETURNING u.balance;

-- find_idempotent_task --
SELECT id, request_hash FROM tasks WHERE user_id = $1 AND idempotency_key = $2;

-- lock_parent --
-- A follow-up action's parent, locked before create_task charges the user: rows are locked in
-- one order everywhere, task rows (several: in id order) before user rows, as the transition
-- locks its tasks and then refunds their users. (Charging first and then reaching the parent
-- through the foreign key, while a cancel held the parent and waited for the user, deadlocked.)
-- FOR SHARE, held until the child commits: other follow-ups of the parent pass, while the
-- parent's own moves (the transition's FOR UPDATE) wait, so the status read here is still
-- the parent's when the child is inserted.
SELECT status::text FROM tasks WHERE id = $1 AND user_id = $2 FOR SHARE;

-- create_task --
-- Charge and insert in one statement: no charge without a task, no task without a charge.
-- Locks the user's row; a follow-up's parent must be locked before (lock_parent).
-- No row means the balance was short or the user is at the active-task cap $12 (0 = none);
-- a row with task_id NULL means a concurrent request with the same idempotency key won (the
-- caller rolls back and returns that task).
WITH charged AS (
    UPDATE users SET balance = balance - $6, active_tasks = active_tasks + 1
     WHERE id = $2 AND balance >= $6 AND ($12 = 0 OR active_tasks < $12)
    RETURNING id
), task AS (
    INSERT INTO tasks (id, user_id, vendor, model, input, cost, idempotency_key, request_hash,
                       trace_id, deadline_at, next_attempt_at, vendor_model, fallbacks, parent_id)
    SELECT $1, charged.id, $3, $4, $5::jsonb, $6, $7, $8, $9,
           now() + make_interval(secs => $10), now() + make_interval(secs => $11),
           NULLIF($13::text, $4), $14::jsonb, $15
      FROM charged
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING id, user_id, cost
), ledger AS (
    INSERT INTO credit_ledger (user_id, task_id, kind, amount)
    SELECT user_id, id, 'charge', -cost FROM task
    RETURNING task_id
)
SELECT charged.id AS user_id, (SELECT task_id FROM ledger) AS task_id FROM charged;

-- get_task --
-- One task with whether it was refunded; user_id NULL means any user (operators).
SELECT t.* FROM task_rows AS t
 WHERE t.id = $1 AND ($2::uuid IS NULL OR t.user_id = $2);

-- list_tasks --
-- Operators' view, newest first (tasks_created: the page, not the table).
SELECT t.* FROM task_rows AS t
 ORDER BY t.created_at DESC, t.id DESC
 LIMIT $1;

-- list_tasks_completed --
-- Operators' view of completed tasks, newest first, along tasks_created (most tasks are).
SELECT t.* FROM task_rows AS t
 WHERE t.status = 'completed'
 ORDER BY t.created_at DESC, t.id DESC
 LIMIT $1;

-- list_tasks_refunded --
-- Operators' view of failed or canceled tasks ($1), newest first, along tasks_refunded.
SELECT r.* FROM tasks AS k JOIN task_rows AS r ON r.id = k.id
 WHERE k.status IN ('failed', 'canceled') AND k.status = $1::task_status
 ORDER BY k.created_at DESC, k.id DESC
 LIMIT $2;

-- list_tasks_live --
-- Operators' view of one live state ($1), newest first: only live tasks are read (the partial
-- index tasks_deadline_open), whatever the history. Materialized first: walking tasks_created
-- instead, as a generic plan may, reads the whole history when the state has few tasks.
WITH live AS MATERIALIZED (
    SELECT id, created_at FROM tasks
     WHERE status IN ('pending', 'submitted', 'processing', 'storing')
       AND status = $1::task_status
)
SELECT r.* FROM live AS k JOIN task_rows AS r ON r.id = k.id
 ORDER BY k.created_at DESC, k.id DESC
 LIMIT $2;

-- claim_pending_registrations --
-- Pending tasks due for a (re)try at the vendor. SKIP LOCKED lets many workers run at once;
-- pushing next_attempt_at out is the lease: a crashed worker's claim expires by itself.
UPDATE tasks
   SET next_attempt_at = now() + make_interval(secs => $2), attempts = attempts + 1
 WHERE id IN (SELECT id FROM tasks
               WHERE status = 'pending' AND next_attempt_at <= now()
               ORDER BY next_attempt_at
               LIMIT $1
                 FOR UPDATE SKIP LOCKED)
RETURNING id, attempts;

-- begin_registration --
-- The first registration attempt, made right after submit; counts as attempt one.
UPDATE tasks
   SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
 WHERE id = $1 AND status = 'pending'
RETURNING attempts;

-- reroute_task --
-- Registration certainly did not reach the current vendor: move a still-unregistered task to
-- its next route ($2: the vendor we are leaving, so two workers cannot both move it). Never
-- after an ambiguous create there: that one may have made a job. The attempt counter restarts
-- for the new vendor; the charge stays what the client was quoted.
WITH moved AS (
    UPDATE tasks
       SET vendor = fallbacks->0->>'vendor',
           vendor_model = NULLIF(fallbacks->0->>'model', model),
           fallbacks = fallbacks - 0,
           attempts = 1,
           next_attempt_at = now() + make_interval(secs => $3),
           last_error = $4,
           updated_at = now()
     WHERE id = $1 AND status = 'pending' AND vendor = $2 AND vendor_task_id IS NULL
       AND create_ambiguous_at IS NULL AND jsonb_array_length(fallbacks) > 0
    RETURNING id, vendor, vendor_model
), event AS (
    INSERT INTO task_events (task_id, event_key, from_status, to_status, cause, applied, detail)
    SELECT id, 'reroute:' || $2 || '->' || vendor, 'pending', 'pending', 'failover', true,
           jsonb_build_object('from', $2::text, 'to', vendor, 'error', $4::text)
      FROM moved
    ON CONFLICT (task_id, event_key) DO NOTHING
)
SELECT vendor FROM moved;

-- open_circuits --
-- Vendors nobody may call right now (circuit open, or paused by an operator); submit routes
-- around them.
SELECT vendor FROM vendor_state
 WHERE (circuit = 'open' AND open_until > clock_timestamp()) OR paused_at IS NOT NULL;

-- schedule_registration_retry --
-- A transient vendor failure: try again later (only if still pending). $4: the vendor was not
-- called at all (circuit open, no token), so this attempt does not count towards giving up.
-- $5: when a create whose answer never came was sent (kept from the first such one).
UPDATE tasks
   SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3,
       attempts = attempts - CASE WHEN $4 THEN 1 ELSE 0 END,
       create_ambiguous_at = COALESCE(create_ambiguous_at, $5)
 WHERE id = $1 AND status = 'pending';

-- unclaimed_vendor_jobs --
-- Of these jobs at a vendor, those no task has recorded: only such a job may be adopted as
-- the one an ambiguous create made.
SELECT j.id
  FROM unnest($2::text[]) WITH ORDINALITY AS j(id, n)
 WHERE NOT EXISTS (SELECT FROM tasks AS t WHERE t.vendor = $1 AND t.vendor_task_id = j.id)
 ORDER BY j.n;

-- set_vendor_urls --
-- Where the vendor said to ask about this task's job; written once, by the registration.
UPDATE tasks SET vendor_urls = $2::jsonb WHERE id = $1 AND vendor_urls IS NULL;

-- claim_storing --
-- Finished tasks whose output still has to reach S3, under a lease that expires by itself;
-- those whose vendor deletes the result soonest first ($4: vendor -> seconds it keeps one;
-- a task entered storing at its updated_at: nothing moves a storing task but its end). Vendors
-- that keep results count as a day. Ordered by time in storing, a dead worker's claims, free
-- again once their lease lapses, never wait behind newer work. With the seconds left to their
-- storing deadline: $5 seconds after they entered storing. Not the task's deadline: a success
-- the last poll found at the deadline must still be stored.
UPDATE tasks
   SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
       storage_attempts = storage_attempts + 1
 WHERE id IN (SELECT id FROM tasks
               WHERE status = 'storing'
                 AND (lease_expires_at IS NULL OR lease_expires_at <= now())
               ORDER BY updated_at
                        + make_interval(secs => COALESCE(($4::jsonb ->> vendor)::float8, 86400))
               LIMIT $1
                 FOR UPDATE SKIP LOCKED)
RETURNING id, storage_attempts,
          extract(epoch FROM updated_at + make_interval(secs => $5) - now())::float8
              AS time_left;

-- storing_overdue --
-- Tasks still storing past their storing deadline (see claim_storing), whoever holds them: a
-- stuck or dead worker must not keep a task there for ever. The reconciler fails them.
SELECT id, vendor, trace_id FROM tasks
 WHERE status = 'storing' AND updated_at <= now() - make_interval(secs => $1)
 ORDER BY updated_at
 LIMIT $2;

-- renew_storing --
-- The worker still holding these claims is alive: push their leases out again.
UPDATE tasks SET lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = ANY($1::uuid[]) AND lease_owner = $2 AND status = 'storing';

-- release_storing --
-- A failed storage attempt: let the lease lapse after a backoff so another try comes later.
UPDATE tasks
   SET lease_owner = NULL, lease_expires_at = now() + make_interval(secs => $3), last_error = $4
 WHERE id = $1 AND status = 'storing' AND lease_owner = $2;

-- record_delivery --
-- The webhook inbox: a conflict means this delivery was seen before.
INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome, error, headers, body)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
ON CONFLICT (vendor, delivery_id) DO NOTHING
RETURNING id;

-- set_delivery_outcome --
UPDATE webhook_deliveries SET outcome = $2 WHERE id = $1;

-- list_deliveries --
-- The inbox, newest first: the newest of the accepted and replayed ones
-- (webhook_deliveries_received) and of the dead letters (webhook_deliveries_rejected), each
-- read backwards along its own index, merged: a page, not the week the inbox keeps.
SELECT * FROM (
    (SELECT id, vendor, delivery_id, task_id, status, outcome, error, received_at,
            length(body) AS bytes
       FROM webhook_deliveries WHERE status <> 'rejected'
      ORDER BY received_at DESC, id DESC LIMIT $1)
    UNION ALL
    (SELECT id, vendor, delivery_id, task_id, status, outcome, error, received_at,
            length(body) AS bytes
       FROM webhook_deliveries WHERE status = 'rejected'
      ORDER BY received_at DESC, id DESC LIMIT $1)
) AS d
 ORDER BY received_at DESC, id DESC
 LIMIT $1;

-- list_dead_letters --
-- Dead letters only, newest first (webhook_deliveries_rejected).
SELECT id, vendor, delivery_id, task_id, status, outcome, error, received_at,
       length(body) AS bytes
  FROM webhook_deliveries
 WHERE status = 'rejected'
 ORDER BY received_at DESC, id DESC
 LIMIT $1;

-- list_deliveries_status --
-- Accepted or replayed ones only ($1), newest first (webhook_deliveries_received).
SELECT id, vendor, delivery_id, task_id, status, outcome, error, received_at,
       length(body) AS bytes
  FROM webhook_deliveries
 WHERE status <> 'rejected' AND status = $1
 ORDER BY received_at DESC, id DESC
 LIMIT $2;

-- audit_balances --
-- Users whose balance differs from the sum of their ledger.
SELECT u.id, u.email, u.balance, COALESCE(sum(l.amount), 0)::bigint AS ledger
  FROM users AS u LEFT JOIN credit_ledger AS l ON l.user_id = u.id
 GROUP BY u.id
HAVING u.balance <> COALESCE(sum(l.amount), 0);

-- audit_refunds --
-- Refunds that do not match a failed or canceled task exactly once, except a failed task a
-- follow-up action builds on, which keeps its charge (0021_followups_keep_charge.sql; a parent
-- has a child only once the vendor finished it, so it can only fail from storing).
SELECT t.id, t.status::text AS status,
       count(l.id) FILTER (WHERE l.kind = 'refund') AS refunds,
       count(l.id) FILTER (WHERE l.kind = 'charge') AS charges
  FROM tasks AS t LEFT JOIN credit_ledger AS l ON l.task_id = t.id
 GROUP BY t.id
HAVING count(l.id) FILTER (WHERE l.kind = 'charge') <> 1
    OR count(l.id) FILTER (WHERE l.kind = 'refund') <> t.refunded::int
    OR t.refunded <> (t.status = 'canceled'
                      OR (t.status = 'failed'
                          AND NOT EXISTS (SELECT FROM tasks AS k WHERE k.parent_id = t.id)));

-- audit_active_counts --
-- Users whose live-task count differs from their tasks (live tasks counted once, grouped).
SELECT u.id, u.email, u.active_tasks, COALESCE(a.n, 0) AS actual
  FROM users AS u
  LEFT JOIN (SELECT user_id, count(*) AS n FROM tasks
              WHERE status IN ('pending', 'submitted', 'processing', 'storing')
              GROUP BY user_id) AS a ON a.user_id = u.id
 WHERE u.active_tasks <> COALESCE(a.n, 0);

-- audit_orphans --
-- Log rows naming a task that does not exist. task_events and webhook_deliveries carry no
-- foreign keys (0009_log_tables.sql): the functions write them under the task's row lock, and
-- this checks it. Deliveries: accepted ones only; a dead letter keeps whatever task id its
-- callback token named.
SELECT 'task_events' AS log, e.task_id, count(*) AS rows
  FROM task_events AS e
 WHERE NOT EXISTS (SELECT FROM tasks AS t WHERE t.id = e.task_id)
 GROUP BY e.task_id
UNION ALL
SELECT 'webhook_deliveries', w.task_id, count(*)
  FROM webhook_deliveries AS w
 WHERE w.status = 'accepted'
   AND NOT EXISTS (SELECT FROM tasks AS t WHERE t.id = w.task_id)
 GROUP BY w.task_id
 ORDER BY 1, 2
 LIMIT 100;

-- audit_overdue --
-- Open tasks past their deadline by more than the grace period. A task storing has until the
-- later of its deadline and its storing deadline ($2 seconds after it entered storing): a
-- success the last poll found at the deadline is still stored (storage/results.py).
SELECT id, status::text AS status, deadline_at
  FROM tasks
 WHERE status IN ('pending', 'submitted', 'processing', 'storing')
   AND CASE WHEN status = 'storing'
            THEN GREATEST(deadline_at, updated_at + make_interval(secs => $2))
            ELSE deadline_at END
       < now() - make_interval(secs => $1);

-- count_by_status --
SELECT status::text AS status, count(*) AS n FROM tasks GROUP BY status;

-- claim_due_polls --
-- Live tasks with no news from the vendor for a while. The new next_poll_at is the lease: two
-- reconcilers never poll the same task in one round, and a crashed one's claim lapses. A task
-- whose latest news asked for a later date (poll_not_before: progress reports leave the
-- indexed next_poll_at alone) is not polled but moved to that date ("deferred").
UPDATE tasks
   SET next_poll_at = CASE WHEN poll_not_before > now() THEN poll_not_before
                           ELSE now() + make_interval(secs => $2) END
 WHERE id IN (SELECT id FROM tasks
               WHERE status IN ('submitted', 'processing') AND next_poll_at <= now()
                 AND vendor = $3
               ORDER BY next_poll_at
               LIMIT $1
                 FOR UPDATE SKIP LOCKED)
RETURNING id, vendor, vendor_task_id, COALESCE(vendor_model, model) AS vendor_model, deadline_at,
          updated_at, trace_id, COALESCE(poll_not_before > now(), false) AS deferred,
          vendor_urls;

-- claim_overdue --
-- Tasks not yet at the vendor's finish line whose deadline passed (storing is the worker's).
-- Claimed whatever next_poll_at says: fresh vendor news and the poll back-off push that far
-- out (TASKHOOK_POLL_AFTER may be minutes), and a deadline must not wait for it. The lease is
-- lease_expires_at, which only the worker uses otherwise (for storing tasks) and every applied
-- move clears; next_poll_at moves too, so the same pass does not also poll the task as due.
UPDATE tasks
   SET next_poll_at = now() + make_interval(secs => $2),
       lease_expires_at = now() + make_interval(secs => $2)
 WHERE id IN (SELECT id FROM tasks
               WHERE status IN ('pending', 'submitted', 'processing')
                 AND deadline_at <= now() AND vendor = $3
                 AND (lease_expires_at IS NULL OR lease_expires_at <= now())
               ORDER BY deadline_at
               LIMIT $1
                 FOR UPDATE SKIP LOCKED)
RETURNING id, vendor, vendor_task_id, COALESCE(vendor_model, model) AS vendor_model, deadline_at,
          updated_at, trace_id, vendor_urls;

-- claim_confirmation --
-- May this process ask the vendor about this task now? Yes unless some process asked within
-- the last $2 seconds (0011): confirmations coalesce per task, whoever asks.
UPDATE tasks SET confirmed_at = now()
 WHERE id = $1 AND status IN ('submitted', 'processing')
   AND (confirmed_at IS NULL OR confirmed_at <= now() - make_interval(secs => $2))
RETURNING id;

-- poll_now --
-- An unsigned callback said the vendor has news: make the task due for the next poll.
UPDATE tasks SET next_poll_at = now(), poll_not_before = NULL
 WHERE id = $1 AND status IN ('submitted', 'processing');

-- reschedule_poll --
-- After a poll that left the task live: ask again after the reconciler's back-off.
UPDATE tasks SET next_poll_at = now() + make_interval(secs => $2), poll_not_before = NULL
 WHERE id = $1 AND status IN ('submitted', 'processing');

-- ensure_vendor --
-- A vendor's row, created on first use with a full bucket.
INSERT INTO vendor_state (vendor, tokens) VALUES ($1, $2) ON CONFLICT (vendor) DO NOTHING;

-- take_tokens --
-- Grant up to $2 calls at $3 per second with a burst of $4, shared by every process. All SET
-- expressions read the row as locked (EvalPlanQual), so concurrent takers never over-grant;
-- clock_timestamp(), not now(), so a taker that waited for the lock refills from its own time.
-- Nothing is granted while a 429's Retry-After runs.
UPDATE vendor_state AS v
   SET last_grant = CASE WHEN v.blocked_until > clock_timestamp() THEN 0
                         ELSE LEAST($2, floor(LEAST($4::float8, v.tokens + $3 * GREATEST(0, extract(epoch FROM
                           clock_timestamp() - v.refilled_at)))))::int END,
       tokens = LEAST($4::float8, v.tokens + $3 * GREATEST(0, extract(epoch FROM
                           clock_timestamp() - v.refilled_at)))
                - CASE WHEN v.blocked_until > clock_timestamp() THEN 0
                       ELSE LEAST($2, floor(LEAST($4::float8, v.tokens + $3 * GREATEST(0, extract(epoch FROM
                           clock_timestamp() - v.refilled_at)))))::int END,
       refilled_at = clock_timestamp()
 WHERE v.vendor = $1
RETURNING v.last_grant;

-- return_tokens --
-- Give back what was granted but not used, so a short batch wastes nothing.
UPDATE vendor_state SET tokens = LEAST($3::float8, tokens + $2) WHERE vendor = $1;

-- circuit_permits --
-- May we call this vendor now? Closed: yes. Open past its cool-down: one probe (half-open).
-- Half-open with a probe out: no, unless the probe is older than the cool-down (lost).
-- A closed circuit is only read: every vendor call asks, and writing the one row per vendor
-- each time made all callers queue on its lock. A vendor an operator paused: no (0020).
WITH probe AS (
    UPDATE vendor_state
       SET circuit = 'half-open',
           open_until = clock_timestamp() + make_interval(secs => $2),
           updated_at = clock_timestamp()
     WHERE vendor = $1 AND circuit <> 'closed' AND open_until <= clock_timestamp()
       AND paused_at IS NULL
    RETURNING circuit
)
SELECT COALESCE((SELECT circuit FROM probe),
                (SELECT 'closed' FROM vendor_state
                  WHERE vendor = $1 AND circuit = 'closed' AND paused_at IS NULL))
       AS circuit;

-- record_vendor_result --
-- After a call: success closes the circuit; the $3-th failure in a row (or a failed probe)
-- opens it for $4 seconds. Failures of calls still in flight when it opened do not push an
-- open circuit's cool-down out. A 429's Retry-After ($5) blocks every caller that long. A
-- failure's words ($6) are kept: why a circuit opened.
UPDATE vendor_state
   SET failures = CASE WHEN $2 THEN 0 ELSE failures + 1 END,
       circuit = CASE WHEN $2 THEN 'closed'
                      WHEN circuit = 'half-open' OR failures + 1 >= $3 THEN 'open'
                      ELSE circuit END,
       open_until = CASE WHEN NOT $2 AND circuit <> 'open'
                              AND (circuit = 'half-open' OR failures + 1 >= $3)
                         THEN clock_timestamp() + make_interval(secs => $4)
                         ELSE open_until END,
       blocked_until = CASE WHEN $5::float8 IS NULL THEN blocked_until
                            ELSE GREATEST(COALESCE(blocked_until, clock_timestamp()),
                                          clock_timestamp() + make_interval(secs => $5)) END,
       updated_at = clock_timestamp(),
       last_error = CASE WHEN $2 THEN last_error ELSE $6 END,
       last_error_at = CASE WHEN $2 THEN last_error_at ELSE clock_timestamp() END
 WHERE vendor = $1
   -- A success that changes nothing (closed, no failures, no Retry-After) writes nothing.
   AND NOT ($2 AND failures = 0 AND circuit = 'closed' AND $5::float8 IS NULL)
RETURNING circuit, failures;

-- vendor_account --
-- The account a vendor's webhooks must come from, once learned (0011).
SELECT account_id FROM vendor_accounts WHERE vendor = $1;

-- pin_vendor_account --
-- Learn the account; the first writer wins, and everyone gets the pinned value back.
INSERT INTO vendor_accounts (vendor, account_id) VALUES ($1, $2)
ON CONFLICT (vendor) DO UPDATE SET vendor = EXCLUDED.vendor
RETURNING account_id;

-- task_job --
-- The job a task has at a vendor, if registration recorded it.
SELECT vendor_task_id FROM tasks WHERE id = $1 AND vendor = $2;

-- get_delivery --
SELECT id, vendor, delivery_id, task_id, status, outcome, error, headers, body, received_at
  FROM webhook_deliveries WHERE id = $1;

-- mark_delivery_replayed --
UPDATE webhook_deliveries SET status = 'replayed', outcome = $2, error = NULL WHERE id = $1;

-- prune_deliveries --
-- Accepted deliveries older than the retention period, oldest first, along
-- webhook_deliveries_received: a pass with nothing due reads one index page. Dead letters stay
-- until replayed, except those of unsigned vendors ($3): anyone with a callback URL can make
-- one (issue 14.7); few, along webhook_deliveries_rejected.
WITH accepted AS (
    DELETE FROM webhook_deliveries
     WHERE id IN (SELECT id FROM webhook_deliveries
                   WHERE status <> 'rejected'
                     AND received_at < now() - make_interval(secs => $1)
                   ORDER BY received_at
                   LIMIT $2)
    RETURNING 1
), unsigned AS (
    DELETE FROM webhook_deliveries
     WHERE id IN (SELECT id FROM webhook_deliveries
                   WHERE status = 'rejected' AND vendor = ANY($3::text[])
                     AND received_at < now() - make_interval(secs => $1)
                   ORDER BY received_at
                   LIMIT $2)
    RETURNING 1
)
SELECT (SELECT count(*) FROM accepted) + (SELECT count(*) FROM unsigned);

-- list_user_tasks --
-- A user's tasks newest first, keyset-paginated on (created_at, id) before the cursor's
-- position ($2, $3; the start: infinity and the greatest id). The cursor is a row comparison
-- the index tasks_user_created walks from, in custom and generic plans alike: no "$n IS NULL
-- OR" branches, which a generic plan can only filter with.
SELECT t.* FROM task_rows AS t
 WHERE t.user_id = $1 AND (t.created_at, t.id) < ($2::timestamptz, $3::uuid)
 ORDER BY t.created_at DESC, t.id DESC
 LIMIT $4;

-- list_user_tasks_completed --
-- The same for completed tasks, along tasks_user_created (most tasks are).
SELECT t.* FROM task_rows AS t
 WHERE t.user_id = $1 AND (t.created_at, t.id) < ($2::timestamptz, $3::uuid)
   AND t.status = 'completed'
 ORDER BY t.created_at DESC, t.id DESC
 LIMIT $4;

-- list_user_tasks_refunded --
-- The same for failed or canceled tasks ($4), along tasks_user_refunded: a user without any
-- costs an index page, not their history.
SELECT r.* FROM tasks AS k JOIN task_rows AS r ON r.id = k.id
 WHERE k.user_id = $1 AND (k.created_at, k.id) < ($2::timestamptz, $3::uuid)
   AND k.status IN ('failed', 'canceled') AND k.status = $4::task_status
 ORDER BY k.created_at DESC, k.id DESC
 LIMIT $5;

-- list_user_tasks_live --
-- The same for live tasks ('active'): the partial index tasks_user_live holds only those, so
-- the client page's poll of its active tasks reads them and nothing of the user's history.
-- (Filtered on the table's own status: the view's is text, which no partial index predicate
-- matches.)
SELECT r.* FROM tasks AS k JOIN task_rows AS r ON r.id = k.id
 WHERE k.user_id = $1 AND (k.created_at, k.id) < ($2::timestamptz, $3::uuid)
   AND k.status IN ('pending', 'submitted', 'processing', 'storing')
 ORDER BY k.created_at DESC, k.id DESC
 LIMIT $4;

-- list_user_tasks_live_status --
-- The same for one live state ($4), along tasks_user_live.
SELECT r.* FROM tasks AS k JOIN task_rows AS r ON r.id = k.id
 WHERE k.user_id = $1 AND (k.created_at, k.id) < ($2::timestamptz, $3::uuid)
   AND k.status IN ('pending', 'submitted', 'processing', 'storing')
   AND k.status = $4::task_status
 ORDER BY k.created_at DESC, k.id DESC
 LIMIT $5;

-- audit_mark --
-- When the last incremental audit that found nothing wrong started (progress_marks 'audit').
SELECT at FROM progress_marks WHERE name = 'audit';

-- set_audit_mark --
INSERT INTO progress_marks (name, at) VALUES ('audit', $1)
ON CONFLICT (name) DO UPDATE SET at = EXCLUDED.at, updated_at = now();

-- audit_balances_since --
-- audit_balances for the users with ledger rows written since $1 (credit_ledger_created),
-- each user's ledger summed on credit_ledger_user.
WITH changed AS (
    SELECT DISTINCT user_id FROM credit_ledger WHERE created_at >= $1
)
SELECT u.id, u.email, u.balance, s.ledger
  FROM changed AS c JOIN users AS u ON u.id = c.user_id
 CROSS JOIN LATERAL (SELECT COALESCE(sum(l.amount), 0)::bigint AS ledger
                       FROM credit_ledger AS l WHERE l.user_id = u.id) AS s
 WHERE u.balance <> s.ledger;

-- audit_refunds_since --
-- audit_refunds for the tasks with ledger rows written since $1 (every new task has its
-- charge) or that ended since (tasks_ended).
WITH changed AS (
    SELECT task_id AS id FROM credit_ledger WHERE created_at >= $1 AND task_id IS NOT NULL
    UNION
    SELECT id FROM tasks WHERE completed_at >= $1
)
SELECT t.id, t.status::text AS status,
       count(l.id) FILTER (WHERE l.kind = 'refund') AS refunds,
       count(l.id) FILTER (WHERE l.kind = 'charge') AS charges
  FROM changed AS c JOIN tasks AS t ON t.id = c.id
  LEFT JOIN credit_ledger AS l ON l.task_id = t.id
 GROUP BY t.id
HAVING count(l.id) FILTER (WHERE l.kind = 'charge') <> 1
    OR count(l.id) FILTER (WHERE l.kind = 'refund') <> t.refunded::int
    OR t.refunded <> (t.status = 'canceled'
                      OR (t.status = 'failed'
                          AND NOT EXISTS (SELECT FROM tasks AS k WHERE k.parent_id = t.id)));

-- audit_active_counts_since --
-- audit_active_counts for the users who submitted a task since $1 (its charge) or whose
-- task ended since; each user's live tasks counted on tasks_user_live.
WITH changed AS (
    SELECT user_id FROM credit_ledger WHERE created_at >= $1
    UNION
    SELECT user_id FROM tasks WHERE completed_at >= $1
)
SELECT u.id, u.email, u.active_tasks, a.n AS actual
  FROM changed AS c JOIN users AS u ON u.id = c.user_id
 CROSS JOIN LATERAL (SELECT count(*) AS n FROM tasks AS t
                      WHERE t.user_id = u.id
                        AND t.status IN ('pending', 'submitted', 'processing', 'storing')) AS a
 WHERE u.active_tasks <> a.n;

-- audit_orphans_since --
-- audit_orphans for the events and accepted deliveries written since $1.
SELECT 'task_events' AS log, e.task_id, count(*) AS rows
  FROM task_events AS e
 WHERE e.created_at >= $1
   AND NOT EXISTS (SELECT FROM tasks AS t WHERE t.id = e.task_id)
 GROUP BY e.task_id
UNION ALL
SELECT 'webhook_deliveries', w.task_id, count(*)
  FROM webhook_deliveries AS w
 WHERE w.status <> 'rejected' AND w.status = 'accepted' AND w.received_at >= $1
   AND NOT EXISTS (SELECT FROM tasks AS t WHERE t.id = w.task_id)
 GROUP BY w.task_id
 ORDER BY 1, 2
 LIMIT 100;

-- progress_mark --
-- Where a step stands ($1: counts, events, results), locked until its step commits: read
-- first and handed to the step as values, so its plan knows how little lies beyond (a join
-- with this row is planned as a third of the table).
SELECT at, task_id FROM progress_marks WHERE name = $1 FOR UPDATE;

-- fold_state_counts --
-- Add the tasks that ended after the 'counts' mark ($3, $4) and more than $1 seconds ago (a
-- transition's completed_at is its transaction's start: one still running then commits
-- behind the mark otherwise) to task_state_counts, at most $2 of them, oldest first along
-- tasks_ended, and move the mark past them.
WITH batch AS (
    SELECT t.id, t.completed_at, t.status
      FROM tasks AS t
     WHERE t.completed_at IS NOT NULL
       AND (t.completed_at, t.id) > ($3::timestamptz, $4::uuid)
       AND t.completed_at < now() - make_interval(secs => $1)
     ORDER BY t.completed_at, t.id
     LIMIT $2
), added AS (
    UPDATE task_state_counts AS c SET n = c.n + b.n
      FROM (SELECT status, count(*) AS n FROM batch GROUP BY status) AS b
     WHERE c.status = b.status
    RETURNING 1
), moved AS (
    UPDATE progress_marks AS p SET at = l.completed_at, task_id = l.id, updated_at = now()
      FROM (SELECT completed_at, id FROM batch ORDER BY completed_at DESC, id DESC LIMIT 1) AS l
     WHERE p.name = 'counts'
    RETURNING 1
)
SELECT count(*) FROM batch;

-- prune_events --
-- Events of the tasks that ended more than $1 seconds ago, after the 'events' mark ($3, $4):
-- at most $2 tasks, oldest first along tasks_ended, each task's events by the
-- (task_id, event_key) index; the mark moves past them. (An event recorded for a task after
-- its events were pruned, e.g. a late duplicate webhook, stays.)
WITH batch AS (
    SELECT t.id, t.completed_at
      FROM tasks AS t
     WHERE t.completed_at IS NOT NULL
       AND (t.completed_at, t.id) > ($3::timestamptz, $4::uuid)
       AND t.completed_at < now() - make_interval(secs => $1)
     ORDER BY t.completed_at, t.id
     LIMIT $2
), gone AS (
    DELETE FROM task_events AS e USING batch AS b WHERE e.task_id = b.id
    RETURNING 1
), moved AS (
    UPDATE progress_marks AS p SET at = l.completed_at, task_id = l.id, updated_at = now()
      FROM (SELECT completed_at, id FROM batch ORDER BY completed_at DESC, id DESC LIMIT 1) AS l
     WHERE p.name = 'events'
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS tasks, (SELECT count(*) FROM gone) AS events;

-- results_due --
-- Completed tasks whose stored results passed their retention ($1 seconds since they ended),
-- after the 'results' mark ($3, $4), oldest first along tasks_ended, at most $2.
SELECT t.id, t.completed_at, t.status::text AS status, t.result
  FROM tasks AS t
 WHERE t.completed_at IS NOT NULL
   AND (t.completed_at, t.id) > ($3::timestamptz, $4::uuid)
   AND t.completed_at < now() - make_interval(secs => $1)
 ORDER BY t.completed_at, t.id
 LIMIT $2;

-- forget_results --
-- These tasks' files are deleted from the bucket: their result keeps no file (the task
-- object's `result` is null from now on) and says when; the 'results' mark moves to ($2, $3).
WITH forgot AS (
    UPDATE tasks
       SET result = jsonb_build_object('files', '[]'::jsonb, 'pruned_at', now())
     WHERE id = ANY($1::uuid[]) AND status = 'completed'
    RETURNING id
), moved AS (
    UPDATE progress_marks SET at = $2, task_id = $3, updated_at = now()
     WHERE name = 'results' AND (at, task_id) < ($2::timestamptz, $3::uuid)
    RETURNING 1
)
SELECT count(*) FROM forgot;
