-- taskhook_receive_many: a batch of verified webhook deliveries' whole database work, in one
-- round trip and one commit (0007_receive_many.sql, 0008_set_based.sql): the receiver's group
-- commit (db/group_commit.py).
--
-- The one place its body is written: `taskhook migrate` applies this file after the
-- migrations whenever its text changed (db/migrate.py, recorded in schema_functions). Change
-- it here, never in a migration.

CREATE OR REPLACE FUNCTION taskhook_receive_many(
    p_vendor text[], p_delivery_id text[], p_task_id uuid[], p_headers text[],
    p_body bytea[], p_signed boolean[], p_vendor_task_id text[], p_to task_status[],
    p_allowed text[], p_progress int[], p_outputs text[], p_error text[], p_detail text[],
    p_next_poll_at timestamptz[]
) RETURNS TABLE (
    ord int, verdict text, message text, trace_id text, from_status text, applied boolean,
    status text, refunds bigint
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_rounds int := 1;  -- the most deliveries the batch holds for one task
    r int := 0;
    -- This round's deliveries (ordinals), their verdicts and what goes with them.
    c_n int[];
    c_verdict text[];
    c_message text[];
    c_trace text[];
    -- The round's deliveries that move their task: taskhook_transition_many's arguments.
    m_n int[];
    m_task uuid[];
    m_key text[];
    m_to task_status[];
    m_allowed text[];
    m_cause text[];
    m_progress int[];
    m_vendor_task_id text[];
    m_outputs text[];
    m_result text[];
    m_error text[];
    m_detail text[];
    m_next_poll_at timestamptz[];
BEGIN
    -- One batch of verified deliveries, each given exactly the work and answer it would get
    -- alone, in one round trip and one commit. The arrays are parallel, one element per
    -- delivery, `ord` says which answer is whose; JSON comes as text and `allowed` as a
    -- comma-joined list (PostgreSQL arrays cannot be ragged). A batch holding n deliveries
    -- for one task runs in n rounds, each taking the next delivery of every task.
    --
    -- A task's row lock held elsewhere must not keep a batch (and the receiver's commit
    -- slot) waiting: after a second (the function's lock_timeout setting) the call gives up
    -- (lock_not_available, all rolled back), the caller applies each delivery alone
    -- (db/group_commit.py), and only the delivery for the locked task fails, with a 503 its
    -- vendor retries.
    WHILE r < v_rounds LOOP
        r := r + 1;
        -- Lock this round's tasks (in id order) and judge each delivery. The lock comes
        -- before everything else: it serializes a task's deliveries, so the duplicate check
        -- sees any copy of this one that committed before us, and every row written below
        -- (events, inbox) is written under it, for a task that exists. (Every array_agg of
        -- one query sees the rows in the same order, so the arrays stay parallel.)
        WITH ranked AS (
            SELECT u.*, row_number() OVER (PARTITION BY u.task_id ORDER BY u.n)::int AS rk
              FROM unnest(p_vendor, p_delivery_id, p_task_id, p_signed, p_vendor_task_id)
                   WITH ORDINALITY AS u(vendor, delivery_id, task_id, signed, vendor_task_id,
                                        n)
        ), input AS (
            SELECT * FROM ranked WHERE ranked.rk = r
        ), locked AS (
            SELECT t.id, t.vendor, t.vendor_task_id, t.trace_id
              FROM tasks AS t
             WHERE t.id IN (SELECT i.task_id FROM input AS i)
             ORDER BY t.id
               FOR UPDATE
        ), judged AS (
            SELECT i.n::int AS n, t.trace_id,
                   CASE
                       WHEN t.id IS NULL THEN 'no_task'
                       WHEN t.vendor <> i.vendor THEN 'moved'
                       WHEN t.vendor_task_id <> i.vendor_task_id THEN 'rejected'
                       WHEN EXISTS (SELECT FROM webhook_deliveries AS w
                                     WHERE w.vendor = i.vendor
                                       AND w.delivery_id = i.delivery_id) THEN 'duplicate'
                       WHEN NOT i.signed THEN 'confirming'
                       ELSE 'transition'
                   END AS verdict,
                   CASE
                       WHEN t.vendor <> i.vendor
                           THEN format('The task is served by %s now, not %s.', t.vendor,
                                       i.vendor)
                       WHEN t.vendor_task_id <> i.vendor_task_id
                           THEN 'The payload''s job id does not match this callback''s task.'
                   END AS message
              FROM input AS i LEFT JOIN locked AS t ON t.id = i.task_id
        )
        SELECT array_agg(j.n), array_agg(j.verdict), array_agg(j.message),
               array_agg(j.trace_id), (SELECT max(x.rk) FROM ranked AS x)
          INTO c_n, c_verdict, c_message, c_trace, v_rounds
          FROM judged AS j;

        IF 'moved' = ANY(c_verdict) OR 'rejected' = ANY(c_verdict) THEN
            -- Kept for forensics; 'moved': the task failed over to another vendor, whose
            -- job this is not.
            INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, error,
                                            headers, body)
            SELECT p_vendor[c.n], p_delivery_id[c.n], p_task_id[c.n], 'rejected', c.message,
                   p_headers[c.n]::jsonb, p_body[c.n]
              FROM unnest(c_n, c_verdict, c_message) AS c(n, verdict, message)
             WHERE c.verdict IN ('moved', 'rejected')
             ORDER BY c.n
            ON CONFLICT (vendor, delivery_id) DO NOTHING;
        END IF;
        IF 'confirming' = ANY(c_verdict) THEN
            -- Unsigned vendors' callbacks are hints: due for a poll now, confirmed by the
            -- caller from the vendor's API.
            INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome,
                                            headers, body)
            SELECT p_vendor[c.n], p_delivery_id[c.n], p_task_id[c.n], 'accepted',
                   'confirming', p_headers[c.n]::jsonb, p_body[c.n]
              FROM unnest(c_n, c_verdict) AS c(n, verdict)
             WHERE c.verdict = 'confirming'
             ORDER BY c.n;
            UPDATE tasks AS t SET next_poll_at = now(), poll_not_before = NULL
              FROM unnest(c_n, c_verdict) AS c(n, verdict)
             WHERE c.verdict = 'confirming' AND t.id = p_task_id[c.n]
               AND t.status IN ('submitted', 'processing');
        END IF;

        IF NOT 'transition' = ANY(c_verdict) THEN
            RETURN QUERY
            SELECT c.n, c.verdict, c.message, c.trace_id, NULL::text, NULL::boolean,
                   NULL::text, 0::bigint
              FROM unnest(c_n, c_verdict, c_message, c_trace)
                   AS c(n, verdict, message, trace_id);
            CONTINUE;
        END IF;
        SELECT array_agg(c.n), array_agg(p_task_id[c.n]),
               array_agg('webhook:' || p_delivery_id[c.n]), array_agg(p_to[c.n]),
               array_agg(p_allowed[c.n]), array_agg('webhook'::text),
               array_agg(p_progress[c.n]), array_agg(p_vendor_task_id[c.n]),
               array_agg(p_outputs[c.n]), array_agg(NULL::text), array_agg(p_error[c.n]),
               array_agg(p_detail[c.n]), array_agg(p_next_poll_at[c.n])
          INTO m_n, m_task, m_key, m_to, m_allowed, m_cause, m_progress, m_vendor_task_id,
               m_outputs, m_result, m_error, m_detail, m_next_poll_at
          FROM unnest(c_n, c_verdict) AS c(n, verdict)
         WHERE c.verdict = 'transition';
        -- The moves, then the inbox rows, written once with what each delivery did. A plain
        -- INSERT: the same delivery id arriving for another task at this moment (no shared
        -- row lock) fails with unique_violation and takes the batch back with it; alone, the
        -- later copy is then answered as a duplicate.
        RETURN QUERY
        WITH moved AS (
            SELECT m_n[tr.ord] AS n, tr.*
              FROM taskhook_transition_many(m_task, m_key, m_to, m_allowed, m_cause,
                                            m_progress, m_vendor_task_id, m_outputs,
                                            m_result, m_error, m_detail, m_next_poll_at)
                   AS tr
        ), inbox AS (
            INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome,
                                            headers, body)
            SELECT p_vendor[m.n], p_delivery_id[m.n], p_task_id[m.n], 'accepted',
                   CASE WHEN m.from_status IS NULL THEN 'not_found'
                        WHEN m.applied IS NULL THEN 'duplicate'
                        WHEN m.applied THEN 'applied'
                        ELSE 'stale' END,
                   p_headers[m.n]::jsonb, p_body[m.n]
              FROM moved AS m
             ORDER BY m.n
        )
        SELECT c.n, c.verdict, c.message, c.trace_id, m.from_status, m.applied, m.status,
               COALESCE(m.refunds, 0)
          FROM unnest(c_n, c_verdict, c_message, c_trace) AS c(n, verdict, message, trace_id)
          LEFT JOIN moved AS m ON m.n = c.n;
    END LOOP;
END
$fn$;

-- Generic plans, made once per session: the arrays' sizes vary from call to call, and left to
-- choose, PostgreSQL kept planning these statements afresh on every call (custom plans
-- estimated cheaper for small arrays), which cost more than running them.
ALTER FUNCTION taskhook_receive_many SET plan_cache_mode = force_generic_plan;
-- A row lock held elsewhere must not keep a batch waiting (0009_log_tables.sql): see above.
ALTER FUNCTION taskhook_receive_many SET lock_timeout = '1s';
