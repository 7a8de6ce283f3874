"""Per-user request rate and active-task cap, enforced in PostgreSQL across processes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from common.ids import parse_task_id
from common.states import TaskStatus
from db.transition import transition
from lifecycle.audit import run_audit
from lifecycle.runtime import Runtime
from taskhook.app import create_app
from tests.factories import make_user
from tests.integration.test_submit_api import BODY, assert_error

Conn = asyncpg.Connection


@pytest.fixture
def limited(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client factory for an app with the given limits; vendor registration is skipped."""
    monkeypatch.setattr(runtime, "spawn", lambda coro: coro.close())

    def make(**limits: Any) -> httpx.AsyncClient:
        rt = replace(runtime, settings=replace(runtime.settings, **limits))
        monkeypatch.setattr(rt, "spawn", lambda coro: coro.close())
        app = create_app(rt.settings, runtime=rt)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        return client

    return make


async def test_rate_limit_answers_429_with_retry_after(limited: Any, conn: Conn) -> None:
    client = limited(rate_limit=3)
    _, alice = await make_user(conn)
    _, bob = await make_user(conn)
    a = {"Authorization": f"Bearer {alice}"}
    for _ in range(3):
        assert (await client.get("/v1/me", headers=a)).status_code == 200
    r = await client.get("/v1/me", headers=a)
    assert_error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # a limit per user: Bob is not affected
    assert (
        await client.get("/v1/me", headers={"Authorization": f"Bearer {bob}"})
    ).status_code == 200


async def test_rate_limit_holds_across_processes(limited: Any, conn: Conn) -> None:
    """Two apps (as two web processes) share the user's window in PostgreSQL."""
    one, two = limited(rate_limit=4), limited(rate_limit=4)
    _, key = await make_user(conn)
    auth = {"Authorization": f"Bearer {key}"}
    codes = [(await c.get("/v1/me", headers=auth)).status_code for c in (one, two) * 3]
    assert codes == [200, 200, 200, 200, 429, 429]


async def test_zero_means_no_rate_limit(limited: Any, conn: Conn) -> None:
    client = limited(rate_limit=0)
    _, key = await make_user(conn)
    auth = {"Authorization": f"Bearer {key}"}
    codes = {(await client.get("/v1/me", headers=auth)).status_code for _ in range(30)}
    assert codes == {200}
    assert await conn.fetchval("SELECT count(*) FROM rate_windows") == 0


async def test_active_task_cap(limited: Any, conn: Conn) -> None:
    client = limited(max_active_tasks=2)
    _, key = await make_user(conn, credits=10)
    auth = {"Authorization": f"Bearer {key}"}
    ids = [(await client.post("/v1/tasks", json=BODY, headers=auth)).json()["id"] for _ in range(2)]
    r = await client.post("/v1/tasks", json=BODY, headers=auth)
    assert_error(r, 429, "active_task_limit")
    assert (await client.get("/v1/me", headers=auth)).json()["credits"] == 8  # not charged
    first = parse_task_id(ids[0])
    assert first is not None
    await transition(conn, task_id=first, to=TaskStatus.FAILED, event_key="x", cause="t")
    assert (await client.post("/v1/tasks", json=BODY, headers=auth)).status_code == 202
    assert (await run_audit(conn)).ok


async def test_active_cap_holds_under_concurrency(limited: Any, conn: Conn) -> None:
    client = limited(max_active_tasks=3)
    _, key = await make_user(conn, credits=20)
    auth = {"Authorization": f"Bearer {key}"}
    codes = [
        r.status_code
        for r in await asyncio.gather(
            *(client.post("/v1/tasks", json=BODY, headers=auth) for _ in range(12))
        )
    ]
    assert sorted(codes) == [202] * 3 + [429] * 9
    assert await conn.fetchval("SELECT active_tasks FROM users") == 3


async def test_short_balance_is_402_not_the_cap(limited: Any, conn: Conn) -> None:
    client = limited(max_active_tasks=1)
    _, key = await make_user(conn, credits=0)
    r = await client.post("/v1/tasks", json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert_error(r, 402, "insufficient_credits")


async def test_audit_catches_a_wrong_active_count(conn: Conn) -> None:
    await make_user(conn)
    await conn.execute("UPDATE users SET active_tasks = 2")
    report = await run_audit(conn)
    assert not report.ok and report.active_count_mismatches[0]["active_tasks"] == 2
