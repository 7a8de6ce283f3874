"""Retention and the dashboard's counts (lifecycle/housekeeping.py) on real PostgreSQL and S3:
nothing goes by default; with retention set, old tasks lose their events and stored files
and nothing else does; the marks keep each round off what is already done."""

from __future__ import annotations

import io
import uuid
from dataclasses import replace

import asyncpg

from common.states import TaskStatus
from db import queries
from db.transition import transition
from lifecycle.housekeeping import housekeeping
from lifecycle.reconcile import reconcile_once
from lifecycle.runtime import Runtime
from submit.render import render_task
from tests.factories import make_task, make_user
from web import admin_queries

Conn = asyncpg.Connection
DAY = 86400.0


async def ended_task(
    rt: Runtime, conn: Conn, *, days_ago: float, to: TaskStatus = TaskStatus.COMPLETED
) -> tuple[uuid.UUID, str]:
    """A task with events that ended `days_ago` days ago; a completed one with a stored file."""
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    key = f"results/{task_id.hex}/0.png"
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.PROCESSING,
        event_key="p",
        cause="t",
        vendor_task_id=f"job-{task_id.hex[:8]}",
    )
    if to is TaskStatus.COMPLETED:
        await rt.store.upload(key, io.BytesIO(b"png"), content_type="image/png")
        result = {"files": [{"key": key, "bytes": 3, "sha256": "x", "content_type": "image/png"}]}
        await transition(conn, task_id=task_id, to=to, event_key="done", cause="t", result=result)
    else:
        await transition(
            conn, task_id=task_id, to=to, event_key="done", cause="t", error={"code": "x"}
        )
    await conn.execute(
        "UPDATE tasks SET completed_at = now() - make_interval(secs => $2) WHERE id = $1",
        task_id,
        days_ago * DAY,
    )
    return task_id, key


async def events(conn: Conn, task_id: uuid.UUID) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM task_events WHERE task_id = $1", task_id)
    return n


async def stored(rt: Runtime, key: str) -> bool:
    listing = rt.store._client.list_objects_v2(Bucket=rt.store.bucket, Prefix=key)
    return bool(listing.get("KeyCount"))


async def test_history_is_kept_by_default(runtime: Runtime, conn: Conn) -> None:
    assert runtime.settings.event_retention is None
    assert runtime.settings.result_retention is None
    task_id, key = await ended_task(runtime, conn, days_ago=400)
    done = await housekeeping(runtime, until_done=True)
    assert (done.events, done.results, done.files) == (0, 0, 0)
    assert await events(conn, task_id) == 2
    assert await stored(runtime, key)


async def test_retention_prunes_old_tasks_events_and_files_only(
    runtime: Runtime, conn: Conn
) -> None:
    rt = replace(
        runtime,
        settings=replace(runtime.settings, event_retention=30 * DAY, result_retention=30 * DAY),
    )
    old, old_key = await ended_task(rt, conn, days_ago=40)
    old_failed, _ = await ended_task(rt, conn, days_ago=41, to=TaskStatus.FAILED)
    recent, recent_key = await ended_task(rt, conn, days_ago=1)
    user_id, _ = await make_user(conn, credits=1)
    live = await make_task(conn, user_id)

    done = await housekeeping(rt, until_done=True)

    assert (done.event_tasks, done.events) == (2, 4)
    assert (done.results, done.files) == (1, 1)
    assert await events(conn, old) == 0 and await events(conn, old_failed) == 0
    assert await events(conn, recent) == 2
    assert not await stored(rt, old_key)
    assert await stored(rt, recent_key)
    task = await queries.get_task(conn, task_id=old, user_id=None)
    assert task is not None and task.status is TaskStatus.COMPLETED
    assert (await render_task(task, rt.store))["result"] is None
    assert task.result is not None and "pruned_at" in task.result
    kept = await queries.get_task(conn, task_id=recent, user_id=None)
    assert kept is not None and (await render_task(kept, rt.store))["result"] is not None
    assert await queries.get_task(conn, task_id=live, user_id=None) is not None

    # The marks moved past them: the next round has nothing to do, and an event recorded for
    # a pruned task afterwards (a late webhook) stays.
    await conn.execute(
        "INSERT INTO task_events (task_id, event_key, from_status, to_status, applied, cause)"
        " VALUES ($1, 'late', 'completed', 'completed', false, 'webhook')",
        old,
    )
    again = await housekeeping(rt, until_done=True)
    assert (again.events, again.results, again.files) == (0, 0, 0)
    assert await events(conn, old) == 1


async def test_a_cron_pass_housekeeps_and_a_timed_off_pass_does_not(
    runtime: Runtime, conn: Conn
) -> None:
    await queries.record_delivery(
        conn,
        vendor="replicate",
        delivery_id="old",
        task_id=None,
        status="accepted",
        outcome=None,
        error=None,
        headers={},
        body=b"{}",
    )
    await conn.execute("UPDATE webhook_deliveries SET received_at = now() - interval '8 days'")
    assert (await reconcile_once(runtime, housekeep=False)).pruned == 0
    assert (await reconcile_once(runtime)).pruned == 1


async def test_one_process_housekeeps_at_a_time(runtime: Runtime, conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", 0x7A5C_4014)
    try:
        assert (await housekeeping(runtime)).skipped
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", 0x7A5C_4014)
    assert not (await housekeeping(runtime)).skipped


async def test_dashboard_counts_stay_exact_across_folds(runtime: Runtime, conn: Conn) -> None:
    async def counted() -> dict[str, int]:
        return {k: v for k, v in (await admin_queries.count_by_state(conn)).items() if v}

    async def actual() -> dict[str, int]:
        rows = await conn.fetch("SELECT status::text, count(*) AS n FROM tasks GROUP BY 1")
        return {r["status"]: r["n"] for r in rows}

    await ended_task(runtime, conn, days_ago=3)
    await ended_task(runtime, conn, days_ago=2, to=TaskStatus.CANCELED)
    assert await counted() == await actual() == {"completed": 1, "canceled": 1}
    done = await housekeeping(runtime)
    assert done.counted == 2
    await ended_task(runtime, conn, days_ago=0)  # ended after the mark
    user_id, _ = await make_user(conn, credits=1)
    await make_task(conn, user_id)
    assert await counted() == await actual() == {"completed": 2, "canceled": 1, "pending": 1}
    assert (await housekeeping(runtime)).counted == 0  # the new one has not settled yet
