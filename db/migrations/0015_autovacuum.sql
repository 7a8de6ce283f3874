-- 0015_autovacuum: vacuum the hot tables by their churn, not by a fifth of their size (issue 20).
--
-- A task row is updated about 8 times in its life and most of those updates cannot be HOT
-- (each status change moves it in or out of a partial index), so every task leaves dead row
-- versions in `tasks` and dead entries in the claim indexes until VACUUM. The claims, the
-- queue depths of /metrics and the live lists read those partial indexes: with PostgreSQL's
-- default (vacuum once 20 % of the table is dead) a table of 10M tasks waits for 2M dead rows,
-- and a claim wades through them (bench/RESULTS.md, "churn"). Here autovacuum comes after a
-- fixed amount of churn instead, and is allowed to work faster.
--
-- The append-mostly logs (events, ledger, inbox) are vacuumed after inserts too, which keeps
-- their visibility maps current (index-only scans, freezing in small steps) and, after
-- pruning, makes their space reusable. Server-wide recommendations: README "Operating
-- taskhook".

ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE users SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_limit = 2000
);
ALTER TABLE vendor_state SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000
);
ALTER TABLE progress_marks SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200
);
ALTER TABLE rate_windows SET (
    autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_threshold = 1000
);
ALTER TABLE task_events SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE credit_ledger SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE webhook_deliveries SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
