-- 0008_set_based: the state machine and the receiver work on sets of rows, not one at a time.
--
-- A batch of webhooks (the receiver's group commit) used to run taskhook_receive, and so
-- taskhook_transition, once per delivery: five or six statements each, every one with its
-- executor start-up, for deliveries that touch different tasks. Now a batch is a few
-- statements whatever its size: lock and classify, move (taskhook_transition_many), write
-- the inbox rows and answer.
--
-- taskhook_transition_many is the state machine's one statement, for any number of tasks:
-- db/transition.py calls it with one, the receiver with a batch. Its rows must name distinct
-- tasks (each row decides against its task's state before the statement); a batch holding
-- two deliveries for one task is applied in rounds, the second delivery after the first.
--
-- A progress report (the same status, more progress) is now a HOT update of its task: it no
-- longer moves the indexed next_poll_at forward, it records the date in poll_not_before (not
-- indexed), and the reconciler's claim pushes a task whose poll_not_before is still ahead out
-- to that date instead of polling it. With room on the page (fillfactor 80), the update then
-- writes no entries into the six indexes of tasks.
--
-- The Procfile's release phase migrates while the previous release's processes still run,
-- and they call taskhook_transition and taskhook_receive_many until they are replaced. So
-- taskhook_receive_many keeps its signature and answer, and taskhook_transition stays, as a
-- wrapper with no rules of its own (a later migration may drop it).
--
-- Squashed (issue 19.4): the SQL functions this migration wrote out now live in db/functions/,
-- one file each, which `taskhook migrate` applies after the migrations whenever a file's text
-- changed (db/migrate.py). A database that ran this migration before keeps what it did; a
-- fresh one gets the functions' current text once, not every past version.

-- For a database upgraded from 0006/0007 (gone from a fresh one, which never had it).
DROP FUNCTION IF EXISTS taskhook_receive(text, text, uuid, jsonb, bytea, boolean, text,
                                         task_status, task_status[], int, jsonb, jsonb, jsonb,
                                         timestamptz);

-- The earliest the reconciler may poll: the date the task's latest news asked for.
ALTER TABLE tasks ADD COLUMN poll_not_before timestamptz;
ALTER TABLE tasks SET (fillfactor = 80);
