-- taskhook_transition_many: the state machine's one statement, for any number of tasks
-- (0008_set_based.sql): db/transition.py calls it with one, the receiver's batches
-- (taskhook_receive_many) with many. Its rows must name distinct tasks.
--
-- The one place its body is written: `taskhook migrate` applies this file after the
-- migrations whenever its text changed (db/migrate.py, recorded in schema_functions). Change
-- it here, never in a migration.

CREATE OR REPLACE FUNCTION taskhook_transition_many(
    p_task_id uuid[], p_event_key text[], p_to task_status[], p_allowed text[], p_cause text[],
    p_progress int[], p_vendor_task_id text[], p_outputs text[], p_result text[],
    p_error text[], p_detail text[], p_next_poll_at timestamptz[]
) RETURNS TABLE (
    ord int, from_status text, applied boolean, status text, progress int, refunds bigint,
    ended bigint, notified bigint
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    -- Per row: lock the task, record the event once, move it if the state machine allows
    -- (allowed: db.states.ALLOWED_FROM, comma-joined; a same-state report applies only when
    -- its progress grows), refund once when it fails or is canceled, and notify listeners.
    -- A task a follow-up action builds on (a child: tasks.parent_id) keeps its charge when it
    -- fails after the vendor's success (from storing): the client has the vendor's job.
    -- Tasks are locked in id order, so two callers cannot deadlock on each other's tasks.
    -- Users are updated once each, with the sum of their tasks' refunds, and visited in id
    -- order by the plan PostgreSQL picks for a batch's few rows; were another plan ever to
    -- deadlock with a concurrent caller, PostgreSQL breaks it and the receiver retries its
    -- batch one delivery at a time.
    IF cardinality(p_task_id) > (SELECT count(DISTINCT t) FROM unnest(p_task_id) AS t) THEN
        RAISE EXCEPTION 'taskhook_transition_many: one row per task';
    END IF;
    IF 'failed' = ANY(p_to) THEN
        -- Lock first, in a statement of its own, so that the next one's snapshot sees a
        -- follow-up committed while we waited for its parent (lock_parent holds it FOR SHARE
        -- until the child commits): that parent keeps its charge.
        PERFORM FROM tasks AS t WHERE t.id = ANY(p_task_id) ORDER BY t.id FOR UPDATE;
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT *
          FROM unnest(p_task_id, p_event_key, p_to, p_allowed, p_cause, p_progress,
                      p_vendor_task_id, p_outputs, p_result, p_error, p_detail, p_next_poll_at)
               WITH ORDINALITY AS u(task_id, event_key, to_status, allowed, cause, progress,
                                    vendor_task_id, outputs, result, error, detail,
                                    next_poll_at, n)
    ), cur AS (
        SELECT t.id, t.status, t.progress
          FROM tasks AS t
         WHERE t.id = ANY(p_task_id)
         ORDER BY t.id
           FOR UPDATE
    ), decision AS (
        SELECT i.*, c.status AS from_status,
               (c.status = ANY(string_to_array(i.allowed, ',')::task_status[])
                AND (c.status <> i.to_status OR COALESCE(i.progress, -1) > c.progress))
                   AS applies,
               (i.to_status = 'canceled'
                OR (i.to_status = 'failed'
                    AND NOT (c.status = 'storing'
                             AND EXISTS (SELECT FROM tasks AS k WHERE k.parent_id = i.task_id))))
                   AS refunds
          FROM input AS i JOIN cur AS c ON c.id = i.task_id
    ), ev AS (
        INSERT INTO task_events (task_id, event_key, from_status, to_status, applied, cause,
                                 detail)
        SELECT d.task_id, d.event_key, d.from_status, d.to_status, d.applies, d.cause,
               d.detail::jsonb
          FROM decision AS d
        ON CONFLICT (task_id, event_key) DO NOTHING
        RETURNING task_id, applied
    ), moved AS (
        UPDATE tasks AS t
           SET status = CASE WHEN ev.applied THEN d.to_status ELSE t.status END,
               progress = CASE
                   WHEN NOT ev.applied THEN t.progress
                   WHEN d.to_status = 'completed' THEN 100
                   ELSE GREATEST(t.progress, COALESCE(d.progress, t.progress))
               END,
               vendor_task_id = COALESCE(t.vendor_task_id, d.vendor_task_id),
               outputs = CASE WHEN ev.applied THEN COALESCE(d.outputs::jsonb, t.outputs)
                              ELSE t.outputs END,
               result = CASE WHEN ev.applied THEN COALESCE(d.result::jsonb, t.result)
                             ELSE t.result END,
               error = CASE WHEN ev.applied THEN COALESCE(d.error::jsonb, t.error)
                            ELSE t.error END,
               -- Same status, a later date: the indexed next_poll_at stays (a HOT update) and
               -- the claim defers the poll to poll_not_before (claim_due_polls).
               next_poll_at = CASE
                   WHEN NOT ev.applied THEN t.next_poll_at
                   WHEN d.to_status = t.status AND d.next_poll_at >= t.next_poll_at
                       THEN t.next_poll_at
                   ELSE d.next_poll_at
               END,
               poll_not_before = CASE WHEN ev.applied THEN d.next_poll_at
                                      ELSE t.poll_not_before END,
               next_attempt_at = CASE WHEN ev.applied THEN NULL ELSE t.next_attempt_at END,
               lease_owner = CASE WHEN ev.applied THEN NULL ELSE t.lease_owner END,
               lease_expires_at = CASE WHEN ev.applied THEN NULL ELSE t.lease_expires_at END,
               updated_at = CASE WHEN ev.applied THEN now() ELSE t.updated_at END,
               refunded = CASE WHEN ev.applied AND d.refunds THEN true ELSE t.refunded END,
               completed_at = CASE
                   WHEN ev.applied AND d.to_status IN ('completed', 'failed', 'canceled')
                       THEN now()
                   ELSE t.completed_at
               END
          FROM decision AS d JOIN ev ON ev.task_id = d.task_id
         WHERE t.id = d.task_id
           AND (ev.applied OR (t.vendor_task_id IS NULL AND d.vendor_task_id IS NOT NULL))
        RETURNING t.id, t.user_id, t.cost, t.status, t.progress, t.refunded, ev.applied
    ), refund AS (
        INSERT INTO credit_ledger (user_id, task_id, kind, amount)
        SELECT m.user_id, m.id, 'refund', m.cost
          FROM moved AS m
         WHERE m.applied AND m.refunded
        ON CONFLICT (task_id, kind) WHERE task_id IS NOT NULL DO NOTHING
        RETURNING user_id, task_id, amount
    ), ending AS (
        SELECT m.user_id, count(*) AS ended
          FROM moved AS m
         WHERE m.applied AND m.status IN ('completed', 'failed', 'canceled')
         GROUP BY m.user_id
    ), credited AS (
        -- One update per user: their refunds (if any) and their live tasks that ended.
        UPDATE users AS u
           SET balance = u.balance + COALESCE((SELECT sum(r.amount) FROM refund AS r
                                                WHERE r.user_id = u.id), 0),
               active_tasks = u.active_tasks - e.ended
          FROM (SELECT * FROM ending ORDER BY user_id) AS e
         WHERE u.id = e.user_id
        RETURNING u.id
    ), notified AS (
        SELECT m.id
          FROM moved AS m
         WHERE m.applied
           AND pg_notify('taskhook_tasks',
                         json_build_object('id', m.id, 'status', m.status,
                                           'progress', m.progress)::text) IS NOT NULL
    )
    SELECT i.n::int,
           d.from_status::text,
           ev.applied,
           m.status::text,
           m.progress::int,
           (r.task_id IS NOT NULL)::int::bigint,
           COALESCE(m.applied AND m.status IN ('completed', 'failed', 'canceled')
                    AND c.id IS NOT NULL, false)::int::bigint,
           (x.id IS NOT NULL)::int::bigint
      FROM input AS i
      LEFT JOIN decision AS d ON d.n = i.n
      LEFT JOIN ev ON ev.task_id = i.task_id
      LEFT JOIN moved AS m ON m.id = i.task_id
      LEFT JOIN refund AS r ON r.task_id = i.task_id
      LEFT JOIN credited AS c ON c.id = m.user_id
      LEFT JOIN notified AS x ON x.id = i.task_id;
END
$fn$;

-- Generic plans, made once per session: the arrays' sizes vary from call to call, and left to
-- choose, PostgreSQL kept planning these statements afresh on every call (custom plans
-- estimated cheaper for small arrays), which cost more than running them.
ALTER FUNCTION taskhook_transition_many SET plan_cache_mode = force_generic_plan;
