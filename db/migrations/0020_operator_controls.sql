-- Operators act on vendors (issue 17.3). A paused vendor takes no calls from any process:
-- circuit_permits refuses it as it refuses an open circuit, so new submits go to the next
-- route or wait, registrations wait and polls stop, until it is resumed. The last failure
-- is kept so the dashboard can say why a circuit opened.
ALTER TABLE vendor_state
    ADD COLUMN paused_at     timestamptz,
    ADD COLUMN paused_reason text,
    ADD COLUMN last_error    text,
    ADD COLUMN last_error_at timestamptz;
