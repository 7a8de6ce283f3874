-- 0011_accounts_and_confirmations (issue 14.7 and 14.9).
--
-- vendor_accounts: the vendor account our webhooks must come from. fal signs every customer's
-- webhooks with one key set, so a valid signature only proves "some fal customer"; the signed
-- X-Fal-Webhook-User-Id says which. Configured (FAL_USER_ID) or, when not, learned from the
-- first webhook about a job we registered ourselves and pinned here, first writer wins, so
-- every process agrees on it (receiver/accounts.py).
--
-- tasks.confirmed_at: when a process last asked the vendor about this task outside the
-- reconciler's schedule (reconciler/confirm.py: actions, unsigned callbacks' hints, replays).
-- Claimed with a conditional UPDATE, it lets one confirmation per task go out per short
-- window, whichever process asks. Not indexed: only ever read by primary key.

CREATE TABLE vendor_accounts (
    vendor     text PRIMARY KEY,
    account_id text NOT NULL,
    learned_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE tasks ADD COLUMN confirmed_at timestamptz;
