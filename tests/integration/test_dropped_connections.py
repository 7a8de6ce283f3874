"""Connections the database drops under us (restart, failover, pg_terminate_backend): requests
answer 503 `unavailable`, never 500, the loops carry on, and the next request just works.

These are the moments of a restart that tests/acceptance/test_database_outage.py can only hit
by chance, made deterministic:

* a query in flight when its session is terminated;
* a pooled connection that has already received the server's FATAL "terminating connection"
  but not yet the end of the stream: asyncpg's protocol refuses the next query on it with
  InternalClientError ("cannot switch to state ...; another operation (2) is in progress"),
  which used to be a 500 and killed the reconciler loop.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from structlog.testing import capture_logs

from common.states import TaskStatus
from db.pool import connect
from db.transition import transition
from lifecycle.reconcile import run_reconciler
from lifecycle.runtime import Runtime
from taskhook.worker import Worker
from tests.acceptance.stack import wait_for
from tests.factories import make_task, make_user

Conn = asyncpg.Connection


def server_fatal() -> bytes:
    """The ErrorResponse PostgreSQL sends every session on a fast shutdown, byte for byte."""
    fields = (
        b"SFATAL\x00VFATAL\x00C57P01\x00"
        b"Mterminating connection due to administrator command\x00\x00"
    )
    return b"E" + struct.pack("!i", len(fields) + 4) + fields


def idle_connections(pool: asyncpg.Pool[Any]) -> Iterator[Any]:
    # asyncpg internals: the only way to reach the connections idle in a pool.
    for holder in getattr(pool, "_holders"):  # noqa: B009
        con = holder._con
        if con is not None and not con.is_closed() and holder._in_use is None:
            yield con


async def half_drop(pool: asyncpg.Pool[Any]) -> list[int]:
    """Deliver the server's FATAL to every idle pooled connection, as a restart does, but hold
    back the end of the stream; returns their server pids."""
    pids = []
    for con in idle_connections(pool):
        pids.append(con.get_server_pid())
        con._protocol.data_received(server_fatal())
    assert pids
    return pids


async def finish_drop(conn: Conn, pool: asyncpg.Pool[Any], pids: list[int]) -> None:
    """Now the end of the stream: the server really ends those sessions."""
    for pid in pids:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)

    async def noticed() -> bool:
        return not any(con.get_server_pid() in pids for con in idle_connections(pool))

    await wait_for(noticed, timeout=5, what="the pool to notice the closed connections")


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert r.headers["retry-after"].isdigit()


async def test_query_cut_off_mid_flight_is_503(
    client: httpx.AsyncClient, conn: Conn, db_url: str
) -> None:
    _, key = await make_user(conn, credits=1)
    auth = {"Authorization": f"Bearer {key}"}
    locker = await connect(db_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            request = asyncio.create_task(client.get("/v1/me", headers=auth))

            async def blocked() -> list[int]:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
                return [r["pid"] for r in rows]

            async def waiting() -> bool:
                return bool(await blocked())

            await wait_for(waiting, timeout=5, what="the request to wait on its lock")
            (pid,) = await blocked()
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
            r = await asyncio.wait_for(request, timeout=10)
    finally:
        await locker.close()
    assert_unavailable(r)
    assert (await client.get("/v1/me", headers=auth)).status_code == 200


async def test_connection_dropped_while_idle_in_the_pool_is_503_once(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn
) -> None:
    _, key = await make_user(conn, credits=1)
    auth = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/me", headers=auth)).status_code == 200
    pids = await half_drop(runtime.pool)
    assert_unavailable(await client.get("/v1/me", headers=auth))
    await finish_drop(conn, runtime.pool, pids)
    # Closed connections are replaced on acquire: one 503 at most, then back to normal.
    assert (await client.get("/v1/me", headers=auth)).status_code == 200


async def test_loops_survive_a_connection_dropped_under_them(runtime: Runtime, conn: Conn) -> None:
    stop = asyncio.Event()
    poisoned: set[int] = set()
    with capture_logs() as logs:
        worker = asyncio.create_task(Worker(runtime, idle_poll=0.05).run(stop))
        reconciler = asyncio.create_task(run_reconciler(runtime, stop, interval=0.05))
        try:

            def failed(event: str) -> bool:
                return any(
                    e["event"] == event and "InternalClientError" in e.get("error", "")
                    for e in logs
                )

            async def both_met_one() -> bool:
                if worker.done() or reconciler.done():
                    return True  # dead: reported below
                if failed("worker_pass_failed") and failed("reconcile_pass_failed"):
                    return True
                # Poison what is idle now (new connections too): the next passes take them.
                for con in idle_connections(runtime.pool):
                    if con.get_server_pid() not in poisoned:
                        poisoned.add(con.get_server_pid())
                        con._protocol.data_received(server_fatal())
                return False

            await wait_for(both_met_one, timeout=10, what="both loops to meet a dropped connection")
            assert not worker.done() and not reconciler.done()
            await finish_drop(conn, runtime.pool, sorted(poisoned))

            # Both loops work again: the worker claims a due registration, the reconciler a
            # due poll (its vendor is unreachable here; claiming is what counts).
            user_id, _ = await make_user(conn, credits=2)
            pending = await make_task(conn, user_id)
            polled = await make_task(conn, user_id)
            await transition(
                conn,
                task_id=polled,
                to=TaskStatus.SUBMITTED,
                event_key="reg",
                cause="test",
                vendor_task_id="pred-1",
                next_poll_at=datetime.now(UTC) - timedelta(seconds=1),
            )
            await conn.execute("UPDATE tasks SET next_attempt_at = now() WHERE id = $1", pending)

            async def both_work() -> bool:
                attempts = await conn.fetchval("SELECT attempts FROM tasks WHERE id = $1", pending)
                claimed = any(e["event"] == "reconcile_pass" and e["claimed"] >= 1 for e in logs)
                return bool(attempts) and claimed

            await wait_for(both_work, timeout=10, what="both loops to work again")
        finally:
            stop.set()
            ended = await asyncio.gather(worker, reconciler, return_exceptions=True)
    assert list(ended) == [None, None], ended
