-- 0007_receive_many: group commit for webhooks, and a cheaper delivery.
--
-- taskhook_receive_many: deliveries that reach one web process while its previous commit is
-- in flight are applied together: one round trip and one commit (one WAL flush, one NOTIFY
-- queue lock) for the lot instead of one each. Each delivery still gets exactly
-- taskhook_receive's work and answer; the arrays are parallel, one element per delivery, and
-- `ord` says which answer is whose. Tasks are locked in id order, so two batches (from two
-- processes) cannot deadlock on each other, and a call waits at most a second for a row lock.
--
-- taskhook_receive now writes the inbox row once, after the transition and with its outcome,
-- instead of inserting it and updating it in the same transaction: a duplicate is found by
-- reading the inbox under the task's row lock.

CREATE OR REPLACE FUNCTION taskhook_receive(
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
    moved record;
BEGIN
    -- The task's row lock first: the inbox row's foreign key takes KEY SHARE, and taking FOR
    -- UPDATE after it would deadlock with a concurrent delivery for the same task. The lock
    -- also serializes a task's deliveries, so the duplicate check below sees any copy of this
    -- one that committed before us.
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
    IF reason IS NOT NULL THEN
        INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, error, headers,
                                        body)
        VALUES (p_vendor, p_delivery_id, p_task_id, 'rejected', reason, p_headers, p_body)
        ON CONFLICT (vendor, delivery_id) DO NOTHING;
        -- 'moved': the task failed over to another vendor, whose job this is not.
        RETURN QUERY SELECT CASE WHEN task.vendor <> p_vendor THEN 'moved' ELSE 'rejected' END,
                            reason, task.trace_id, NULL::text, NULL::boolean, NULL::text,
                            0::bigint;
        RETURN;
    END IF;
    PERFORM FROM webhook_deliveries AS d
      WHERE d.vendor = p_vendor AND d.delivery_id = p_delivery_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::text, task.trace_id, NULL::text,
                            NULL::boolean, NULL::text, 0::bigint;
        RETURN;
    END IF;
    IF NOT p_signed THEN
        -- Unsigned vendors' callbacks are hints: due for a poll now, confirmed by the caller.
        INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome, headers,
                                        body)
        VALUES (p_vendor, p_delivery_id, p_task_id, 'accepted', 'confirming', p_headers, p_body);
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
    -- The inbox row is written once, with what the delivery did. A plain INSERT: the same
    -- delivery id arriving for another task at this moment (no shared row lock) fails with
    -- unique_violation and takes this transition back with it.
    INSERT INTO webhook_deliveries (vendor, delivery_id, task_id, status, outcome, headers, body)
    VALUES (p_vendor, p_delivery_id, p_task_id, 'accepted',
            CASE WHEN moved.from_status IS NULL THEN 'not_found'
                 WHEN moved.applied IS NULL THEN 'duplicate'
                 WHEN moved.applied THEN 'applied'
                 ELSE 'stale' END,
            p_headers, p_body);
    RETURN QUERY SELECT 'transition'::text, NULL::text, task.trace_id, moved.from_status,
                        moved.applied, moved.status, moved.refunds;
END
$fn$;

CREATE FUNCTION taskhook_receive_many(
    p_vendor text[], p_delivery_id text[], p_task_id uuid[], p_headers text[],
    p_body bytea[], p_signed boolean[], p_vendor_task_id text[], p_to task_status[],
    p_allowed text[], p_progress int[], p_outputs text[], p_error text[], p_detail text[],
    p_next_poll_at timestamptz[]
) RETURNS TABLE (
    ord int, verdict text, message text, trace_id text, from_status text, applied boolean,
    status text, refunds bigint
) LANGUAGE plpgsql AS $fn$
DECLARE
    d record;
BEGIN
    -- d.allowed is the comma-joined set of states delivery d may move from, and the JSON
    -- arguments come as text: PostgreSQL arrays cannot be ragged, and a JSON list inside a
    -- parameter array would read as another dimension. unnest walks the arrays once.
    -- One task's row lock held elsewhere must not keep a batch (and the receiver's commit
    -- slot) waiting: after a second it gives up (lock_not_available, all rolled back), the
    -- caller applies each delivery alone (db/group_commit.py), and only the delivery for the
    -- locked task fails, with a 503 its vendor retries. Writers hold task rows for a statement.
    PERFORM set_config('lock_timeout', '1s', true);
    FOR d IN
        SELECT *
          FROM unnest(p_vendor, p_delivery_id, p_task_id, p_headers, p_body, p_signed,
                      p_vendor_task_id, p_to, p_allowed, p_progress, p_outputs, p_error,
                      p_detail, p_next_poll_at)
               WITH ORDINALITY AS u(vendor, delivery_id, task_id, headers, body, signed,
                                    vendor_task_id, to_status, allowed, progress, outputs,
                                    error, detail, next_poll_at, n)
         ORDER BY u.task_id, u.n
    LOOP
        RETURN QUERY
        SELECT d.n::int, r.*
          FROM taskhook_receive(d.vendor, d.delivery_id, d.task_id, d.headers::jsonb, d.body,
                                d.signed, d.vendor_task_id, d.to_status,
                                string_to_array(d.allowed, ',')::task_status[], d.progress,
                                d.outputs::jsonb, d.error::jsonb, d.detail::jsonb,
                                d.next_poll_at) AS r;
    END LOOP;
END
$fn$;
