-- Each user's Standard Webhooks signing keys (issue 18). One current key (expires_at NULL);
-- a rotation gives the old one 24 hours, during which both sign every message.
CREATE TABLE webhook_secrets (
    id         bigserial PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    key        bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE UNIQUE INDEX webhook_secrets_current ON webhook_secrets (user_id) WHERE expires_at IS NULL;
CREATE INDEX webhook_secrets_user ON webhook_secrets (user_id, id);
