-- taskhook_webhook_outbox: the trigger on tasks (0017_webhooks_out.sql) that writes a client's
-- webhook events into the outbox, in the transaction of the move that caused them.
--
-- The one place its body is written: `taskhook migrate` applies this file after the
-- migrations whenever its text changed (db/migrate.py, recorded in schema_functions). Change
-- it here, never in a migration.

CREATE OR REPLACE FUNCTION taskhook_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    v_event text;
BEGIN
    -- Which of the client's events this move is: `completed` for any terminal state, `start`
    -- for the first move out of pending, `progress` for everything else.
    IF NEW.status IN ('completed', 'failed', 'canceled') THEN
        v_event := 'completed';
    ELSIF OLD.status = 'pending' AND NEW.status <> 'pending' THEN
        v_event := 'start';
    ELSE
        v_event := 'progress';
    END IF;
    IF NOT v_event = ANY(NEW.webhook_events) THEN
        RETURN NULL;
    END IF;
    -- A 410 Gone from this task's URL stops its deliveries.
    IF EXISTS (SELECT FROM webhook_outbox AS o WHERE o.task_id = NEW.id AND o.state = 'gone') THEN
        RETURN NULL;
    END IF;
    -- A newer state makes older undelivered non-terminal events moot: the body is the task as
    -- it is when sent, so the newer event carries it. (Under the task's row lock, held by the
    -- move: a task's events are written one at a time.)
    UPDATE webhook_outbox AS o SET state = 'superseded', updated_at = now()
     WHERE o.task_id = NEW.id AND o.state = 'pending' AND o.event <> 'completed';
    INSERT INTO webhook_outbox (task_id, user_id, url, host, event, task_status, progress,
                                webhook_id)
    VALUES (NEW.id, NEW.user_id, NEW.webhook_url,
            lower(COALESCE(substring(NEW.webhook_url
                                     FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)'),
                           NEW.webhook_url)),
            v_event, NEW.status, NEW.progress,
            'msg_' || replace(gen_random_uuid()::text, '-', ''));
    PERFORM pg_notify('taskhook_webhooks', '');
    RETURN NULL;
END
$fn$;
