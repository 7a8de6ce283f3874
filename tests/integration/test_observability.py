"""Request ids, HTTP metrics by route template, the submit-to-terminal histogram, and who may
read /metrics (issues 15.5, 15.7, 14.10), through the app over ASGI on the real database."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from common.logs import configure_logging
from common.settings import Settings
from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from taskhook.app import create_app
from taskhook.runtime import open_runtime
from tests.factories import make_task, make_user
from tests.integration.test_receiver import hook_url, post_hook, prediction

Conn = asyncpg.Connection
TOKEN = "metrics-token-" + "m" * 32


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def requests_seen(route: str, status: str, method: str = "GET") -> float:
    return sample(
        "taskhook_http_request_duration_seconds_count", method=method, route=route, status=status
    )


async def test_every_answer_carries_a_request_id(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-Id": "trace-1:abc"})
    assert given.headers["x-request-id"] == "trace-1:abc"
    made = await client.get("/healthz")
    insane = await client.get("/healthz", headers={"X-Request-Id": "no spaces\tor tabs"})
    for r in (made, insane):
        assert len(r.headers["x-request-id"]) == 32
        int(r.headers["x-request-id"], 16)
    assert made.headers["x-request-id"] != insane.headers["x-request-id"]
    error = await client.get("/v1/me")  # 401: errors carry it too
    assert error.status_code == 401 and "x-request-id" in error.headers


async def test_requests_are_counted_by_route_template_and_status(
    client: httpx.AsyncClient,
) -> None:
    before = requests_seen("/v1/tasks/{task_id}", "401")
    unmatched = requests_seen("unmatched", "404")
    for _ in range(3):
        await client.get(f"/v1/tasks/tsk_{uuid.uuid4().hex}")
    await client.get(f"/no/such/{uuid.uuid4().hex}")
    await client.request("BREW", "/healthz")  # an odd method is one label, not a new one each
    assert requests_seen("/v1/tasks/{task_id}", "401") == before + 3
    assert requests_seen("unmatched", "404") == unmatched + 1
    assert requests_seen("/healthz", "405", method="OTHER") >= 1
    text = (await client.get("/metrics")).text
    assert "tsk_" not in text  # no id ever becomes a label


async def test_an_unhandled_error_is_a_500_logged_once_with_its_request_id(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(_conn: object) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr("taskhook.app.is_current", broken)
    before = requests_seen("/readyz", "500")
    logs = io.StringIO()
    configure_logging(json=True, file=logs)
    try:
        # ASGITransport re-raises what the app lets out: the answer below proves it did not.
        r = await client.get("/readyz", headers={"X-Request-Id": "req-500"})
    finally:
        configure_logging(json=True)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == "req-500"
    assert requests_seen("/readyz", "500") == before + 1
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    errors = [e for e in lines if e["event"] == "unhandled_error"]
    assert len(errors) == 1 and errors[0]["request_id"] == "req-500"
    assert "boom" in errors[0]["exception"]


async def test_the_time_to_a_terminal_state_is_observed_once_per_task(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn
) -> None:
    user_id, _ = await make_user(conn, credits=5)
    by_webhook, by_transition = await make_task(conn, user_id), await make_task(conn, user_id)
    await conn.execute(
        "UPDATE tasks SET created_at = now() - interval '42 seconds' WHERE id = ANY($1)",
        [by_webhook, by_transition],
    )
    count = "taskhook_task_duration_seconds_count"
    failed_before = sample(count, status="failed")
    canceled_before = sample(count, status="canceled")
    sum_before = sample("taskhook_task_duration_seconds_sum", status="failed")

    failed = prediction(status="failed", error="out of memory")
    r = await post_hook(client, hook_url(runtime, by_webhook), failed)
    assert r.json() == {"status": "applied"}
    r = await post_hook(client, hook_url(runtime, by_webhook), failed)  # a second delivery
    assert r.json() == {"status": "duplicate"}
    await transition(
        conn, task_id=by_transition, to=TaskStatus.CANCELED, event_key="c1", cause="test"
    )
    await transition(
        conn, task_id=by_transition, to=TaskStatus.CANCELED, event_key="c2", cause="test"
    )

    assert sample(count, status="failed") == failed_before + 1
    assert sample(count, status="canceled") == canceled_before + 1
    observed = sample("taskhook_task_duration_seconds_sum", status="failed") - sum_before
    assert 42 <= observed < 60


AppFor = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def app_for(settings: Settings) -> AppFor:
    @asynccontextmanager
    async def make(**changes: object) -> AsyncIterator[httpx.AsyncClient]:
        changed = settings.with_overrides(**changes)
        async with open_runtime(changed, pool_size=2) as rt:
            transport = httpx.ASGITransport(app=create_app(changed, runtime=rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                yield c

    return make


async def metrics_status(
    app_for: AppFor, headers: dict[str, str] | None = None, **changes: object
) -> int:
    async with app_for(**changes) as client:
        return (await client.get("/metrics", headers=headers or {})).status_code


async def test_who_may_read_metrics_on_the_web_port(app_for: AppFor) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert await metrics_status(app_for) == 200  # development, nothing asked: open
    # A listener of its own was asked for: the web port keeps quiet.
    assert await metrics_status(app_for, metrics_port=9100) == 404
    # Production shows nothing to whoever reaches the API...
    assert await metrics_status(app_for, env="production") == 404
    # ... unless a token is set, and then only to its holder.
    assert await metrics_status(app_for, env="production", metrics_token=TOKEN) == 401
    wrong = {"Authorization": "Bearer " + "x" * 46}
    assert await metrics_status(app_for, wrong, env="production", metrics_token=TOKEN) == 401
    assert await metrics_status(app_for, bearer, env="production", metrics_token=TOKEN) == 200
    assert await metrics_status(app_for, bearer, metrics_token=TOKEN, metrics_port=9100) == 200


async def test_the_admin_api_can_be_off(app_for: AppFor) -> None:
    async with app_for(admin_key=None) as client:
        r = await client.get("/admin/api/overview", headers={"Authorization": "Bearer off"})
        assert r.status_code == 404 and "turned off" in r.json()["error"]["message"]
