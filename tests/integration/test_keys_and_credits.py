"""Keys and credits through the client API (issue 17.2): several keys per user, shown once,
revoked at once on every process; the ledger paged with its tasks and reasons."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from common.settings import Settings
from db.queries import Conn
from lifecycle.runtime import Runtime
from lifecycle.user_accounts import MAX_KEYS, adjust_credits
from taskhook.app import create_app
from taskhook.runtime import open_runtime
from tests.factories import make_task, make_user


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_user_makes_lists_and_revokes_keys(client: httpx.AsyncClient, conn: Conn) -> None:
    _, first = await make_user(conn, credits=1)
    r = await client.post("/v1/keys", headers=bearer(first))
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    assert made["id"].startswith("key_") and made["api_key"].startswith("thk_")
    assert made["api_key"].startswith(made["prefix"]) and r.headers["location"].endswith(made["id"])
    second = made["api_key"]
    assert (await client.get("/v1/me", headers=bearer(second))).status_code == 200

    listed = (await client.get("/v1/keys", headers=bearer(second))).json()["data"]
    assert listed[0]["id"] == made["id"] and len(listed) == 2
    assert [k["current"] for k in listed] == [True, False]
    assert all("api_key" not in k for k in listed)  # shown whole only when made
    assert second not in r.text.replace(second, "", 1)  # and only once in that answer

    r = await client.delete(f"/v1/keys/{made['id']}", headers=bearer(first))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert (await client.get("/v1/me", headers=bearer(second))).status_code == 401
    assert (await client.get("/v1/me", headers=bearer(first))).status_code == 200
    # Revoked keys stay listed, with when.
    listed = (await client.get("/v1/keys", headers=bearer(first))).json()["data"]
    assert [k["revoked_at"] is not None for k in listed] == [True, False]


async def test_another_users_key_is_not_found(client: httpx.AsyncClient, conn: Conn) -> None:
    _, mine = await make_user(conn)
    _, theirs = await make_user(conn)
    their_key = (await client.post("/v1/keys", headers=bearer(theirs))).json()
    for key_id in [their_key["id"], "key_" + "0" * 32, "nope", their_key["id"].upper()]:
        r = await client.delete(f"/v1/keys/{key_id}", headers=bearer(mine))
        assert r.status_code == 404, (key_id, r.text)
    assert (await client.get("/v1/me", headers=bearer(their_key["api_key"]))).status_code == 200


async def test_keys_are_capped(client: httpx.AsyncClient, conn: Conn) -> None:
    _, key = await make_user(conn)
    for _ in range(MAX_KEYS - 1):
        assert (await client.post("/v1/keys", headers=bearer(key))).status_code == 201
    r = await client.post("/v1/keys", headers=bearer(key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit"


async def test_a_revoked_key_is_refused_at_once_by_every_process(
    client: httpx.AsyncClient, conn: Conn, settings: Settings
) -> None:
    """Two web processes (own pools): a revocation through one is seen by the other on the very
    next request, as no process keeps keys in memory."""
    _, key = await make_user(conn)
    other: Runtime
    async with open_runtime(settings, pool_size=2) as other:
        app = create_app(settings, runtime=other)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as b:
            made = (await client.post("/v1/keys", headers=bearer(key))).json()
            assert (await b.get("/v1/me", headers=bearer(made["api_key"]))).status_code == 200
            r = await client.delete(f"/v1/keys/{made['id']}", headers=bearer(key))
            assert r.status_code == 200
            assert (await b.get("/v1/me", headers=bearer(made["api_key"]))).status_code == 401


async def test_usage_pages_the_ledger_with_tasks_and_reasons(
    client: httpx.AsyncClient, conn: Conn
) -> None:
    user_id, key = await make_user(conn, credits=10, email="usage@example.test")
    task_ids = [await make_task(conn, user_id, cost=2) for _ in range(3)]
    done = await adjust_credits(conn, email="usage@example.test", amount=-1, reason="goodwill fix")
    assert done.applied and done.balance == 3

    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(5):
        query = "/v1/me/usage?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(query, headers=bearer(key))).json()
        assert page["credits"] == 3
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["kind"] for e in seen] == ["adjust", "charge", "charge", "charge", "grant"]
    assert [e["amount"] for e in seen] == [-1, -2, -2, -2, 10]
    assert seen[0]["reason"] == "goodwill fix" and seen[0]["task"] is None
    assert [e["task"]["id"] for e in seen[1:4]] == ["tsk_" + t.hex for t in reversed(task_ids)]
    assert seen[1]["task"]["status"] == "pending" and seen[1]["task"]["model"]
    assert all(e["created_at"].endswith("Z") for e in seen)
    assert sum(e["amount"] for e in seen) == 3  # the bill reconciles with the balance

    r = await client.get("/v1/me/usage?cursor=forged", headers=bearer(key))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "cursor"


@pytest.mark.parametrize("amount", [-11, -100])
async def test_an_adjustment_never_takes_a_balance_below_zero(conn: Conn, amount: int) -> None:
    await make_user(conn, credits=10, email="floor@example.test")
    done = await adjust_credits(conn, email="floor@example.test", amount=amount, reason="oops")
    assert not done.applied and done.balance == 10
    assert await conn.fetchval("SELECT count(*) FROM credit_ledger WHERE kind = 'adjust'") == 0
    done = await adjust_credits(conn, email="floor@example.test", amount=-10, reason="all")
    assert done.applied and done.balance == 0
