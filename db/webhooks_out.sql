-- Webhooks out to clients (issue 18): the outbox, its attempts and the users' signing keys.
-- The outbox rows themselves are written by the tasks trigger of 0017, in the transaction of
-- the move that causes them; everything here reads them, claims them or records an answer.

-- set_task_webhook --
-- A new task's callback, in the transaction that inserted it (before any move).
UPDATE tasks SET webhook_url = $2, webhook_events = $3::text[] WHERE id = $1;

-- ensure_secret --
-- The user's current signing key, made with $2 when there is none yet.
WITH made AS (
    INSERT INTO webhook_secrets (user_id, key) VALUES ($1, $2)
    ON CONFLICT (user_id) WHERE expires_at IS NULL DO NOTHING
    RETURNING key
)
SELECT key FROM made
UNION ALL
SELECT key FROM webhook_secrets WHERE user_id = $1 AND expires_at IS NULL
LIMIT 1;

-- retire_current_secret --
-- The first half of a rotation: the current key signs for $2 more seconds. Locks the row, so
-- a concurrent rotation waits and then finds no current key to retire.
UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2)
 WHERE user_id = $1 AND expires_at IS NULL;

-- insert_current_secret --
-- The second half: the new current key (none when a concurrent rotation made one first).
INSERT INTO webhook_secrets (user_id, key) VALUES ($1, $2)
ON CONFLICT (user_id) WHERE expires_at IS NULL DO NOTHING
RETURNING key;

-- claim_outbox --
-- Due events, oldest first, leased to owner $2 for $3 seconds: at most $1 of them and $5 per
-- host, none for hosts $4 (those at this sender's cap: a slow endpoint holds its own slots
-- only). SKIP LOCKED lets any number of senders share the outbox; a lease that lapses (its
-- sender was killed) makes the event due again, under the same webhook_id. An event waits
-- while an older event of its task is in flight, so a task's events never overtake each
-- other. The window looks at the oldest 1000 due events only, to stay cheap with a backlog.
-- Each row comes with the user's signing keys, newest first.
WITH due AS (
    SELECT c.id, c.host, c.next_attempt_at
      FROM webhook_outbox AS c
     WHERE c.state = 'pending' AND c.next_attempt_at <= now()
       AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
       AND c.host <> ALL($4::text[])
       AND NOT EXISTS (SELECT FROM webhook_outbox AS b
                        WHERE b.task_id = c.task_id AND b.id < c.id
                          AND b.lease_expires_at > now())
     ORDER BY c.next_attempt_at
     LIMIT 1000
), ranked AS (
    SELECT d.id, d.next_attempt_at,
           row_number() OVER (PARTITION BY d.host ORDER BY d.next_attempt_at) AS rn
      FROM due AS d
), claimed AS (
    UPDATE webhook_outbox AS o
       SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
           attempts = o.attempts + 1, updated_at = now()
     WHERE o.id IN (
           SELECT c.id FROM webhook_outbox AS c
            WHERE c.id IN (SELECT r.id FROM ranked AS r WHERE r.rn <= $5
                            ORDER BY r.next_attempt_at LIMIT $1)
              AND c.state = 'pending'
              AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
              FOR UPDATE SKIP LOCKED)
    RETURNING o.id, o.task_id, o.user_id, o.url, o.host, o.event, o.webhook_id, o.attempts,
              o.created_at
)
SELECT c.*,
       ARRAY(SELECT s.key FROM webhook_secrets AS s
              WHERE s.user_id = c.user_id AND (s.expires_at IS NULL OR s.expires_at > now())
              ORDER BY s.id DESC) AS keys
  FROM claimed AS c;

-- finish_attempt --
-- Record one attempt and what it means for its event: $9 'delivered' (a 2xx), 'gone' (410:
-- nothing more goes to this task's URL), 'failed' (out of retries) or 'retry' (due again in
-- $10 seconds). Only the lease holder moves the event; the attempt is recorded regardless.
-- An event superseded while in flight stays so unless it was delivered.
WITH attempt AS (
    INSERT INTO webhook_attempts (outbox_id, task_id, attempt, started_at, duration_ms,
                                  status_code, error, response_body)
    SELECT o.id, o.task_id, $3, $4, $5, $6, $7, $8
      FROM webhook_outbox AS o WHERE o.id = $1
    RETURNING outbox_id
), moved AS (
    UPDATE webhook_outbox AS o
       SET state = CASE
               WHEN $9 = 'delivered' THEN 'delivered'
               WHEN o.state <> 'pending' THEN o.state
               WHEN $9 = 'retry' THEN 'pending'
               ELSE $9
           END,
           next_attempt_at = CASE WHEN $9 = 'retry'
                                  THEN now() + make_interval(secs => $10)
                                  ELSE o.next_attempt_at END,
           delivered_at = CASE WHEN $9 = 'delivered' THEN now() ELSE o.delivered_at END,
           lease_owner = NULL, lease_expires_at = NULL,
           last_status = $6, last_error = $7, updated_at = now()
     WHERE o.id = $1 AND o.lease_owner = $2
    RETURNING o.id, o.task_id, o.state
), stopped AS (
    -- A 410 stops every other undelivered event of the task too.
    UPDATE webhook_outbox AS o SET state = 'gone', updated_at = now()
      FROM moved AS m
     WHERE $9 = 'gone' AND o.task_id = m.task_id AND o.id <> m.id AND o.state = 'pending'
    RETURNING o.id
)
SELECT (SELECT count(*) FROM attempt) AS recorded, (SELECT state FROM moved) AS state,
       (SELECT count(*) FROM stopped) AS stopped;

-- release_outbox --
-- Hand events back unattempted (the sender is stopping, or its host is full): due again.
UPDATE webhook_outbox
   SET lease_owner = NULL, lease_expires_at = NULL, attempts = greatest(attempts - 1, 0),
       updated_at = now()
 WHERE id = ANY($1::bigint[]) AND lease_owner = $2;

-- task_webhook_attempts --
-- A task's events and their attempts, oldest first, for its owner $2 (NULL: operators).
SELECT o.id AS event_id, o.webhook_id, o.event, o.task_status::text AS task_status,
       o.url, o.state, o.created_at, o.delivered_at, o.next_attempt_at,
       a.attempt, a.started_at, a.duration_ms, a.status_code, a.error, a.response_body
  FROM webhook_outbox AS o
  LEFT JOIN webhook_attempts AS a ON a.outbox_id = o.id
 WHERE o.task_id = $1 AND ($2::uuid IS NULL OR o.user_id = $2)
 ORDER BY o.id, a.id;

-- list_outbox --
-- Operators' view, newest first: $1 true = only events that will not be delivered (failed,
-- gone) or are being retried; $2 one task or NULL.
SELECT o.id, o.task_id, o.user_id, o.url, o.host, o.event, o.task_status::text AS task_status,
       o.webhook_id, o.state, o.attempts, o.last_status, o.last_error, o.created_at,
       o.updated_at, o.delivered_at, o.next_attempt_at
  FROM webhook_outbox AS o
 WHERE ($2::uuid IS NULL OR o.task_id = $2)
   AND (NOT $1 OR o.state IN ('failed', 'gone') OR (o.state = 'pending' AND o.attempts > 0))
 ORDER BY o.id DESC
 LIMIT $3;

-- replay_outbox --
-- An operator sends an event again (same webhook_id): due now with a fresh set of retries.
UPDATE webhook_outbox
   SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_owner = NULL,
       lease_expires_at = NULL, updated_at = now()
 WHERE id = $1 AND (state <> 'pending' OR lease_expires_at IS NULL OR lease_expires_at <= now())
RETURNING id, task_id, webhook_id;

-- failing_destinations --
-- Hosts whose events are failing now: undeliverable ones of the last day, or being retried.
SELECT o.host, count(*) AS events,
       count(*) FILTER (WHERE o.state = 'failed') AS failed,
       count(*) FILTER (WHERE o.state = 'gone') AS gone,
       count(*) FILTER (WHERE o.state = 'pending') AS retrying,
       max(o.updated_at) AS last_at,
       (array_agg(coalesce(o.last_status::text, o.last_error) ORDER BY o.updated_at DESC))[1]
           AS last_answer
  FROM webhook_outbox AS o
 WHERE (o.state IN ('failed', 'gone') AND o.updated_at > now() - interval '1 day')
    OR (o.state = 'pending' AND o.attempts > 0)
 GROUP BY o.host
 ORDER BY count(*) DESC, o.host
 LIMIT $1;

-- outbox_depth --
-- Events waiting to be delivered, and how long the oldest due one has waited (seconds).
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)
                        FILTER (WHERE next_attempt_at <= now())), 0)::float8 AS oldest_due
  FROM webhook_outbox WHERE state = 'pending';

-- prune_outbox --
-- Finished events (delivered, failed, gone, superseded) last changed more than $1 seconds ago,
-- oldest first, at most $2; their attempts go with them. Read from the old end of
-- webhook_outbox_finished, so a round with nothing due costs an index page.
WITH due AS (
    SELECT id FROM webhook_outbox
     WHERE state <> 'pending' AND updated_at < now() - make_interval(secs => $1)
     ORDER BY updated_at
     LIMIT $2
), pruned AS (
    DELETE FROM webhook_outbox AS o USING due WHERE o.id = due.id RETURNING 1
)
SELECT count(*) FROM pruned;
