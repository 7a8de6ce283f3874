"""Issue 14.4: one slow output stalled all storage.

An output URL that declared a megabyte and sent one byte every 20 s kept three other users'
tasks in `storing` with zero attempts for minutes: the worker gathered a batch and waited for
its slowest job. Now every job runs on its own, each download has a wall clock and a minimum
rate, and `storing` itself has a deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import pytest

from common.settings import Settings
from common.states import TaskStatus
from db import queries
from db.transition import transition
from lifecycle.audit import run_audit
from lifecycle.reconcile import reconcile_once
from lifecycle.runtime import Runtime
from simulator import SimulatorConfig
from tests.acceptance.stack import running_stack, wait_all_terminal, wait_for
from tests.factories import make_task, make_user
from tests.security.support import (
    SlowFileServer,
    post_replicate_success,
    submit,
    wait_status,
)

Conn = asyncpg.Connection


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return replace(settings, poll_after=0.5, registration_timeout=5.0, rate_limit=0)


async def test_a_slow_output_does_not_hold_other_users_tasks(fast: Settings) -> None:
    """Three attacker tasks stream from a slow server (fast enough for the rate floor, so only
    the wall clock ends them); three other users' tasks finish meanwhile."""
    settings = replace(
        fast, download_timeout=12.0, download_min_rate=100, download_grace=1.0, storage_deadline=30
    )
    slow = SlowFileServer(chunk=512, every=0.05)  # ~10 KB/s against a 1 MB Content-Length
    async with slow.running(), running_stack(settings, SimulatorConfig(job_seconds=2)) as stack:
        attacker = await stack.client_for(credits=3)
        others = [await stack.client_for(credits=1) for _ in range(3)]
        try:
            bad = [await submit(attacker, f"attack {n}") for n in range(3)]
            for n, task_id in enumerate(bad):
                r = await post_replicate_success(stack, task_id, [f"{slow.url}/{n}.png"])
                assert r.status_code == 200, r.text

            async def all_streaming() -> bool:
                return slow.open_now == 3

            await wait_status(attacker, bad[0], {"storing"}, timeout=10)
            await wait_for(all_streaming, timeout=10, what="three slow downloads in flight")
            good = [await submit(client, "a cat") for client in others]
            for client, task_id in zip(others, good, strict=True):
                done = await wait_status(client, task_id, {"completed", "failed"}, timeout=30)
                assert done["status"] == "completed", done
            # ...while the attacker's first downloads are all still streaming: nothing waited
            # for them (a batch worker stored these only after the slow ones gave up).
            assert (slow.connections, slow.open_now) == (3, 3)
            final = await wait_all_terminal(attacker, bad, timeout=60)
            for task in final.values():
                assert task["status"] == "failed" and task["refunded"]
                assert task["error"] == {
                    "code": "storage_failed",
                    "message": "The job finished, but its result could not be saved.",
                }
            async with stack.runtime.pool.acquire() as conn:
                last_errors = await conn.fetch(
                    "SELECT error->>'message' AS detail FROM tasks WHERE status = 'failed'"
                )
            # operators see why (the wall clock, then the storing deadline); clients did not
            assert all(
                "took over 12 s" in r["detail"] or "deadline" in r["detail"] for r in last_errors
            ), last_errors
        finally:
            for client in (attacker, *others):
                await client.aclose()


async def test_a_trickling_output_fails_by_the_rate_floor(fast: Settings) -> None:
    """The review's server: one byte at a time, far below the minimum rate."""
    settings = replace(
        fast,
        download_timeout=60.0,
        download_min_rate=1000,
        download_grace=0.5,
        max_storage_attempts=1,
    )
    slow = SlowFileServer(chunk=1, every=0.5)
    async with slow.running(), running_stack(settings, SimulatorConfig(job_seconds=2)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client)
            r = await post_replicate_success(stack, task_id, [f"{slow.url}/x.png"])
            assert r.status_code == 200, r.text
            final = await wait_status(client, task_id, {"failed", "completed"}, timeout=20)
            assert final["status"] == "failed" and final["error"]["code"] == "storage_failed"
            assert final["refunded"]
            async with stack.runtime.pool.acquire() as conn:
                detail = await conn.fetchval(
                    "SELECT error->>'message' FROM tasks WHERE status = 'failed'"
                )
            assert "too slow" in detail


async def test_storing_has_a_deadline_even_without_a_worker(runtime: Runtime, conn: Conn) -> None:
    """No worker (or one stuck renewing its lease): the reconciler ends a task left storing
    past TASKHOOK_STORAGE_DEADLINE, refunded, instead of leaving it there for ever."""
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.STORING,
        event_key="done",
        cause="t",
        vendor_task_id="p",
        outputs=["http://93.184.216.34/x.png"],
    )
    # a worker holds it and keeps renewing its lease
    await queries.claim_storing(
        conn,
        limit=1,
        owner="stuck",
        lease_seconds=3600,
        storage_deadline=runtime.settings.storage_deadline,
    )
    summary = await reconcile_once(runtime)
    assert summary.failed == 0  # not yet: it entered storing a moment ago
    await conn.execute(
        "UPDATE tasks SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
        task_id,
        runtime.settings.storage_deadline + 1,
    )
    summary = await reconcile_once(runtime)
    assert (summary.failed, summary.refunded) == (1, 1)
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status is TaskStatus.FAILED and task.refunded
    assert task.error is not None and task.error["code"] == "storage_failed"


async def test_a_worker_attempt_stops_at_the_storing_deadline(fast: Settings) -> None:
    """The worker's own attempt is bounded by the storing deadline, whatever the per-download
    limits allow."""
    settings = replace(
        fast, download_timeout=300, download_min_rate=0, storage_deadline=3, max_storage_attempts=9
    )
    slow = SlowFileServer(chunk=1, every=0.2)
    async with slow.running(), running_stack(settings, SimulatorConfig(job_seconds=2)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client)
            r = await post_replicate_success(stack, task_id, [f"{slow.url}/x.png"])
            assert r.status_code == 200, r.text
            loop = asyncio.get_running_loop()
            started = loop.time()
            final = await wait_status(client, task_id, {"failed", "completed"}, timeout=30)
            assert final["status"] == "failed" and final["error"]["code"] == "storage_failed"
            assert loop.time() - started < 20


async def test_the_audit_gives_a_storing_task_its_storing_deadline(
    runtime: Runtime, conn: Conn
) -> None:
    """A success found by the deadline's last poll is still stored: `taskhook audit` allows a
    storing task the later of its deadline and its storing deadline, plus the same grace."""
    user_id, _ = await make_user(conn, credits=2)
    storing = []
    for _ in range(2):
        task_id = await make_task(conn, user_id, deadline_seconds=-80)
        await transition(
            conn, task_id=task_id, to=TaskStatus.STORING, event_key="done", cause="t",
            vendor_task_id="p", outputs=["http://93.184.216.34/x.png"],
        )  # fmt: skip
        storing.append(task_id)
    within, stale = storing  # both past their deadline; `within` entered storing just now
    await conn.execute(  # entered storing long enough ago to be past even its storing deadline
        "UPDATE tasks SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
        stale,
        runtime.settings.storage_deadline + 71,
    )
    report = await run_audit(
        conn, grace_seconds=70, storage_deadline=runtime.settings.storage_deadline
    )
    assert {r["id"] for r in report.overdue_open_tasks} == {"tsk_" + stale.hex}, within
