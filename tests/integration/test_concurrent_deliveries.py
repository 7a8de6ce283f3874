"""Two webhook deliveries for the same task at the same moment must not deadlock.

Found by tests/acceptance/test_database_outage.py: after PostgreSQL came back, a vendor's retry
and the vendor's next message for the same task arrived together and one got a 500
(``DeadlockDetectedError``): each had inserted its inbox row, whose foreign key took KEY SHARE
on the task row, and then asked for FOR UPDATE on it. The receiver now locks the task row before
it writes anything for the task (``taskhook_receive_many``), and since 0009_log_tables.sql the
inbox has no foreign key at all. What must still hold: a delivery that finds its task locked by
another delivery's open transaction waits for it, then applies on top of it. Here the other
delivery is held half-way, deterministically.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from common.states import TaskStatus
from db import queries
from db.pool import connect
from db.transition import transition
from lifecycle.runtime import Runtime
from tests.factories import make_task, make_user
from tests.integration.test_receiver import hook_url, post_hook, prediction

Conn = asyncpg.Connection


async def until_waiting_on_a_lock(conn: Conn, hook: asyncio.Task[Any], *, checks: int) -> None:
    """Until some session of this database waits on a lock (or the hook ended early), checking
    every 10 ms at most `checks` times."""
    for _ in range(checks):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting or hook.done():
            return
        await asyncio.sleep(0.01)


async def test_concurrent_deliveries_for_one_task_do_not_deadlock(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, db_url: str
) -> None:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    other = await connect(db_url)
    try:
        # Another delivery for the same task is half-way through its transaction: its inbox
        # row is in and its transition applied (the task's row locked), not yet committed.
        tx = other.transaction()
        await tx.start()
        await queries.record_delivery(
            other,
            vendor="replicate",
            delivery_id="msg_other",
            task_id=task_id,
            status="accepted",
            outcome=None,
            error=None,
            headers={},
            body=b"{}",
        )
        result = await transition(
            other,
            task_id=task_id,
            to=TaskStatus.SUBMITTED,
            event_key="webhook:msg_other",
            cause="webhook",
            vendor_task_id="pred1",
        )
        hook = asyncio.create_task(
            post_hook(client, hook_url(runtime, task_id), prediction(logs=""))
        )

        await until_waiting_on_a_lock(conn, hook, checks=200)
        assert not hook.done(), "the delivery did not wait for the task's row lock"
        await tx.commit()
        r = await asyncio.wait_for(hook, timeout=10)
    finally:
        await other.close()
    assert result.status is TaskStatus.SUBMITTED
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "applied"}
    assert await conn.fetchval("SELECT status::text FROM tasks WHERE id = $1", task_id) == (
        "processing"
    )
