"""The dashboard's panel of webhooks to clients: failing destinations, failed events, and
their replay behind the admin key (issue 18)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from common.settings import Settings
from common.states import TaskStatus
from db.transition import transition
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from tests.factories import make_task, make_user

Conn = asyncpg.Connection
ADMIN_KEY = "admin-key-for-tests-of-webhooks-out"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from taskhook.app import create_app
    from taskhook.runtime import open_runtime

    settings = settings.with_overrides(admin_key=ADMIN_KEY)
    async with open_runtime(settings, pool_size=4) as rt:
        app = create_app(settings, runtime=rt)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as c:
            yield c


async def event_for(conn: Conn, url: str) -> int:
    user_id, _ = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    await client_webhooks.attach(
        conn, task_id=task_id, user_id=user_id, webhook=ClientWebhook(url, ("completed",))
    )
    await transition(conn, task_id=task_id, to=TaskStatus.CANCELED, event_key="c", cause="t")
    event_id: int = await conn.fetchval("SELECT id FROM webhook_outbox WHERE task_id = $1", task_id)
    return event_id


async def test_failing_destinations_and_replay(admin: httpx.AsyncClient, conn: Conn) -> None:
    dead = await event_for(conn, "https://dead.example.com/hook")
    await event_for(conn, "https://fine.example.com/hook")
    await conn.execute(
        "UPDATE webhook_outbox SET state = 'failed', attempts = 8, last_status = 502 WHERE id = $1",
        dead,
    )
    r = await admin.get("/admin/api/overview", headers=AUTH)
    assert r.status_code == 200
    panel = r.json()["client_webhooks"]
    assert panel["pending"] == 1
    (host,) = panel["failing_destinations"]
    assert (host["host"], host["failed"], host["last_answer"]) == ("dead.example.com", 1, "502")
    (event,) = panel["failed_events"]
    assert (event["id"], event["state"], event["last_status"]) == (dead, "failed", 502)

    assert (await admin.post(f"/admin/api/webhooks/{dead}/replay")).status_code == 401
    for missing in ("999999", "abc", "9" * 40):
        r = await admin.post(f"/admin/api/webhooks/{missing}/replay", headers=AUTH)
        assert r.status_code == 404, missing
    r = await admin.post(f"/admin/api/webhooks/{dead}/replay", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"id": dead, "state": "pending"}
    assert await conn.fetchval("SELECT state FROM webhook_outbox WHERE id = $1", dead) == "pending"
    assert (await admin.get("/admin/api/overview", headers=AUTH)).json()["client_webhooks"][
        "pending"
    ] == 2
