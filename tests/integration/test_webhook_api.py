"""Webhooks out over HTTP: submit with a webhook (checked before charging), the signing
secret and its rotation, and the attempts a client can read (issue 18)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from common.ids import parse_task_id
from common.settings import Settings
from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from taskhook.runtime import open_runtime
from tests.factories import make_user

Conn = asyncpg.Connection
BODY = {"model": "black-forest-labs/flux-schnell", "input": {"prompt": "a red fox"}}
HOOK = "https://hooks.example.com/taskhook"


@pytest.fixture
def quiet_registration(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """About the API: the vendor call after the 202 is not made."""
    monkeypatch.setattr(runtime, "spawn", lambda coro: coro.close())


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API as production runs it: private webhook addresses refused."""
    from taskhook.app import create_app

    strict = replace(settings, allow_private_urls=False)
    async with open_runtime(strict, pool_size=4) as rt:
        rt.spawn = lambda coro: coro.close()  # type: ignore[method-assign]
        app = create_app(strict, runtime=rt)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as c:
            yield c


async def user(conn: Conn, credits: int = 5) -> tuple[Any, dict[str, str]]:
    user_id, key = await make_user(conn, credits=credits)
    return user_id, {"Authorization": f"Bearer {key}"}


async def test_submit_with_a_webhook(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: None
) -> None:
    _, auth = await user(conn)
    r = await client.post("/v1/tasks", json={**BODY, "webhook": HOOK}, headers=auth)
    assert r.status_code == 202, r.text
    assert "webhook" not in r.json()  # the task object is the same as ever
    row = await conn.fetchrow(
        "SELECT webhook_url, webhook_events FROM tasks WHERE id = $1", parse_task_id(r.json()["id"])
    )
    assert row is not None and (row["webhook_url"], row["webhook_events"]) == (HOOK, ["completed"])
    filtered = {**BODY, "webhook": HOOK, "webhook_events_filter": ["completed", "start"]}
    r = await client.post("/v1/tasks", json=filtered, headers=auth)
    assert r.status_code == 202, r.text
    events = await conn.fetchval(
        "SELECT webhook_events FROM tasks WHERE id = $1", parse_task_id(r.json()["id"])
    )
    assert events == ["start", "completed"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"webhook": "http://hooks.example.com/x"}, "webhook"),  # not https
        ({"webhook": "https://127.0.0.1/x"}, "webhook"),
        ({"webhook": "https://10.1.2.3/x"}, "webhook"),
        ({"webhook": "https://[::ffff:127.0.0.1]/x"}, "webhook"),
        ({"webhook": "https://localhost:8443/x"}, "webhook"),
        ({"webhook": "https://metadata.google.internal/x"}, "webhook"),
        ({"webhook": "https://user:pw@hooks.example.com/x"}, "webhook"),
        ({"webhook": "ftp://hooks.example.com/x"}, "webhook"),
        ({"webhook": "not a url"}, "webhook"),
        ({"webhook": 42}, "webhook"),
        ({"webhook": "https://x.example.com/" + "a" * 2100}, "webhook"),
        ({"webhook": HOOK, "webhook_events_filter": ["done"]}, "webhook_events_filter"),
        ({"webhook": HOOK, "webhook_events_filter": []}, "webhook_events_filter"),
        ({"webhook": HOOK, "webhook_events_filter": "completed"}, "webhook_events_filter"),
        ({"webhook_events_filter": ["completed"]}, "webhook_events_filter"),
    ],
)
async def test_bad_webhooks_are_refused_before_charging(
    guarded: httpx.AsyncClient, conn: Conn, fields: dict[str, Any], field: str
) -> None:
    user_id, auth = await user(conn, credits=1)
    r = await guarded.post("/v1/tasks", json={**BODY, **fields}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert [d["field"] for d in r.json()["error"]["details"]] == [field]
    assert await conn.fetchval("SELECT balance FROM users WHERE id = $1", user_id) == 1
    assert await conn.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_public_https_webhook_passes_the_guard(
    guarded: httpx.AsyncClient, conn: Conn
) -> None:
    _, auth = await user(conn)
    r = await guarded.post("/v1/tasks", json={**BODY, "webhook": HOOK}, headers=auth)
    assert r.status_code == 202, r.text


async def test_the_same_idempotency_key_with_another_webhook_is_a_conflict(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: None
) -> None:
    _, auth = await user(conn)
    headers = {**auth, "Idempotency-Key": "k1"}
    first = await client.post("/v1/tasks", json={**BODY, "webhook": HOOK}, headers=headers)
    again = await client.post("/v1/tasks", json={**BODY, "webhook": HOOK}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    other = await client.post(
        "/v1/tasks", json={**BODY, "webhook": HOOK + "/other"}, headers=headers
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


async def test_the_secret_and_its_rotation(client: httpx.AsyncClient, conn: Conn) -> None:
    user_id, auth = await user(conn)
    first = (await client.get("/v1/webhooks/secret", headers=auth)).json()["key"]
    assert first.startswith("whsec_")
    assert (await client.get("/v1/webhooks/secret", headers=auth)).json()["key"] == first
    r = await client.post("/v1/webhooks/secret/rotate", headers=auth)
    assert r.status_code == 200
    second = r.json()["key"]
    assert second != first
    assert (await client.get("/v1/webhooks/secret", headers=auth)).json()["key"] == second
    live = await conn.fetch(
        "SELECT expires_at IS NULL AS current, expires_at > now() + interval '23 hours' AS grace"
        " FROM webhook_secrets WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    assert [(r["current"], r["grace"]) for r in live] == [(False, True), (True, None)]
    _, other = await user(conn)
    assert (await client.get("/v1/webhooks/secret", headers=other)).json()["key"] != second
    assert (await client.get("/v1/webhooks/secret")).status_code == 401


async def test_webhook_attempts_of_a_task(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: None
) -> None:
    _, auth = await user(conn)
    r = await client.post("/v1/tasks", json={**BODY, "webhook": HOOK}, headers=auth)
    public_id = r.json()["id"]
    r = await client.get(f"/v1/tasks/{public_id}/webhook_attempts", headers=auth)
    assert r.status_code == 200 and r.json() == {"task_id": public_id, "events": []}
    task_id = parse_task_id(public_id)
    assert task_id is not None
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.FAILED,
        event_key="f",
        cause="test",
        error={"code": "vendor_failed"},
    )
    (event,) = (await client.get(f"/v1/tasks/{public_id}/webhook_attempts", headers=auth)).json()[
        "events"
    ]
    assert event["event"] == "completed" and event["task_status"] == "failed"
    assert event["state"] == "pending" and event["attempts"] == [] and event["url"] == HOOK
    _, other = await user(conn)
    r = await client.get(f"/v1/tasks/{public_id}/webhook_attempts", headers=other)
    assert r.status_code == 404
    r = await client.get("/v1/tasks/tsk_nope/webhook_attempts", headers=auth)
    assert r.status_code == 404


async def test_outbox_depth_on_metrics(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: None
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async def gauges() -> dict[str, float]:
        text = (await client.get("/metrics")).text
        return {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name.startswith("taskhook_queue_webhook")
        }

    assert await gauges() == {
        "taskhook_queue_webhook_events": 0.0,
        "taskhook_queue_webhook_oldest_seconds": 0.0,
    }
    _, auth = await user(conn)
    for _ in range(2):
        r = await client.post("/v1/tasks", json={**BODY, "webhook": HOOK}, headers=auth)
        task_id = parse_task_id(r.json()["id"])
        assert task_id is not None
        await transition(conn, task_id=task_id, to=TaskStatus.CANCELED, event_key="c", cause="test")
    await conn.execute("UPDATE webhook_outbox SET created_at = now() - interval '30 seconds'")
    found = await gauges()
    assert found["taskhook_queue_webhook_events"] == 2.0
    assert found["taskhook_queue_webhook_oldest_seconds"] >= 30
