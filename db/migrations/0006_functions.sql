-- 0006_functions: the state machine's one statement, and a webhook's whole database work, as
-- server-side functions. The receiver then needs one round trip per delivery (inbox row, task
-- checks, transition, outcome) instead of a transaction of five; db/transition.py calls the
-- same function, so the rules stay written once. PL/pgSQL caches the plans per session.
-- Changing either later means CREATE OR REPLACE in a new migration.

CREATE FUNCTION taskhook_transition(
    p_task_id uuid, p_event_key text, p_to task_status, p_allowed task_status[], p_cause text,
    p_progress int, p_vendor_task_id text, p_outputs jsonb, p_result jsonb, p_error jsonb,
    p_detail jsonb, p_next_poll_at timestamptz
) RETURNS TABLE (
    from_status text, applied boolean, status text, progress int, refunds bigint, ended bigint,
    notified bigint
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    -- Lock the task, record the event once, move it if the state machine allows (p_allowed:
    -- db.states.ALLOWED_FROM; a same-state report applies only when its progress grows),
    -- refund once when it fails or is canceled, and notify listeners.
    RETURN QUERY
    WITH cur AS (
        SELECT id, user_id, status, progress, cost
          FROM tasks
         WHERE id = p_task_id
           FOR UPDATE
    ), decision AS (
        SELECT cur.*,
               (cur.status = ANY(p_allowed::task_status[])
                AND (cur.status <> p_to::task_status OR COALESCE(p_progress::int, -1) > cur.progress)) AS applies
          FROM cur
    ), ev AS (
        INSERT INTO task_events (task_id, event_key, from_status, to_status, applied, cause, detail)
        SELECT id, p_event_key, status, p_to::task_status, applies, p_cause, p_detail::jsonb FROM decision
        ON CONFLICT (task_id, event_key) DO NOTHING
        RETURNING applied
    ), moved AS (
        UPDATE tasks AS t
           SET status = CASE WHEN ev.applied THEN p_to::task_status ELSE t.status END,
               progress = CASE
                   WHEN NOT ev.applied THEN t.progress
                   WHEN p_to::task_status = 'completed' THEN 100
                   ELSE GREATEST(t.progress, COALESCE(p_progress::int, t.progress))
               END,
               vendor_task_id = COALESCE(t.vendor_task_id, p_vendor_task_id::text),
               outputs = CASE WHEN ev.applied THEN COALESCE(p_outputs::jsonb, t.outputs) ELSE t.outputs END,
               result = CASE WHEN ev.applied THEN COALESCE(p_result::jsonb, t.result) ELSE t.result END,
               error = CASE WHEN ev.applied THEN COALESCE(p_error::jsonb, t.error) ELSE t.error END,
               next_poll_at = CASE WHEN ev.applied THEN p_next_poll_at::timestamptz ELSE t.next_poll_at END,
               next_attempt_at = CASE WHEN ev.applied THEN NULL ELSE t.next_attempt_at END,
               lease_owner = CASE WHEN ev.applied THEN NULL ELSE t.lease_owner END,
               lease_expires_at = CASE WHEN ev.applied THEN NULL ELSE t.lease_expires_at END,
               updated_at = CASE WHEN ev.applied THEN now() ELSE t.updated_at END,
               completed_at = CASE
                   WHEN ev.applied AND p_to::task_status IN ('completed', 'failed', 'canceled') THEN now()
                   ELSE t.completed_at
               END
          FROM ev
         WHERE t.id = p_task_id
           AND (ev.applied OR (t.vendor_task_id IS NULL AND p_vendor_task_id::text IS NOT NULL))
        RETURNING t.id, t.user_id, t.cost, t.status, t.progress, ev.applied
    ), refund AS (
        INSERT INTO credit_ledger (user_id, task_id, kind, amount)
        SELECT user_id, id, 'refund', cost
          FROM moved
         WHERE applied AND status IN ('failed', 'canceled')
        ON CONFLICT (task_id, kind) WHERE task_id IS NOT NULL DO NOTHING
        RETURNING user_id, amount
    ), credited AS (
        -- One update of the user row: the refund (if any) and one live task fewer.
        UPDATE users AS u
           SET balance = u.balance + COALESCE((SELECT sum(r.amount) FROM refund AS r), 0),
               active_tasks = u.active_tasks - 1
          FROM moved AS m
         WHERE u.id = m.user_id AND m.applied AND m.status IN ('completed', 'failed', 'canceled')
        RETURNING u.id
    )
    SELECT (SELECT status::text FROM decision) AS from_status,
           (SELECT applied FROM ev) AS applied,
           (SELECT status::text FROM moved) AS status,
           (SELECT progress FROM moved)::int AS progress,
           (SELECT count(*) FROM refund) AS refunds,
           (SELECT count(*) FROM credited) AS ended,
           (SELECT count(pg_notify('taskhook_tasks',
                                   json_build_object('id', m.id, 'status', m.status,
                                                     'progress', m.progress)::text))
              FROM moved AS m WHERE m.applied) AS notified;
END
$fn$;

CREATE FUNCTION taskhook_receive(
    p_vendor text, p_delivery_id text, p_task_id uuid, p_headers jsonb, p_body bytea,
    p_signed boolean, p_vendor_task_id text, p_to task_status, p_allowed task_status[],
    p_progress int, p_outputs jsonb, p_error jsonb, p_detail jsonb, p_next_poll_at timestamptz
) RETURNS TABLE (
    verdict text, message text, trace_id text, from_status text, applied boolean, status text,
    refunds bigint
) LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    task record;
    reason text;
    row_id bigint;
    moved record;
BEGIN
    -- The task's row lock first: the inbox row's foreign key takes KEY SHARE, and taking FOR
    -- UPDATE after it would deadlock with a concurrent delivery for the same task.
    SELECT t.vendor, t.vendor_task_id, t.trace_id INTO task
      FROM tasks AS t WHERE t.id = p_task_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_task'::text, NULL::text, NULL::text, NULL::text, NULL::boolean,
                            NULL::text, 0::bigint;
        RETURN;
    END IF;
    IF task.vendor <> p_vendor THEN
        reason := format('The task is served by %s now, not %s.', task.vendor, p_vendor);
    ELSIF task.vendor_task_id IS NOT NULL AND task.vendor_task_id <> p_vendor_task_id THEN
        reason := 'The payload''s job id does not match this callback''s task.';
    END IF;
    INSERT INTO webhook_deliveries AS d (vendor, delivery_id, task_id, status, outcome, error,
                                         headers, body)
    VALUES (p_vendor, p_delivery_id, p_task_id,
            CASE WHEN reason IS NULL THEN 'accepted' ELSE 'rejected' END,
            CASE WHEN reason IS NULL AND NOT p_signed THEN 'confirming' END,
            reason, p_headers, p_body)
    ON CONFLICT (vendor, delivery_id) DO NOTHING
    RETURNING d.id INTO row_id;
    IF reason IS NOT NULL THEN
        -- 'moved': the task failed over to another vendor, whose job this is not.
        RETURN QUERY SELECT CASE WHEN task.vendor <> p_vendor THEN 'moved' ELSE 'rejected' END,
                            reason, task.trace_id, NULL::text, NULL::boolean, NULL::text,
                            0::bigint;
        RETURN;
    END IF;
    IF row_id IS NULL THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::text, task.trace_id, NULL::text,
                            NULL::boolean, NULL::text, 0::bigint;
        RETURN;
    END IF;
    IF NOT p_signed THEN
        -- Unsigned vendors' callbacks are hints: due for a poll now, confirmed by the caller.
        UPDATE tasks AS t SET next_poll_at = now()
         WHERE t.id = p_task_id AND t.status IN ('submitted', 'processing');
        RETURN QUERY SELECT 'confirming'::text, NULL::text, task.trace_id, NULL::text,
                            NULL::boolean, NULL::text, 0::bigint;
        RETURN;
    END IF;
    SELECT * INTO moved
      FROM taskhook_transition(p_task_id, 'webhook:' || p_delivery_id, p_to, p_allowed,
                               'webhook', p_progress, p_vendor_task_id, p_outputs, NULL,
                               p_error, p_detail, p_next_poll_at);
    UPDATE webhook_deliveries AS d
       SET outcome = CASE WHEN moved.from_status IS NULL THEN 'not_found'
                          WHEN moved.applied IS NULL THEN 'duplicate'
                          WHEN moved.applied THEN 'applied'
                          ELSE 'stale' END
     WHERE d.id = row_id;
    RETURN QUERY SELECT 'transition'::text, NULL::text, task.trace_id, moved.from_status,
                        moved.applied, moved.status, moved.refunds;
END
$fn$;
