"""Floor 0, shared words: errors, settings, task states, ids, tokens, tracing, metrics, backoff,
logs, the SSRF-guarded client and small HTTP helpers. Imports nothing of the product."""

__all__: list[str] = []
