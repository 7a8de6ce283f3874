"""Prometheus metrics, scraped at /metrics (taskhook/metrics_server.py).

One registry per process; `taskhook serve --workers N` runs prometheus_client's multiprocess
mode instead (PROMETHEUS_MULTIPROC_DIR, set before this module is first imported), so any of
its processes answers with the sum of them all and counters never go backwards between scrapes
that land on different processes. Gauges say how they combine across those processes.
"""

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
    "taskhook_vendor_circuit",
    "Circuit state: 0 closed, 1 half-open, 2 open",
    ["vendor"],
    multiprocess_mode="mostrecent",  # the state lives in PostgreSQL: the latest reading wins
)
POLLS = Counter(
    "taskhook_polls_total", "Reconciler polls by vendor and outcome", ["vendor", "outcome"]
)
HTTP_REQUESTS = Histogram(
    "taskhook_http_request_duration_seconds",
    "HTTP requests by method, route template and status: count and latency",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TASK_DURATION = Histogram(
    "taskhook_task_duration_seconds",
    "Seconds from submit to a terminal state, by that state (observed by the process that "
    "ended the task)",
    ["status"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
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
CLIENT_WEBHOOK_ATTEMPTS = Counter(
    "taskhook_client_webhook_attempts_total",
    "Webhooks sent to clients, by outcome: delivered (2xx), retry, failed (out of retries), "
    "gone (410)",
    ["outcome"],
)
CLIENT_WEBHOOK_LAG = Histogram(
    "taskhook_client_webhook_lag_seconds",
    "Seconds from a task's event (the move that caused it) to its delivery to the client",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000, 86400),
)
