"""Listing (how a client finds its unfinished tasks again) and cancel."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from common.ids import parse_task_id
from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from tests.factories import make_user
from tests.integration.test_submit_api import BODY, assert_error

Conn = asyncpg.Connection


@pytest.fixture
def no_vendor(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def record(coro: Any) -> None:
        calls.append(coro)
        coro.close()

    monkeypatch.setattr(runtime, "spawn", record)
    return calls


async def submit_n(client: httpx.AsyncClient, auth: dict[str, str], n: int) -> list[str]:
    ids = []
    for i in range(n):
        body = {**BODY, "input": {"prompt": f"fox {i}"}}
        ids.append((await client.post("/v1/tasks", json=body, headers=auth)).json()["id"])
    return ids


async def test_pages_newest_first_until_the_end(
    client: httpx.AsyncClient, conn: Conn, no_vendor: list[Any]
) -> None:
    _, key = await make_user(conn, credits=10)
    auth = {"Authorization": f"Bearer {key}"}
    ids = await submit_n(client, auth, 5)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/tasks", params=params, headers=auth)).json()
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_active_filter_finds_unfinished_tasks(
    client: httpx.AsyncClient, conn: Conn, no_vendor: list[Any]
) -> None:
    _, key = await make_user(conn, credits=10)
    auth = {"Authorization": f"Bearer {key}"}
    ids = await submit_n(client, auth, 3)
    done = parse_task_id(ids[1])
    assert done is not None
    await transition(conn, task_id=done, to=TaskStatus.FAILED, event_key="x", cause="t")
    active = (await client.get("/v1/tasks?status=active", headers=auth)).json()["data"]
    assert [t["id"] for t in active] == [ids[2], ids[0]]
    failed = (await client.get("/v1/tasks?status=failed", headers=auth)).json()["data"]
    assert [t["id"] for t in failed] == [ids[1]]


async def test_users_see_only_their_own(
    client: httpx.AsyncClient, conn: Conn, no_vendor: list[Any]
) -> None:
    _, alice = await make_user(conn, credits=5)
    _, bob = await make_user(conn, credits=5)
    await submit_n(client, {"Authorization": f"Bearer {alice}"}, 2)
    page = (await client.get("/v1/tasks", headers={"Authorization": f"Bearer {bob}"})).json()
    assert page == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=forged", "cursor"),
    ],
)
async def test_bad_list_parameters(
    client: httpx.AsyncClient, conn: Conn, query: str, field: str
) -> None:
    _, key = await make_user(conn)
    r = await client.get(f"/v1/tasks?{query}", headers={"Authorization": f"Bearer {key}"})
    assert assert_error(r, 422, "validation_error")["error"]["details"][0]["field"] == field


async def test_cursor_is_bound_to_its_filter(
    client: httpx.AsyncClient, conn: Conn, no_vendor: list[Any]
) -> None:
    _, key = await make_user(conn, credits=5)
    auth = {"Authorization": f"Bearer {key}"}
    await submit_n(client, auth, 2)
    cursor = (await client.get("/v1/tasks?limit=1", headers=auth)).json()["next_cursor"]
    r = await client.get(f"/v1/tasks?status=active&cursor={cursor}", headers=auth)
    assert_error(r, 422, "validation_error")


async def test_cancel_refunds_once_and_then_409(
    client: httpx.AsyncClient, conn: Conn, no_vendor: list[Any]
) -> None:
    _, key = await make_user(conn, credits=2)
    auth = {"Authorization": f"Bearer {key}"}
    (task_id,) = await submit_n(client, auth, 1)
    r = await client.post(f"/v1/tasks/{task_id}/cancel", headers=auth)
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["refunded"], r.json()["error"]) == ("canceled", True, None)
    assert (await client.get("/v1/me", headers=auth)).json()["credits"] == 2
    assert_error(
        await client.post(f"/v1/tasks/{task_id}/cancel", headers=auth), 409, "already_terminal"
    )
    assert await conn.fetchval("SELECT count(*) FROM credit_ledger WHERE kind='refund'") == 1


async def test_cannot_cancel_another_users_task(
    client: httpx.AsyncClient, conn: Conn, no_vendor: list[Any]
) -> None:
    _, alice = await make_user(conn, credits=2)
    _, bob = await make_user(conn, credits=2)
    (task_id,) = await submit_n(client, {"Authorization": f"Bearer {alice}"}, 1)
    r = await client.post(f"/v1/tasks/{task_id}/cancel", headers={"Authorization": f"Bearer {bob}"})
    assert_error(r, 404, "not_found")
    assert_error(
        await client.post("/v1/tasks/tsk_nope/cancel", headers={"Authorization": f"Bearer {bob}"}),
        404,
        "not_found",
    )
    assert await conn.fetchval("SELECT status::text FROM tasks") == "pending"
