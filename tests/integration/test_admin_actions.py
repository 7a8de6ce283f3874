"""The dashboard acts (issue 17.3), through its JSON API: find and open a task, cancel or retry
it, pause and resume a vendor (honoured by every process: it lives in the database), replay
dead letters since a time with a preview count, stuck pending tasks with their last error."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from common.settings import Settings
from common.states import TaskStatus
from db import queries
from db.queries import Conn
from lifecycle.routing import plan
from lifecycle.runtime import Runtime
from tests.factories import make_task, make_user
from tests.integration.test_admin import ADMIN_KEY, dead_letter

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    from taskhook.app import create_app
    from taskhook.runtime import open_runtime

    settings = settings.with_overrides(admin_key=ADMIN_KEY)
    async with open_runtime(settings, pool_size=4) as rt:
        transport = httpx.ASGITransport(app=create_app(settings, runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c, rt


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/api/tasks"),
        ("GET", "/admin/api/tasks/tsk_" + "0" * 32),
        ("POST", "/admin/api/tasks/tsk_" + "0" * 32 + "/cancel"),
        ("POST", "/admin/api/tasks/tsk_" + "0" * 32 + "/retry"),
        ("POST", "/admin/api/vendors/replicate/pause"),
        ("POST", "/admin/api/vendors/replicate/resume"),
        ("POST", "/admin/api/deliveries/replay"),
    ],
)
async def test_every_action_needs_the_admin_key(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn, method: str, path: str
) -> None:
    client, _ = admin
    _, user_key = await make_user(conn)
    for headers in [{}, {"Authorization": f"Bearer {user_key}"}]:
        r = await client.request(method, path, headers=headers)
        assert r.status_code == 401, (path, r.text)


async def test_find_open_and_cancel_a_task(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    client, _ = admin
    user_id, _ = await make_user(conn, credits=5, email="finder@example.test")
    other_id, _ = await make_user(conn, credits=5)
    mine = [await make_task(conn, user_id) for _ in range(2)]
    await make_task(conn, other_id)

    by_email = (await client.get("/admin/api/tasks?q=finder@example.test", headers=AUTH)).json()
    assert [t["id"] for t in by_email["data"]] == ["tsk_" + t.hex for t in reversed(mine)]
    by_user = await client.get(f"/admin/api/tasks?q=usr_{user_id.hex}&status=active", headers=AUTH)
    assert len(by_user.json()["data"]) == 2
    by_id = await client.get(f"/admin/api/tasks?q=tsk_{mine[0].hex}", headers=AUTH)
    assert [t["id"] for t in by_id.json()["data"]] == ["tsk_" + mine[0].hex]
    assert (await client.get("/admin/api/tasks?status=failed", headers=AUTH)).json()["data"] == []
    bad = await client.get("/admin/api/tasks?status=nope", headers=AUTH)
    assert bad.status_code == 422 and "json" not in bad.text.lower()

    target = "tsk_" + mine[0].hex
    r = await client.post(f"/admin/api/tasks/{target}/cancel", headers=AUTH)
    assert r.status_code == 200 and r.json() == {
        "id": target,
        "status": "canceled",
        "refunded": True,
    }
    again = await client.post(f"/admin/api/tasks/{target}/cancel", headers=AUTH)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_terminal"

    shown = (await client.get(f"/admin/api/tasks/{target}", headers=AUTH)).json()
    assert shown["owner"]["email"] == "finder@example.test"
    assert [(r["kind"], r["amount"]) for r in shown["ledger"]] == [("charge", -1), ("refund", 1)]
    assert [(e["to_status"], e["cause"]) for e in shown["events"]] == [("canceled", "operator")]
    assert await conn.fetchval("SELECT balance FROM users WHERE id = $1", user_id) == 4
    missing = await client.get("/admin/api/tasks/tsk_" + "0" * 32, headers=AUTH)
    assert missing.status_code == 404


async def test_retry_registration_now_and_stuck_pending_tasks(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    client, _ = admin
    user_id, _ = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    await queries.schedule_registration_retry(
        conn, task_id=task_id, delay_seconds=600, error="ConnectError: vendor down"
    )
    stuck = (await client.get("/admin/api/overview", headers=AUTH)).json()["stuck"]
    assert [(t["id"], t["reason"], t["last_error"]) for t in stuck] == [
        ("tsk_" + task_id.hex, "retrying", "ConnectError: vendor down")
    ]

    r = await client.post(f"/admin/api/tasks/tsk_{task_id.hex}/retry", headers=AUTH)
    assert r.status_code == 200 and r.json()["retrying"] == "registration"
    due = await conn.fetchval("SELECT next_attempt_at <= now() FROM tasks WHERE id = $1", task_id)
    assert due
    # Due now (or being registered): a second retry could make a second create. Refused.
    r = await client.post(f"/admin/api/tasks/tsk_{task_id.hex}/retry", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_retryable"


async def test_a_paused_vendor_takes_no_calls_from_any_process(
    admin: tuple[httpx.AsyncClient, Runtime], runtime: Runtime, conn: Conn
) -> None:
    client, _ = admin
    r = await client.post(
        "/admin/api/vendors/replicate/pause", json={"reason": "maintenance"}, headers=AUTH
    )
    assert r.status_code == 200 and r.json()["paused"] is True
    # Another process (the `runtime` fixture: own pool, own VendorHealth) sees it at once.
    assert await runtime.health["replicate"].permits() is None
    vendors = (await client.get("/admin/api/overview", headers=AUTH)).json()["vendors"]
    (replicate,) = [v for v in vendors if v["vendor"] == "replicate"]
    assert replicate["paused"] and replicate["paused_reason"] == "maintenance"
    async with runtime.pool.acquire() as c:
        assert "replicate" in await queries.open_circuits(c)  # submit routes around it

    r = await client.post("/admin/api/vendors/replicate/resume", headers=AUTH)
    assert r.status_code == 200 and r.json()["was_paused"] is True
    assert await runtime.health["replicate"].permits() == "closed"
    assert (await client.post("/admin/api/vendors/nope/pause", headers=AUTH)).status_code == 404


async def test_a_paused_vendor_is_routed_around(
    admin: tuple[httpx.AsyncClient, Runtime], settings: Settings, conn: Conn
) -> None:
    client, rt = admin
    from common.settings import FalSettings, VendorRoute

    routed = settings.with_overrides(
        fal=FalSettings(api_key="k"),
        routes={"m": (VendorRoute("replicate", "a/b", 1), VendorRoute("fal", "c/d", 2))},
    )
    fake = type("R", (), {"pool": rt.pool, "settings": routed})()
    assert (await plan(fake, list(routed.routes["m"]))).vendor == "replicate"
    await client.post("/admin/api/vendors/replicate/pause", headers=AUTH)
    chosen = await plan(fake, list(routed.routes["m"]))
    assert chosen.vendor == "fal" and chosen.price == 2


async def test_replay_dead_letters_since_with_a_preview(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    client, _ = admin
    user_id, _ = await make_user(conn, credits=5)
    body = json.dumps({"id": "p1", "status": "failed", "error": "boom", "logs": ""}).encode()
    tasks = [await make_task(conn, user_id) for _ in range(3)]
    rows = [await dead_letter(conn, t, body, f"msg_{uuid.uuid4().hex}") for t in tasks]
    await conn.execute(
        "UPDATE webhook_deliveries SET received_at = now() - interval '2 hours' WHERE id = $1",
        rows[0],
    )
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")

    preview = await client.post(
        "/admin/api/deliveries/replay", json={"since": since, "preview": True}, headers=AUTH
    )
    assert preview.status_code == 200 and preview.json()["count"] == 2
    assert (
        await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'rejected'")
        == 3
    )

    done = await client.post("/admin/api/deliveries/replay", json={"since": since}, headers=AUTH)
    assert done.status_code == 200, done.text
    assert done.json()["replayed"] == 2 and done.json()["outcomes"] == {"applied": 2}
    statuses = {
        t: (await queries.get_task(conn, task_id=t, user_id=None)).status  # type: ignore[union-attr]
        for t in tasks
    }
    assert [statuses[t] for t in tasks] == [
        TaskStatus.PENDING,
        TaskStatus.FAILED,
        TaskStatus.FAILED,
    ]

    bad = await client.post(
        "/admin/api/deliveries/replay", json={"since": "yesterday"}, headers=AUTH
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "since"


async def test_retry_storage_now(admin: tuple[httpx.AsyncClient, Runtime], conn: Conn) -> None:
    from db.transition import transition

    client, _ = admin
    user_id, _ = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.STORING,
        event_key="t:storing",
        cause="test",
        outputs=["http://vendor.invalid/out.png"],
    )
    path = f"/admin/api/tasks/tsk_{task_id.hex}/retry"
    # A worker holds it: left to that worker.
    await conn.execute(
        "UPDATE tasks SET lease_owner = 'w1', lease_expires_at = now() + interval '1 minute'"
        " WHERE id = $1",
        task_id,
    )
    r = await client.post(path, headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_retryable"
    # Its attempt failed and it waits out a backoff: due now.
    await conn.execute(
        "UPDATE tasks SET lease_owner = NULL, lease_expires_at = now() + interval '5 minutes'"
        " WHERE id = $1",
        task_id,
    )
    r = await client.post(path, headers=AUTH)
    assert r.status_code == 200 and r.json()["retrying"] == "storage"
    due = "SELECT lease_expires_at <= now() FROM tasks WHERE id = $1"
    assert await conn.fetchval(due, task_id)
