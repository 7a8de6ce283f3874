-- Users, their API keys and their ledger, as operators and users manage them day to day
-- (issue 17.2). Lock order as in queries.sql: a credit adjustment takes only its user's row.

-- create_api_key --
-- Another key for an existing user (stored only as a hash); none for an unknown user, or for
-- one who already holds $5 unrevoked keys.
INSERT INTO api_keys (id, user_id, key_hash, prefix)
SELECT $1, u.id, $3, $4
  FROM users AS u
 WHERE u.id = $2
   AND (SELECT count(*) FROM api_keys AS k WHERE k.user_id = u.id AND k.revoked_at IS NULL) < $5
RETURNING id, user_id, prefix, created_at, revoked_at;

-- list_api_keys --
-- A user's keys, newest first, revoked ones too (they say when).
SELECT id, user_id, prefix, created_at, revoked_at
  FROM api_keys WHERE user_id = $1
 ORDER BY created_at DESC, id DESC;

-- revoke_api_key --
-- Revoked at once for every process: authenticate reads revoked_at on every request. $2 NULL:
-- any user's key (operators). A key revoked before keeps its first revocation time.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
 WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)
RETURNING id, user_id, prefix, created_at, revoked_at;

-- key_of_hash --
-- Which key a request came with (GET /v1/keys marks it `current`).
SELECT id FROM api_keys WHERE key_hash = $1;

-- adjust_credits --
-- An operator's adjustment with its reason: the ledger row and the balance move together, and
-- only when the balance stays at zero or above (no row otherwise: nothing is written).
WITH u AS (
    UPDATE users SET balance = balance + $2
     WHERE id = $1 AND balance + $2 >= 0
    RETURNING id, balance
), l AS (
    INSERT INTO credit_ledger (user_id, kind, amount, note)
    SELECT u.id, 'adjust', $2, $3 FROM u
)
SELECT balance FROM u;

-- list_users --
-- Operators' view: users by email, with their balance, open tasks and keys.
SELECT u.id, u.email, u.balance, u.active_tasks, u.created_at,
       (SELECT count(*) FROM api_keys AS k WHERE k.user_id = u.id AND k.revoked_at IS NULL)
           AS keys
  FROM users AS u
 WHERE ($1::text IS NULL OR u.email > $1)
 ORDER BY u.email
 LIMIT $2;

-- list_ledger --
-- A user's ledger, newest first, with each row's task: what a bill is reconciled from. $2: the
-- id of the last row of the previous page (NULL: from the newest).
SELECT l.id, l.kind, l.amount, l.note, l.created_at, l.task_id,
       t.model, t.vendor, t.status::text AS task_status
  FROM credit_ledger AS l LEFT JOIN tasks AS t ON t.id = l.task_id
 WHERE l.user_id = $1 AND ($2::bigint IS NULL OR l.id < $2)
 ORDER BY l.id DESC
 LIMIT $3;
