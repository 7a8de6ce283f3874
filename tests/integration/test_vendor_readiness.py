"""Replicate's webhook secret that could not be fetched at start (issue 15.6): retried in the
background until it works, reported by /readyz and /admin, and a true error on the webhook
meanwhile (503, which Replicate delivers again) instead of "headers are required" until a
restart. Replicate's API is an httpx.MockTransport that fails until the test lets it answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from common.settings import Settings
from lifecycle.runtime import Runtime
from taskhook.app import create_app
from taskhook.runtime import open_runtime
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.factories import make_task, make_user
from tests.integration.test_receiver import hook_url, post_hook, prediction
from vendors.readiness import VendorReadiness
from vendors.replicate import ReplicateSettings

Conn = asyncpg.Connection
ADMIN_KEY = "readiness-admin-" + "a" * 32
RETRY = 0.05


@dataclass
class Replicate:
    """Replicate's secret endpoint: 503 until `up`, then the secret; every call counted."""

    up: bool = False
    calls: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/webhooks/default/secret"
        self.calls += 1
        if not self.up:
            return httpx.Response(503, json={"detail": "Service Unavailable"})
        return httpx.Response(200, json={"key": TEST_WEBHOOK_SECRET})


@dataclass
class Stack:
    client: httpx.AsyncClient
    runtime: Runtime
    vendor: Replicate


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    vendor = Replicate()
    settings = settings.with_overrides(
        vendor_settings={
            "replicate": ReplicateSettings(api_token="r8", api_base="http://replicate.test/v1")
        },
        admin_key=ADMIN_KEY,
        vendor_prepare_retry=RETRY,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(vendor.handle))
    async with open_runtime(settings, http=http) as rt:
        transport = httpx.ASGITransport(app=create_app(settings, runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield Stack(c, rt, vendor)
    await http.aclose()


async def test_the_secret_is_fetched_again_until_it_works(stack: Stack, conn: Conn) -> None:
    client, rt = stack.client, stack.runtime
    user_id, _ = await make_user(conn, credits=1)
    task: uuid.UUID = await make_task(conn, user_id)

    ready = await client.get("/readyz")
    assert ready.status_code == 200  # clients are still served...
    assert ready.json() == {"status": "degraded", "vendors": {"replicate": {"ready": False}}}
    overview = await client.get(
        "/admin/api/overview", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    (replicate,) = overview.json()["vendors"]
    assert replicate["ready"] is False and "503" in replicate["prepare_error"]

    # ... but no Replicate webhook can be verified: an honest 503, nothing stored.
    r = await post_hook(client, hook_url(rt, task), prediction())
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["error"]["code"] == "verification_unavailable"
    assert "not been fetched yet" in r.json()["error"]["message"]
    assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0

    stack.vendor.up = True
    deadline = time.monotonic() + 10
    while (await client.get("/readyz")).json()["status"] != "ready":
        assert time.monotonic() < deadline, "the background retry never fetched the secret"
        await asyncio.sleep(RETRY)
    r = await post_hook(client, hook_url(rt, task), prediction())
    assert r.json() == {"status": "applied"}
    calls = stack.vendor.calls
    await asyncio.sleep(RETRY * 4)
    assert stack.vendor.calls == calls  # ready: no more fetching


class Flaky:
    """An adapter whose prepare() fails until told otherwise; calls counted."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0
        self.fail = True

    async def prepare(self) -> None:
        from common.errors import VendorUnavailable

        self.calls += 1
        if self.fail:
            raise VendorUnavailable("down")


async def test_a_flood_of_webhooks_asks_the_vendor_once_per_interval() -> None:
    now = [1000.0]
    adapter = Flaky()
    readiness = VendorReadiness(adapter, min_interval=5.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await readiness.attempt() is False and adapter.calls == 1
    # 50 deliveries within the interval: the vendor is not asked again.
    assert not any(await asyncio.gather(*(readiness.attempt() for _ in range(50))))
    assert adapter.calls == 1
    now[0] += 5.0
    adapter.fail = False
    assert await readiness.attempt() is True and adapter.calls == 2
    assert readiness.error is None and readiness.attempts == 2
