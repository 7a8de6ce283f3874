"""Prometheus metrics, one registry per process, scraped at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WEBHOOKS = Counter(
    "taskhook_webhooks_total", "Webhook deliveries by vendor and outcome", ["vendor", "outcome"]
)
TRANSITIONS = Counter(
    "taskhook_transitions_total",
    "Transition attempts by target state and outcome",
    ["to", "outcome"],
)
WEBHOOK_COMMIT_SIZE = Histogram(
    "taskhook_webhook_commit_size",
    "Webhook deliveries applied per database commit (the receiver's group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
REFUNDS = Counter("taskhook_refunds_total", "Refunds written to the ledger")
LATE_SUCCESS = Counter(
    "taskhook_late_success_total", "Vendor successes reported after the task had ended"
)
VENDOR_CALLS = Histogram(
    "taskhook_vendor_call_seconds", "Vendor API latency", ["vendor", "operation", "outcome"]
)
REGISTRATIONS = Counter(
    "taskhook_registrations_total",
    "Registration attempts by vendor and outcome",
    ["vendor", "outcome"],
)
STORAGE = Counter("taskhook_storage_total", "Result storage attempts by outcome", ["outcome"])
CIRCUIT = Gauge(
    "taskhook_vendor_circuit", "Circuit state: 0 closed, 1 half-open, 2 open", ["vendor"]
)
POLLS = Counter(
    "taskhook_polls_total", "Reconciler polls by vendor and outcome", ["vendor", "outcome"]
)
STRAY_JOBS = Counter(
    "taskhook_stray_jobs_total",
    "Vendor jobs for one of our tasks that are not the job it recorded (a create that went "
    "through twice), by vendor and what became of them: canceled, or cancel_failed",
    ["vendor", "outcome"],
)
RESULTS_EXPIRED = Counter(
    "taskhook_results_expired_total",
    "Finished jobs whose result the vendor deleted before we stored it (its retention window)",
    ["vendor"],
)
