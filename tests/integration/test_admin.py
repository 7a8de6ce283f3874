"""The operator dashboard's JSON API: the admin key, the overview and dead-letter replay."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from common.ids import format_task_id
from common.settings import Settings
from common.states import TaskStatus
from db import queries
from db.transition import transition
from lifecycle.runtime import Runtime
from tests.factories import make_task, make_user

Conn = asyncpg.Connection
ADMIN_KEY = "admin-key-for-tests"
STATES = ["pending", "submitted", "processing", "storing", "completed", "failed", "canceled"]


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    from taskhook.app import create_app
    from taskhook.runtime import open_runtime

    settings = settings.with_overrides(admin_key=ADMIN_KEY)
    async with open_runtime(settings, pool_size=4) as rt:
        app = create_app(settings, runtime=rt)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c, rt


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def dead_letter(conn: queries.Conn, task_id: uuid.UUID, body: bytes, delivery_id: str) -> int:
    row_id = await queries.record_delivery(
        conn,
        vendor="replicate",
        delivery_id=delivery_id,
        task_id=task_id,
        status="rejected",
        outcome=None,
        error="could not parse",
        headers={},
        body=body,
    )
    assert row_id is not None
    return row_id


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(""),
        {"Authorization": ADMIN_KEY},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        bearer(ADMIN_KEY + "x"),
    ],
    ids=["missing", "wrong", "empty", "no-scheme", "basic", "longer"],
)
async def test_admin_api_needs_the_admin_key(
    admin: tuple[httpx.AsyncClient, Runtime], headers: dict[str, str]
) -> None:
    client, _ = admin
    for method, path in [
        ("GET", "/admin/api/overview"),
        ("POST", "/admin/api/deliveries/1/replay"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"


async def test_user_api_key_is_not_an_admin_key(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    client, _ = admin
    _, user_key = await make_user(conn, credits=1)
    response = await client.get("/admin/api/overview", headers=bearer(user_key))
    assert response.status_code == 401


async def test_pages_are_served_with_their_hooks(admin: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = admin
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for hook in ("api-key", "sign-in", "prompt", "model", "submit", "error"):
        assert f'data-testid="{hook}"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    dashboard = await client.get("/admin")  # the page itself asks for the key
    assert dashboard.status_code == 200
    for hook in ("admin-key", "sign-in", "error"):
        assert f'data-testid="{hook}"' in dashboard.text
    for asset in ("app.js", "admin.js", "common.js", "style.css"):
        response = await client.get(f"/assets/{asset}")
        assert response.status_code == 200, asset
        assert response.headers["x-content-type-options"] == "nosniff"
    assert (await client.get("/assets/../admin.sql")).status_code == 404


async def test_overview_reports_states_stuck_tasks_vendors_refunds_and_credits(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    client, rt = admin
    user_id, _ = await make_user(conn, credits=10, email="ops@example.test")
    fresh = await make_task(conn, user_id)
    overdue = await make_task(conn, user_id, deadline_seconds=-60)
    silent = await make_task(conn, user_id)
    await conn.execute(
        "UPDATE tasks SET updated_at = now() - interval '2 hours' WHERE id = $1", silent
    )
    failed = await make_task(conn, user_id)
    await transition(
        conn,
        task_id=failed,
        to=TaskStatus.FAILED,
        event_key="test:fail",
        cause="test",
        error={"code": "vendor_failed", "message": "boom"},
    )
    processing = await make_task(conn, user_id)
    await transition(
        conn, task_id=processing, to=TaskStatus.PROCESSING, event_key="test:p", cause="test"
    )
    rejected = await dead_letter(conn, fresh, b"not json", "msg_dead")
    await queries.record_delivery(
        conn,
        vendor="replicate",
        delivery_id="msg_fine",
        task_id=fresh,
        status="accepted",
        outcome="applied",
        error=None,
        headers={},
        body=b"{}",
    )
    # A vendor with a row but no adapter here, its circuit opened by one failure.
    await queries.ensure_vendor(conn, vendor="fal", burst=10)
    await queries.record_vendor_result(
        conn, vendor="fal", ok=False, threshold=1, cooldown=30, retry_after=None
    )

    response = await client.get("/admin/api/overview", headers=bearer(ADMIN_KEY))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()

    assert list(body["counts"]) == STATES
    assert body["counts"] == {
        "pending": 3,
        "submitted": 0,
        "processing": 1,
        "storing": 0,
        "completed": 0,
        "failed": 1,
        "canceled": 0,
    }
    stuck = {t["id"]: t for t in body["stuck"]}
    assert set(stuck) == {format_task_id(overdue), format_task_id(silent)}
    assert stuck[format_task_id(overdue)]["reason"] == "overdue"
    assert stuck[format_task_id(silent)]["reason"] == "silent"
    assert stuck[format_task_id(silent)]["email"] == "ops@example.test"

    assert [d["id"] for d in body["dead_letters"]] == [rejected]
    assert body["dead_letters"][0]["task_id"] == format_task_id(fresh)
    assert body["dead_letters"][0]["delivery_id"] == "msg_dead"

    vendors = {v["vendor"]: v for v in body["vendors"]}
    assert set(vendors) == {"replicate", "fal"}
    assert vendors["replicate"]["circuit"] == "closed"  # configured, no row yet
    assert vendors["replicate"]["configured"] is True
    assert vendors["fal"]["circuit"] == "open"
    assert vendors["fal"]["configured"] is False
    assert vendors["fal"]["failures"] == 1 and vendors["fal"]["open_until"]

    refunds = [
        (r["task_id"], r["amount"], r["error_code"], r["error_detail"]) for r in body["refunds"]
    ]
    # the operator sees the detail its client never does (issue 14.10)
    assert refunds == [(format_task_id(failed), 1, "vendor_failed", "boom")]
    users = {u["email"]: u for u in body["users"]}
    # 10 credits, five charged, one refunded; four tasks still open.
    assert users["ops@example.test"]["balance"] == 6
    assert users["ops@example.test"]["active_tasks"] == 4
    assert set(rt.vendors) == {"replicate"}


async def test_replay_endpoint_applies_a_dead_letter_once(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    client, _ = admin
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    body = json.dumps({"id": "p1", "status": "failed", "error": "boom", "logs": ""}).encode()
    row_id = await dead_letter(conn, task_id, body, "msg_replay")

    first = await client.post(f"/admin/api/deliveries/{row_id}/replay", headers=bearer(ADMIN_KEY))
    assert first.status_code == 200, first.text
    assert first.json()["id"] == row_id
    assert first.json()["status"] == "applied"
    again = await client.post(f"/admin/api/deliveries/{row_id}/replay", headers=bearer(ADMIN_KEY))
    assert again.json()["status"] == "duplicate"

    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status is TaskStatus.FAILED and task.refunded
    overview = (await client.get("/admin/api/overview", headers=bearer(ADMIN_KEY))).json()
    assert overview["dead_letters"] == []
    assert [r["task_id"] for r in overview["refunds"]] == [format_task_id(task_id)]


async def test_replay_of_an_unreadable_or_unknown_delivery(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    client, _ = admin
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    row_id = await dead_letter(conn, task_id, b"still not json", "msg_bad")
    response = await client.post(
        f"/admin/api/deliveries/{row_id}/replay", headers=bearer(ADMIN_KEY)
    )
    assert response.status_code == 200
    assert response.json()["status"] == "rejected"
    overview = (await client.get("/admin/api/overview", headers=bearer(ADMIN_KEY))).json()
    assert [d["id"] for d in overview["dead_letters"]] == [row_id]

    missing = await client.post("/admin/api/deliveries/999999/replay", headers=bearer(ADMIN_KEY))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    huge = await client.post(f"/admin/api/deliveries/{2**70}/replay", headers=bearer(ADMIN_KEY))
    assert huge.status_code == 404
    not_a_number = await client.post("/admin/api/deliveries/abc/replay", headers=bearer(ADMIN_KEY))
    assert not_a_number.status_code == 404


async def test_overview_counts_results_lost_to_retention_and_blocked_creates(
    admin: tuple[httpx.AsyncClient, Runtime], conn: Conn
) -> None:
    """Issue 16.4: results a vendor deleted before we stored them are counted per vendor (ever
    and in the last day); a 429 on creates shows as creates_blocked_until (issue 16.3)."""
    client, _ = admin
    user_id, _ = await make_user(conn, credits=10)
    for vendor, days_ago in (("replicate", 0), ("replicate", 3), ("fal", 0)):
        task_id = await make_task(conn, user_id, vendor=vendor)
        await transition(
            conn,
            task_id=task_id,
            to=TaskStatus.FAILED,
            event_key="test:expired",
            cause="test",
            error={"code": "result_expired", "message": "gone"},
        )
        await conn.execute(
            "UPDATE tasks SET completed_at = now() - make_interval(days => $2) WHERE id = $1",
            task_id,
            days_ago,
        )
    other = await make_task(conn, user_id)
    await transition(
        conn,
        task_id=other,
        to=TaskStatus.FAILED,
        event_key="test:fail",
        cause="test",
        error={"code": "vendor_failed", "message": "boom"},
    )
    await queries.ensure_vendor(conn, vendor="replicate", burst=10)
    await queries.ensure_vendor(conn, vendor="replicate:create", burst=10)
    await queries.record_vendor_result(
        conn, vendor="replicate:create", ok=True, threshold=10, cooldown=30, retry_after=30
    )

    body = (await client.get("/admin/api/overview", headers=bearer(ADMIN_KEY))).json()
    vendors = {v["vendor"]: v for v in body["vendors"]}
    assert set(vendors) == {"replicate", "fal"}, "a create budget's row is no vendor of its own"
    assert (
        vendors["replicate"]["results_expired"],
        vendors["replicate"]["results_expired_last_day"],
    ) == (2, 1)
    assert (vendors["fal"]["results_expired"], vendors["fal"]["results_expired_last_day"]) == (1, 1)
    assert body["results_expired"] == 3
    assert (
        vendors["replicate"]["creates_blocked_until"] and not vendors["replicate"]["blocked_until"]
    )
