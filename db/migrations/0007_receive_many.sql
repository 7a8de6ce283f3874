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
--
-- Squashed (issue 19.4): the SQL functions this migration wrote out now live in db/functions/,
-- one file each, which `taskhook migrate` applies after the migrations whenever a file's text
-- changed (db/migrate.py). A database that ran this migration before keeps what it did; a
-- fresh one gets the functions' current text once, not every past version.

SELECT;  -- nothing else to do
