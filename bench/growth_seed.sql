-- Months of history for bench/growth.py and the plan tests (tests/integration/test_plans.py),
-- written set-based (generate_series), never a row at a time. Parameters, substituted by the
-- caller as literals: :tasks (all tasks), :live (of them, not yet terminal: the newest),
-- :users, :heavy (tasks of the first user, the heavy one), :days (the history's span).
-- Rows follow what `taskhook demo` records for one task: a charge, 8 events for a completed
-- task (registration, the vendor's reports, storing, completed), a refund and fewer events
-- for a failed or canceled one, webhook deliveries for the newest tenth (the inbox keeps a
-- week), the users' grants.

SET synchronous_commit = off;

INSERT INTO users (id, email, balance, created_at)
SELECT md5('user' || u)::uuid, 'growth-' || u || '@example.test', 0,
       now() - make_interval(days => :days + 1)
  FROM generate_series(0, :users - 1) AS u;

-- Task n (1 = oldest); the newest :live ones are live. The heavy user owns every
-- (:tasks / :heavy)-th task, the others are spread over the remaining users.
CREATE TEMP TABLE growth_tasks AS
SELECT n,
       gen_random_uuid() AS id,
       CASE WHEN n % GREATEST(1, :tasks / :heavy) = 0 THEN 0
            ELSE 1 + (hashint4(n) & 2147483647) % GREATEST(1, :users - 1) END AS u,
       now() - make_interval(secs => (:days * 86400.0) * (:tasks - n + 1) / :tasks) AS at,
       CASE WHEN n > :tasks - :live THEN
                (ARRAY['pending', 'submitted', 'processing', 'processing',
                       'storing'])[1 + (hashint4(n * 7 + 3) & 2147483647) % 5]
            WHEN (hashint4(n * 13 + 5) & 2147483647) % 50 = 0 THEN 'failed'
            WHEN n % 97 = 0 THEN 'canceled'
            ELSE 'completed' END::task_status AS status
  FROM generate_series(1, :tasks) AS n;

INSERT INTO tasks (id, user_id, vendor, model, input, cost, status, progress, vendor_task_id,
                   outputs, result, error, trace_id, attempts, next_attempt_at, next_poll_at,
                   created_at, updated_at, deadline_at, completed_at)
SELECT g.id, md5('user' || g.u)::uuid, 'replicate', 'black-forest-labs/flux-schnell',
       jsonb_build_object('prompt', 'a lighthouse at dusk, number ' || g.n),
       1, g.status,
       CASE g.status WHEN 'completed' THEN 100 WHEN 'processing' THEN 40 ELSE 0 END,
       CASE WHEN g.status <> 'pending' THEN 'p' || md5(g.id::text) END,
       CASE WHEN g.status IN ('completed', 'storing')
            THEN jsonb_build_array('https://replicate.delivery/x/' || g.n || '.webp') END,
       CASE WHEN g.status = 'completed'
            THEN jsonb_build_object('files', jsonb_build_array(jsonb_build_object(
                     'key', 'results/' || g.id || '/0.webp', 'bytes', 48213,
                     'sha256', md5(g.id::text), 'content_type', 'image/webp'))) END,
       CASE WHEN g.status = 'failed'
            THEN jsonb_build_object('code', 'vendor_failed', 'message', 'NSFW content') END,
       md5(g.n::text), 1,
       CASE WHEN g.status = 'pending' THEN g.at + interval '1 hour' END,
       CASE WHEN g.status IN ('submitted', 'processing') THEN now() + interval '1 hour' END,
       g.at, g.at + interval '40 seconds',
       -- Live tasks are within their deadline (as the reconciler keeps them): a clean audit.
       CASE WHEN g.n > :tasks - :live THEN GREATEST(g.at, now()) ELSE g.at END
           + interval '30 minutes',
       CASE WHEN g.status IN ('completed', 'failed', 'canceled')
            THEN g.at + interval '40 seconds' END
  FROM growth_tasks AS g
 ORDER BY g.n;

-- Events in the order they happened, as the transition appends them.
INSERT INTO task_events (task_id, event_key, from_status, to_status, applied, cause, detail,
                         created_at)
SELECT g.id, e.key, e.from_status::task_status, e.to_status::task_status, true, e.cause,
       jsonb_build_object('vendor', 'replicate', 'vendor_status', e.to_status),
       g.at + make_interval(secs => e.k * 5)
  FROM growth_tasks AS g
 CROSS JOIN LATERAL (
       VALUES (1, 'register', 'pending', 'submitted', 'registration'),
              (2, 'webhook:a', 'submitted', 'processing', 'webhook'),
              (3, 'webhook:b', 'processing', 'processing', 'webhook'),
              (4, 'webhook:c', 'processing', 'processing', 'webhook'),
              (5, 'webhook:d', 'processing', 'processing', 'webhook'),
              (6, 'webhook:e', 'processing', 'storing', 'webhook'),
              (7, 'storage:done', 'storing', 'completed', 'worker'),
              (8, 'webhook:f', 'completed', 'completed', 'webhook'),
              (9, 'webhook:x', 'processing', 'failed', 'webhook'),
              (10, 'cancel', 'processing', 'canceled', 'client')
       ) AS e(k, key, from_status, to_status, cause)
 WHERE CASE g.status
           WHEN 'completed' THEN e.k <= 8
           WHEN 'failed' THEN e.k <= 4 OR e.k = 9
           WHEN 'canceled' THEN e.k <= 3 OR e.k = 10
           WHEN 'pending' THEN false
           WHEN 'submitted' THEN e.k = 1
           WHEN 'processing' THEN e.k <= 3
           ELSE e.k <= 6 END
 ORDER BY g.n, e.k;

INSERT INTO credit_ledger (user_id, kind, amount, note, created_at)
SELECT md5('user' || u)::uuid, 'grant', 1000000, 'growth', now() - make_interval(days => :days)
  FROM generate_series(0, :users - 1) AS u;
INSERT INTO credit_ledger (user_id, task_id, kind, amount, created_at)
SELECT md5('user' || g.u)::uuid, g.id, 'charge', -1, g.at FROM growth_tasks AS g ORDER BY g.n;
INSERT INTO credit_ledger (user_id, task_id, kind, amount, created_at)
SELECT md5('user' || g.u)::uuid, g.id, 'refund', 1, g.at + interval '40 seconds'
  FROM growth_tasks AS g WHERE g.status IN ('failed', 'canceled') ORDER BY g.n;

-- The inbox: three deliveries for each of the newest tenth of the tasks, as a Replicate
-- webhook's headers and body, received within the last six days (nothing due at a week's
-- retention); a few dead letters.
INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome, headers, body,
                                received_at)
SELECT 'replicate', 'msg_' || md5(g.id::text || d), g.id, 'accepted', 'applied',
       jsonb_build_object('content-type', 'application/json', 'webhook-id',
                          'msg_' || md5(g.id::text || d), 'webhook-timestamp', '1700000000',
                          'webhook-signature', 'v1,' || repeat('a', 44)),
       convert_to(jsonb_build_object('id', 'p' || md5(g.id::text), 'status', 'processing',
                                     'logs', repeat('step ', 100))::text, 'UTF8'),
       now() - make_interval(secs => 6 * 86400.0 * (:tasks - g.n + 1) / GREATEST(1, :tasks / 10))
  FROM growth_tasks AS g CROSS JOIN generate_series(1, 3) AS d
 WHERE g.n > :tasks - :tasks / 10
 ORDER BY g.n, d;
INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, error, headers, body,
                                received_at)
SELECT 'replicate', 'dead_' || d, NULL, 'rejected', 'no such task', '{}'::jsonb, '\x00'::bytea,
       now() - make_interval(hours => d)
  FROM generate_series(1, 20) AS d;

UPDATE users AS u
   SET balance = l.total, active_tasks = COALESCE(a.live, 0)
  FROM (SELECT user_id, sum(amount) AS total FROM credit_ledger GROUP BY user_id) AS l
  LEFT JOIN (SELECT md5('user' || g.u)::uuid AS user_id, count(*) AS live
               FROM growth_tasks AS g
              WHERE g.status IN ('pending', 'submitted', 'processing', 'storing')
              GROUP BY g.u) AS a ON a.user_id = l.user_id
 WHERE l.user_id = u.id;

DROP TABLE growth_tasks;
