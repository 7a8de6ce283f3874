-- 0009_log_tables: task_events and webhook_deliveries lose their foreign keys to tasks.
--
-- Both are logs (DESIGN.md: pruned, or time-partitioned and dropped by partition), and each of
-- their rows is written by taskhook_transition_many or taskhook_receive_many while that
-- function holds the task's row lock, for a task it has just found; tasks are never deleted.
-- The foreign keys re-checked every row anyway, each with its own lookup of the task (an
-- executor start-up per row): 7-10 % of a batch of fresh webhooks (bench/RESULTS.md). What
-- they guarded is now checked by `taskhook audit` (no event or accepted delivery names a
-- missing task). Dead letters keep the task id their callback token named, whether or not
-- that task exists here.
--
-- taskhook_receive_many is replaced (same signature and answer) only to say so, and to take
-- its one-second lock timeout as a function setting instead of a statement per call.
--
-- Squashed (issue 19.4): the SQL functions this migration wrote out now live in db/functions/,
-- one file each, which `taskhook migrate` applies after the migrations whenever a file's text
-- changed (db/migrate.py). A database that ran this migration before keeps what it did; a
-- fresh one gets the functions' current text once, not every past version.

ALTER TABLE task_events DROP CONSTRAINT task_events_task_id_fkey;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_task_id_fkey;
