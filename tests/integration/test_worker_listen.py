"""The worker's LISTEN connection comes back by itself after the database drops it.

Found by tests/acceptance/test_database_outage.py: the worker held one pooled connection for
LISTEN for its whole life. When PostgreSQL restarted, that connection died, NOTIFY wake-ups
stopped for good (only the idle poll was left), and stopping the worker then raised
InterfaceError from ``remove_listener`` on the dead connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from lifecycle.runtime import Runtime
from taskhook.worker import Worker
from tests.factories import make_task, make_user

Conn = asyncpg.Connection


async def listeners(conn: Conn) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
    )
    return [r["pid"] for r in rows]


async def eventually(check: Any, what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_worker_listens_again_after_its_connection_is_killed(
    runtime: Runtime, conn: Conn
) -> None:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)  # pending, its first retry 30 s away
    # A long idle poll: only a NOTIFY can wake this worker within the test's time.
    worker = Worker(runtime, idle_poll=60)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        (first,) = await eventually(lambda: listeners(conn), "the worker to LISTEN")
        await conn.execute("SELECT pg_terminate_backend($1)", first)
        again = await eventually(
            lambda: _without(listeners(conn), first), "the worker to LISTEN again"
        )
        assert len(again) == 1
        # A wake-up reaches it through the new connection.
        await conn.execute("UPDATE tasks SET next_attempt_at = now() WHERE id = $1", task_id)
        await conn.execute(
            "SELECT pg_notify('taskhook_tasks', json_build_object('id', $1::uuid,"
            " 'status', 'pending')::text)",
            task_id,
        )

        async def attempted() -> bool:
            n = await conn.fetchval("SELECT attempts FROM tasks WHERE id = $1", task_id)
            return bool(n)

        await eventually(attempted, "the woken worker to retry the registration")
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)  # ends cleanly, no InterfaceError
    assert await listeners(conn) == []


async def _without(pids: Any, gone: int) -> list[int]:
    return [p for p in await pids if p != gone]
