-- 0006_functions: the state machine's one statement, and a webhook's whole database work, as
-- server-side functions. The receiver then needs one round trip per delivery (inbox row, task
-- checks, transition, outcome) instead of a transaction of five; db/transition.py calls the
-- same function, so the rules stay written once. PL/pgSQL caches the plans per session.
--
-- Squashed (issue 19.4): the SQL functions this migration wrote out now live in db/functions/,
-- one file each, which `taskhook migrate` applies after the migrations whenever a file's text
-- changed (db/migrate.py). A database that ran this migration before keeps what it did; a
-- fresh one gets the functions' current text once, not every past version.

SELECT;  -- nothing else to do
