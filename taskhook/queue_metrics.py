"""Queue depths on /metrics, read from PostgreSQL at scrape time.

The numbers live in the database, not in any process's memory, so every process (and every
uvicorn worker) shows the same ones and any scrape target tells the whole truth. Collectors are
synchronous while the query is not: the /metrics route awaits :func:`refresh` just before it
renders, and the collector (registered once, when this module is first imported) hands out that
snapshot. When the database does not answer within a couple of seconds the queue metrics are
left out of that scrape rather than shown stale, ``taskhook_queue_scrape_errors_total`` counts
the miss, and the process's own metrics are served as ever.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
import structlog
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db.metrics_queries import QueueDepths, queue_depths
from db.webhooks_out import OutboxDepth, outbox_depth

log = structlog.get_logger()

# Well inside Prometheus's default scrape timeout (10 s), so a scrape never times out on us.
TIMEOUT = 2.0

SCRAPE_ERRORS = Counter(
    "taskhook_queue_scrape_errors",
    "Scrapes whose queue depths could not be read from PostgreSQL (left out of that scrape)",
)


class QueueCollector(Collector):
    """Hands the last snapshot to prometheus_client; nothing at all when there is none."""

    def __init__(self) -> None:
        self.depths: QueueDepths | None = None
        self.outbox: OutboxDepth | None = None

    def describe(self) -> Iterable[Metric]:
        return _families(None, None)

    def collect(self) -> Iterable[Metric]:
        return _families(self.depths, self.outbox) if self.depths is not None else []


def _families(depths: QueueDepths | None, outbox: OutboxDepth | None) -> list[Metric]:
    """The metric families; without samples when there are no depths (for describe)."""
    tasks = GaugeMetricFamily(
        "taskhook_queue_tasks", "Tasks not yet finished, by status", labels=["status"]
    )
    overdue = GaugeMetricFamily(
        "taskhook_queue_overdue_tasks", "Tasks not yet finished although past their deadline"
    )
    due_polls = GaugeMetricFamily(
        "taskhook_queue_due_polls", "Submitted or processing tasks whose reconciler poll is due"
    )
    dead_letters = GaugeMetricFamily(
        "taskhook_queue_dead_letters", "Rejected webhook deliveries waiting for a replay"
    )
    webhook_events = GaugeMetricFamily(
        "taskhook_queue_webhook_events", "Clients' webhook events not yet delivered"
    )
    webhook_oldest = GaugeMetricFamily(
        "taskhook_queue_webhook_oldest_seconds",
        "Seconds the oldest due client webhook event has waited since its change",
    )
    if depths is not None:
        for status, count in depths.by_status.items():
            tasks.add_metric([status.value], count)
        overdue.add_metric([], depths.overdue)
        due_polls.add_metric([], depths.due_polls)
        dead_letters.add_metric([], depths.dead_letters)
    if outbox is not None:
        webhook_events.add_metric([], outbox.pending)
        webhook_oldest.add_metric([], outbox.oldest_due)
    return [tasks, overdue, due_polls, dead_letters, webhook_events, webhook_oldest]


COLLECTOR = QueueCollector()
REGISTRY.register(COLLECTOR)


async def refresh(pool: asyncpg.Pool[Any]) -> QueueDepths | None:
    """Read the queue depths for the scrape about to be rendered; None (and counted) when the
    database cannot say right now."""
    outbox = None
    try:
        async with pool.acquire(timeout=TIMEOUT) as conn:
            depths = await queue_depths(conn, timeout=TIMEOUT)
            outbox = await outbox_depth(conn, timeout=TIMEOUT)
    except (
        OSError,  # TimeoutError too: the database is down, restarting or too slow
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    ) as exc:
        log.warning("queue_metrics_unavailable", error=repr(exc))
        depths = None
    except Exception:
        # Never let a metrics bug take the process's own metrics down with it.
        log.exception("queue_metrics_failed")
        depths = None
    if depths is None:
        SCRAPE_ERRORS.inc()
    COLLECTOR.depths = depths
    COLLECTOR.outbox = outbox if depths is not None else None
    return depths
