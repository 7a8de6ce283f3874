"""The reconciler against real PostgreSQL: deadlines, late success, breaker, 429, rate limit."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from common import metrics
from common.errors import VendorUnavailable
from common.states import TaskStatus
from db import queries
from db.transition import transition
from lifecycle.reconcile import reconcile_once
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import Limits, VendorHealth
from tests.factories import make_task, make_user
from vendors.replicate import ReplicateAdapter

Conn = asyncpg.Connection
Handler = Callable[[httpx.Request], httpx.Response]


def prediction(pid: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"id": pid, "status": status, "logs": "", "output": None, "error": None, **extra}


class FakeVendor:
    """Replicate's GET /predictions/{id}, answering from a script and counting calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answer: Handler = lambda r: httpx.Response(
            200, json=prediction(r.url.path.rsplit("/", 1)[-1], "processing", logs="40%|")
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        return self.answer(request)


def with_vendor(runtime: Runtime, vendor: FakeVendor, **limits: Any) -> Runtime:
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendor.handler))
    adapter = ReplicateAdapter(
        client,
        api_token="t",
        api_base="http://vendor.test/v1",
        webhook_secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    health = VendorHealth(runtime.pool, "replicate", Limits(**limits))
    return replace(
        runtime, http=client, vendors={"replicate": adapter}, health={"replicate": health}
    )


async def due_task(
    conn: Conn,
    *,
    pid: str,
    deadline_seconds: float = 1800,
    status: TaskStatus = TaskStatus.SUBMITTED,
) -> uuid.UUID:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id, deadline_seconds=deadline_seconds)
    await transition(
        conn,
        task_id=task_id,
        to=status,
        event_key="setup",
        cause="test",
        vendor_task_id=pid,
        next_poll_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    return task_id


async def status_of(conn: Conn, task_id: uuid.UUID) -> str:
    return str(await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id))


async def refunds(conn: Conn, task_id: uuid.UUID) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM credit_ledger WHERE task_id=$1 AND kind='refund'", task_id
        )
    )


async def test_lost_callback_is_polled_and_applied(runtime: Runtime, conn: Conn) -> None:
    vendor = FakeVendor()
    rt = with_vendor(runtime, vendor)
    task_id = await due_task(conn, pid="p1")
    summary = await reconcile_once(rt)
    assert (summary.claimed, summary.polled, summary.advanced) == (1, 1, 1)
    row = await conn.fetchrow(
        "SELECT status::text, progress, next_poll_at > now() AS later FROM tasks WHERE id=$1",
        task_id,
    )
    assert row is not None
    assert tuple(row) == ("processing", 40, True)
    # just polled: not due again this round
    assert (await reconcile_once(rt)).claimed == 0
    assert vendor.calls == ["/v1/predictions/p1"]


async def test_task_with_fresh_news_is_not_polled(runtime: Runtime, conn: Conn) -> None:
    vendor = FakeVendor()
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.PROCESSING,
        event_key="webhook:1",
        cause="webhook",
        vendor_task_id="p1",
        next_poll_at=datetime.now(UTC) + timedelta(seconds=15),
    )
    assert (await reconcile_once(with_vendor(runtime, vendor))).claimed == 0
    assert vendor.calls == []


async def test_news_defers_a_due_poll_to_the_date_it_asked_for(
    runtime: Runtime, conn: Conn
) -> None:
    """A progress report leaves the indexed next_poll_at alone (a HOT update) and records its
    date in poll_not_before: a task due by next_poll_at but with news since is not polled,
    it is moved to the date the news asked for."""
    vendor = FakeVendor()
    rt = with_vendor(runtime, vendor)
    task_id = await due_task(conn, pid="p1", status=TaskStatus.PROCESSING)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.PROCESSING,
        event_key="webhook:2",
        cause="webhook",
        progress=50,
        vendor_task_id="p1",
        next_poll_at=datetime.now(UTC) + timedelta(seconds=15),
    )
    assert await conn.fetchval("SELECT next_poll_at <= now() FROM tasks WHERE id=$1", task_id)
    summary = await reconcile_once(rt)
    assert (summary.claimed, summary.polled) == (0, 0)
    assert vendor.calls == []
    row = await conn.fetchrow(
        "SELECT next_poll_at = poll_not_before AS moved, next_poll_at > now() AS later "
        "FROM tasks WHERE id=$1",
        task_id,
    )
    assert row is not None
    assert tuple(row) == (True, True)
    # once that date has come, the task is polled as before
    await conn.execute(
        "UPDATE tasks SET next_poll_at = now() - interval '1 second', "
        "poll_not_before = now() - interval '1 second' WHERE id = $1",
        task_id,
    )
    assert (await reconcile_once(rt)).polled == 1
    assert vendor.calls == ["/v1/predictions/p1"]


async def test_deadline_fails_and_refunds_once_then_late_success_never_reopens(
    runtime: Runtime, conn: Conn
) -> None:
    vendor = FakeVendor()
    rt = with_vendor(runtime, vendor)
    task_id = await due_task(conn, pid="slow", deadline_seconds=-1)
    summary = await reconcile_once(rt)
    assert vendor.calls == ["/v1/predictions/slow"]  # one last poll first
    assert (summary.failed, summary.refunded) == (1, 1)
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status is TaskStatus.FAILED
    assert task.error == {
        "code": "deadline_exceeded",
        "message": "the task did not finish before its deadline",
    }
    # the vendor finishes after all: recorded and counted, never reopened or refunded again
    late_before = metrics.LATE_SUCCESS._value.get()
    vendor.answer = lambda r: httpx.Response(
        200, json=prediction("slow", "succeeded", output=["https://x/0.png"])
    )
    from lifecycle.vendor_updates import apply_update

    result = await apply_update(
        conn,
        task_id=task_id,
        vendor="replicate",
        update=rt.vendors["replicate"].parse(
            json.dumps(prediction("slow", "succeeded", output=["https://x/0.png"])).encode()
        ),
        event_key="webhook:late",
        cause="webhook",
        poll_after=15,
    )
    assert result.outcome.value == "stale"
    assert metrics.LATE_SUCCESS._value.get() == late_before + 1
    assert await status_of(conn, task_id) == "failed" and await refunds(conn, task_id) == 1
    event = await conn.fetchrow(
        "SELECT to_status::text, applied FROM task_events "
        "WHERE task_id=$1 AND event_key='webhook:late'",
        task_id,
    )
    assert event is not None
    assert tuple(event) == ("storing", False)
    assert (await reconcile_once(rt)).claimed == 0


async def test_last_poll_saves_a_task_that_succeeded_in_time(runtime: Runtime, conn: Conn) -> None:
    vendor = FakeVendor()
    vendor.answer = lambda r: httpx.Response(
        200, json=prediction("done", "succeeded", output=["https://x/0.png"])
    )
    task_id = await due_task(conn, pid="done", deadline_seconds=-1)
    await reconcile_once(with_vendor(runtime, vendor))
    assert await status_of(conn, task_id) == "storing" and await refunds(conn, task_id) == 0


async def test_pending_task_past_deadline_fails_without_a_poll(
    runtime: Runtime, conn: Conn
) -> None:
    vendor = FakeVendor()
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id, deadline_seconds=-1)
    summary = await reconcile_once(with_vendor(runtime, vendor))
    assert vendor.calls == [] and summary.refunded == 1
    assert await status_of(conn, task_id) == "failed"


async def test_vendor_errors_never_stop_the_pass(runtime: Runtime, conn: Conn) -> None:
    vendor = FakeVendor()

    def answer(r: httpx.Request) -> httpx.Response:
        pid = r.url.path.rsplit("/", 1)[-1]
        if pid == "bad":
            return httpx.Response(500)
        return httpx.Response(200, json=prediction(pid, "failed", error="NSFW"))

    vendor.answer = answer
    bad = await due_task(conn, pid="bad")
    good = await due_task(conn, pid="good")
    summary = await reconcile_once(with_vendor(runtime, vendor))
    assert (summary.polled, summary.errors, summary.refunded) == (1, 1, 1)
    assert await status_of(conn, good) == "failed" and await status_of(conn, bad) == "submitted"


async def test_breaker_opens_after_failures_and_closes_after_a_good_probe(
    runtime: Runtime, conn: Conn
) -> None:
    vendor = FakeVendor()
    vendor.answer = lambda r: httpx.Response(503)
    rt = with_vendor(runtime, vendor, breaker_threshold=3, breaker_cooldown=0.3)
    tasks = [await due_task(conn, pid=f"p{n}") for n in range(5)]
    await reconcile_once(rt)
    assert len(vendor.calls) == 5  # a batch already under way completes its calls
    state = await conn.fetchrow("SELECT circuit, failures FROM vendor_state")
    assert state is not None
    assert state["circuit"] == "open" and state["failures"] >= 3
    await conn.execute("UPDATE tasks SET next_poll_at = now() - interval '1 second'")
    calls = len(vendor.calls)
    assert (await reconcile_once(rt)).claimed == 0  # open: nobody calls the vendor
    assert len(vendor.calls) == calls
    assert {await status_of(conn, t) for t in tasks} == {"submitted"}  # tasks wait
    # after the cool-down one probe goes out; its success closes the circuit
    vendor.answer = lambda r: httpx.Response(
        200, json=prediction(r.url.path.rsplit("/", 1)[-1], "processing")
    )
    deadline = time.monotonic() + 5
    while await conn.fetchval("SELECT open_until > clock_timestamp() FROM vendor_state"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    probe = await reconcile_once(rt)
    assert probe.polled == 1
    assert await conn.fetchval("SELECT circuit FROM vendor_state") == "closed"
    assert (await reconcile_once(rt)).polled == 4


async def test_429_blocks_every_caller_for_retry_after(runtime: Runtime, conn: Conn) -> None:
    vendor = FakeVendor()
    vendor.answer = lambda r: httpx.Response(
        429, headers={"Retry-After": "30"}, json={"detail": "throttled"}
    )
    rt = with_vendor(runtime, vendor, breaker_threshold=2)
    for n in range(4):
        await due_task(conn, pid=f"p{n}")
    first = await reconcile_once(rt)
    assert first.polled == 0 and len(vendor.calls) >= 1
    state = await conn.fetchrow(
        "SELECT circuit, blocked_until - clock_timestamp() AS left FROM vendor_state"
    )
    assert state is not None
    assert state["circuit"] == "closed"  # throttling is not a failure of the vendor
    assert timedelta(seconds=25) < state["left"] <= timedelta(seconds=30)
    calls = len(vendor.calls)
    await conn.execute("UPDATE tasks SET next_poll_at = now() - interval '1 second'")
    assert (await reconcile_once(rt)).claimed == 0
    assert len(vendor.calls) == calls


async def test_rate_limit_is_shared_by_concurrent_reconcilers(
    runtime: Runtime, conn: Conn, db_url: str
) -> None:
    """Two reconcilers at once: together they take no more than the bucket holds, and no
    task is polled twice."""
    vendor = FakeVendor()
    for n in range(30):
        await due_task(conn, pid=f"p{n}")
    from db.pool import create_pool

    pools = [await create_pool(db_url, max_size=4) for _ in range(2)]
    try:
        runs = [
            replace(
                with_vendor(runtime, vendor, rate=0.001, burst=10),
                pool=p,
                health={"replicate": VendorHealth(p, "replicate", Limits(rate=0.001, burst=10))},
            )
            for p in pools
        ]
        summaries = await asyncio.gather(*(reconcile_once(r) for r in runs))
    finally:
        for p in pools:
            await p.close()
    assert sum(s.polled for s in summaries) == 10
    assert len(vendor.calls) == len(set(vendor.calls)) == 10


async def test_prunes_old_accepted_deliveries_but_keeps_dead_letters(
    runtime: Runtime, conn: Conn
) -> None:
    for n, status in enumerate(["accepted", "rejected", "accepted"]):
        await queries.record_delivery(
            conn,
            vendor="replicate",
            delivery_id=f"m{n}",
            task_id=None,
            status=status,
            outcome=None,
            error=None,
            headers={},
            body=b"{}",
        )
    await conn.execute(
        "UPDATE webhook_deliveries SET received_at = now() - interval '8 days'"
        " WHERE delivery_id IN ('m0', 'm1')"
    )
    summary = await reconcile_once(with_vendor(runtime, FakeVendor()))
    assert summary.pruned == 1
    left = await conn.fetch("SELECT delivery_id FROM webhook_deliveries ORDER BY delivery_id")
    assert [r["delivery_id"] for r in left] == ["m1", "m2"]


async def test_open_circuit_defers_registration_without_spending_attempts(
    runtime: Runtime, conn: Conn
) -> None:
    from lifecycle.registration import register

    vendor = FakeVendor()
    rt = with_vendor(runtime, vendor, breaker_threshold=1, breaker_cooldown=60)
    await rt.health["replicate"].permits()  # creates the vendor's row
    await conn.execute(
        "UPDATE vendor_state SET circuit='open', "
        "open_until = clock_timestamp() + interval '60 seconds'"
    )
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    attempt = await queries.begin_registration(conn, task_id=task_id, lease_seconds=5)
    assert attempt == 1
    await register(rt, task_id=task_id, attempt=attempt)
    row = await conn.fetchrow(
        "SELECT status::text, attempts, next_attempt_at > now() + "
        "interval '50 seconds' AS later FROM tasks WHERE id=$1",
        task_id,
    )
    assert row is not None
    assert tuple(row) == ("pending", 0, True)
    assert vendor.calls == []


async def test_confirming_with_the_vendor_catches_up_a_lagging_task(
    runtime: Runtime, conn: Conn
) -> None:
    """The callback said 100% but local state is still processing; the vendor says done."""
    from lifecycle.confirm import refresh_from_vendor

    vendor = FakeVendor()
    vendor.answer = lambda r: httpx.Response(
        200, json=prediction("p1", "succeeded", output=["https://x/0.png"])
    )
    rt = with_vendor(runtime, vendor)
    task_id = await due_task(conn, pid="p1", status=TaskStatus.PROCESSING)
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None
    fresh = await refresh_from_vendor(rt, task)
    assert fresh.status is TaskStatus.STORING and fresh.outputs == ["https://x/0.png"]
    # a vendor that cannot be asked leaves the task as it was, without raising
    vendor.answer = lambda r: httpx.Response(503)
    other = await queries.get_task(conn, task_id=await due_task(conn, pid="p2"), user_id=None)
    assert other is not None
    assert (await refresh_from_vendor(rt, other)).status is TaskStatus.SUBMITTED
    # a task whose vendor part is over (storing, terminal) is never asked about
    calls = len(vendor.calls)
    done = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert done is not None and (await refresh_from_vendor(rt, done)) == done
    assert len(vendor.calls) == calls


async def test_a_job_the_vendor_lost_fails_and_refunds_at_once(
    runtime: Runtime, conn: Conn
) -> None:
    """A 404 for a job we registered means it is gone (the proxy expired it, the vendor lost
    it): fail and refund now instead of polling an error until the deadline."""
    vendor = FakeVendor()
    vendor.answer = lambda r: httpx.Response(404, json={"detail": "Not found."})
    task_id = await due_task(conn, pid="gone")
    summary = await reconcile_once(with_vendor(runtime, vendor))
    assert (summary.polled, summary.errors, summary.refunded) == (1, 0, 1)
    assert await status_of(conn, task_id) == "failed" and await refunds(conn, task_id) == 1
    error = await conn.fetchval("SELECT error FROM tasks WHERE id = $1", task_id)
    assert error["code"] == "vendor_lost" and "Not found." in error["message"]
    assert (await reconcile_once(with_vendor(runtime, vendor))).claimed == 0


async def test_stragglers_failing_do_not_push_an_open_circuit_out(
    runtime: Runtime, conn: Conn
) -> None:
    """Regression (chaos run): calls in flight when the circuit opened kept failing in, and
    each pushed the cool-down out again, so healthy work waited far longer than it says."""
    health = VendorHealth(
        runtime.pool, "replicate", Limits(breaker_threshold=2, breaker_cooldown=30)
    )
    await health.permits()
    for _ in range(2):
        await health.record(VendorUnavailable("503"))
    opened = await conn.fetchval("SELECT open_until FROM vendor_state WHERE vendor='replicate'")
    for _ in range(5):
        await health.record(VendorUnavailable("503, from a call made before it opened"))
    row = await conn.fetchrow(
        "SELECT circuit, open_until FROM vendor_state WHERE vendor='replicate'"
    )
    assert row is not None
    assert (row["circuit"], row["open_until"]) == ("open", opened)


async def test_a_healthy_vendor_call_writes_nothing_to_the_shared_row(
    runtime: Runtime, conn: Conn
) -> None:
    """Every vendor call asked the circuit and recorded its result by UPDATEing the vendor's
    one row, so all registrations and polls of a process queued on that row's lock
    (bench/submit_throughput.py: 8 transactions per submit)."""
    health = VendorHealth(runtime.pool, "replicate", Limits())
    assert await health.permits() == "closed"
    version = await conn.fetchval("SELECT xmin::text FROM vendor_state WHERE vendor='replicate'")
    for _ in range(3):
        assert await health.permits() == "closed"
        await health.record(None)
    after = await conn.fetchval("SELECT xmin::text FROM vendor_state WHERE vendor='replicate'")
    assert after == version
    await health.record(VendorUnavailable("503"))  # news: written
    assert await conn.fetchval("SELECT failures FROM vendor_state WHERE vendor='replicate'") == 1
    await health.record(None)  # back to clean: written once more
    assert await conn.fetchval("SELECT failures FROM vendor_state WHERE vendor='replicate'") == 0


async def test_a_paused_vendor_is_not_polled_until_resumed(runtime: Runtime, conn: Conn) -> None:
    """An operator's pause (issue 17.3) lives in vendor_state: this reconciler, like every
    process, reads it and makes no call to the vendor; resumed, the poll goes out."""
    from db import operations_queries
    from lifecycle import operations

    vendor = FakeVendor()
    rt = with_vendor(runtime, vendor)
    task_id = await due_task(conn, pid="p_paused")
    # As the dashboard pauses: the first thing written for this vendor, so its bucket must not
    # start empty (the resumed poll below found no token when the pause made the row).
    await operations.pause_vendor(rt, vendor="replicate", reason="test")
    await reconcile_once(rt)
    assert vendor.calls == [] and await status_of(conn, task_id) == "submitted"
    assert await operations_queries.resume_vendor(conn, vendor="replicate")
    await conn.execute("UPDATE tasks SET next_poll_at = now() - interval '1 second'")
    summary = await reconcile_once(rt)
    assert summary.polled == 1 and vendor.calls == ["/v1/predictions/p_paused"]
