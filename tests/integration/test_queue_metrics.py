"""Queue depths on /metrics: exact, read from PostgreSQL at scrape time, cheap, and never in the
way of the process's own metrics when the database is away (issue 7, item 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.settings import Settings
from common.states import ACTIVE, TaskStatus
from db import queries
from db.metrics_queries import LIVE_STATES, QUERIES
from db.pool import create_pool
from db.transition import transition
from lifecycle.runtime import Runtime
from taskhook.app import create_app
from tests.factories import make_task, make_user

Conn = asyncpg.Connection
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

QUEUE_GAUGES = (
    "taskhook_queue_tasks",
    "taskhook_queue_overdue_tasks",
    "taskhook_queue_due_polls",
    "taskhook_queue_dead_letters",
)
PAST = datetime.now(UTC) - timedelta(days=1)  # due long ago
FUTURE = datetime.now(UTC) + timedelta(days=1)


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def queue_samples(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] in QUEUE_GAUGES}


def expected(
    *, overdue: int = 0, due_polls: int = 0, dead_letters: int = 0, **by_status: int
) -> Samples:
    result: Samples = {
        ("taskhook_queue_tasks", (("status", s.value),)): float(by_status.get(s.value, 0))
        for s in LIVE_STATES
    }
    result[("taskhook_queue_overdue_tasks", ())] = float(overdue)
    result[("taskhook_queue_due_polls", ())] = float(due_polls)
    result[("taskhook_queue_dead_letters", ())] = float(dead_letters)
    return result


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def task_in(
    conn: Conn,
    user_id: Any,
    status: TaskStatus,
    *,
    next_poll_at: datetime | None = None,
    deadline_seconds: float = 1800,
) -> None:
    task_id = await make_task(conn, user_id, deadline_seconds=deadline_seconds)
    if status is TaskStatus.PENDING:
        return
    await transition(
        conn,
        task_id=task_id,
        to=status,
        event_key=f"seed:{status}",
        cause="test",
        vendor_task_id=f"pred-{task_id.hex[:8]}",
        outputs=["http://vendor.test/out.png"] if status is TaskStatus.STORING else None,
        result={"files": []} if status is TaskStatus.COMPLETED else None,
        error={"code": "vendor_failed"} if status is TaskStatus.FAILED else None,
        next_poll_at=next_poll_at,
    )


async def delivery(conn: Conn, status: str) -> None:
    await queries.record_delivery(
        conn,
        vendor="replicate",
        delivery_id=f"msg_{status}_{datetime.now(UTC).timestamp()}",
        task_id=None,
        status=status,
        outcome=None,
        error="unreadable" if status == "rejected" else None,
        headers={},
        body=b"{}",
    )


def test_every_live_state_has_a_column() -> None:
    assert set(LIVE_STATES) == ACTIVE


async def test_empty_database_shows_zeros(client: httpx.AsyncClient) -> None:
    assert queue_samples(await scrape(client)) == expected()


async def test_queue_depths_are_exact(client: httpx.AsyncClient, conn: Conn) -> None:
    user_id, _ = await make_user(conn, credits=100)
    P, S, R, T = (  # short names keep the table below readable
        TaskStatus.PENDING,
        TaskStatus.SUBMITTED,
        TaskStatus.PROCESSING,
        TaskStatus.STORING,
    )
    seeds: list[tuple[TaskStatus, datetime | None, float]] = [
        # status, next poll, deadline (seconds from now)
        (P, None, 1800),
        (P, None, 1800),
        (P, None, -60),  # overdue
        (S, FUTURE, 1800),
        (S, PAST, 1800),  # poll due
        (R, PAST, 1800),  # poll due
        (R, PAST, -60),  # poll due and overdue
        (R, FUTURE, 1800),
        (R, FUTURE, 1800),
        (T, None, -60),  # overdue
        # finished tasks count nowhere, however late or "due" they look
        (TaskStatus.COMPLETED, PAST, -60),
        (TaskStatus.FAILED, PAST, -60),
        (TaskStatus.CANCELED, None, 1800),
    ]
    for status, poll, deadline in seeds:
        await task_in(conn, user_id, status, next_poll_at=poll, deadline_seconds=deadline)
    for kind in ("rejected", "rejected", "rejected", "accepted", "replayed"):
        await delivery(conn, kind)

    samples = await scrape(client)
    assert queue_samples(samples) == expected(
        pending=3, submitted=2, processing=4, storing=1, overdue=3, due_polls=3, dead_letters=3
    )
    # News that asked for a later date: due by next_poll_at, but the claim would only defer.
    await conn.execute(
        "UPDATE tasks SET poll_not_before = $1 WHERE next_poll_at = $2 AND status = 'processing'",
        FUTURE,
        PAST,
    )
    deferred = await conn.fetchval(
        "SELECT count(*) FROM tasks WHERE next_poll_at = $1 AND poll_not_before = $2", PAST, FUTURE
    )
    samples = await scrape(client)
    assert queue_samples(samples) == expected(
        pending=3,
        submitted=2,
        processing=4,
        storing=1,
        overdue=3,
        due_polls=3 - deferred,
        dead_letters=3,
    )
    assert deferred > 0
    # Read at scrape time: a change shows in the very next scrape.
    await conn.execute("UPDATE webhook_deliveries SET status = 'replayed'")
    await conn.execute("UPDATE tasks SET next_poll_at = $1", FUTURE)
    samples = await scrape(client)
    assert queue_samples(samples) == expected(
        pending=3, submitted=2, processing=4, storing=1, overdue=3
    )


async def test_the_query_can_stay_on_partial_indexes(conn: Conn) -> None:
    """Scraped every few seconds forever: no count may have to read every finished task."""
    await conn.execute("SET enable_seqscan = off")
    (plan,) = await conn.fetchval("EXPLAIN (FORMAT JSON) " + QUERIES["queue_depths"])

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    scans = [(n["Node Type"], n.get("Index Name")) for n in nodes(plan["Plan"])]
    assert not [s for s in scans if s[0] == "Seq Scan"], scans
    used = {index for _, index in scans if index}
    assert used <= {
        "tasks_pending_due",
        "tasks_poll_due",
        "tasks_storing_due",
        "tasks_deadline_open",
        "webhook_deliveries_rejected",
    }, used


@pytest.fixture
async def unreachable(runtime: Runtime, tmp_path: Path) -> AsyncIterator[Runtime]:
    """The same runtime with a pool whose database has gone away."""
    dsn = f"postgresql://postgres@/taskhook?host={tmp_path / 'gone'}&port=5432"
    pool = await create_pool(dsn, min_size=0)
    yield replace(runtime, pool=pool)
    await pool.close()


async def test_scrape_with_the_database_down_still_answers(
    client: httpx.AsyncClient, unreachable: Runtime, settings: Settings
) -> None:
    before = await scrape(client)
    errors = before.get(("taskhook_queue_scrape_errors_total", ()), 0.0)
    app = create_app(settings, runtime=unreachable)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as down:
        samples = await scrape(down)
    # The process's own metrics are all there; the queue gauges are left out, not stale.
    assert ("taskhook_refunds_total", ()) in samples
    assert queue_samples(samples) == {}
    assert samples[("taskhook_queue_scrape_errors_total", ())] == errors + 1
    # And they are back with the database.
    assert queue_samples(await scrape(client)) == expected()
