-- 0002_vendor_state: per-vendor rate limit (token bucket), 429 back-off and circuit breaker,
-- kept in PostgreSQL so that every reconciler, worker and web process obeys the same limits.

CREATE TABLE vendor_state (
    vendor        text PRIMARY KEY,
    tokens        double precision NOT NULL DEFAULT 0,
    refilled_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_grant    integer NOT NULL DEFAULT 0,
    blocked_until timestamptz,
    failures      integer NOT NULL DEFAULT 0,
    circuit       text NOT NULL DEFAULT 'closed'
                  CHECK (circuit IN ('closed', 'open', 'half-open')),
    open_until    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
