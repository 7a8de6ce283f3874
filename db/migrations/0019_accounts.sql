-- Keys and credits for daily use (issue 17.2).
-- An operator's credit adjustment, either way, with its reason in `note`: a ledger kind of its
-- own, never tied to a task. The balance's own CHECK (balance >= 0) keeps it from going below
-- zero; adjust_credits refuses such an adjustment before it is written.
ALTER TABLE credit_ledger
    DROP CONSTRAINT credit_ledger_kind_check,
    DROP CONSTRAINT credit_ledger_check,
    DROP CONSTRAINT credit_ledger_check1;
ALTER TABLE credit_ledger
    ADD CONSTRAINT credit_ledger_kind_check
        CHECK (kind IN ('grant', 'charge', 'refund', 'adjust')),
    ADD CONSTRAINT credit_ledger_check
        CHECK ((kind IN ('grant', 'adjust')) = (task_id IS NULL)),
    ADD CONSTRAINT credit_ledger_check1
        CHECK (CASE kind WHEN 'charge' THEN amount <= 0
                         WHEN 'adjust' THEN amount <> 0
                         ELSE amount >= 0 END);
-- A user's ledger, newest first, a page at a time (GET /v1/me/usage).
DROP INDEX IF EXISTS credit_ledger_user;
CREATE INDEX credit_ledger_user_page ON credit_ledger (user_id, id);
-- A user's keys (GET /v1/keys, taskhook keys list).
CREATE INDEX api_keys_user ON api_keys (user_id, created_at);
