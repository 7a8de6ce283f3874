-- 0016_refunded_lists: `?status=failed` / `?status=canceled` (GET /v1/tasks) and
-- `taskhook tasks list --status failed|canceled` read a page, not the history (issue 20).
--
-- Failed and canceled tasks are a few percent of all: walking a user's (or everyone's) tasks
-- newest first for them reads the whole history when there are none. These partial indexes
-- hold only those tasks (a row enters once, when it fails or is canceled: terminal states
-- never change); `completed`, most of the history, is found along tasks_user_created and
-- tasks_created within a page or so.

CREATE INDEX tasks_user_refunded ON tasks (user_id, created_at DESC, id DESC)
    WHERE status IN ('failed', 'canceled');
CREATE INDEX tasks_refunded ON tasks (created_at DESC, id DESC)
    WHERE status IN ('failed', 'canceled');
