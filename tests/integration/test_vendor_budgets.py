"""Registrations draw from the vendor's token bucket too, from a create budget of their own
where the vendor limits creates apart (Replicate: 600 a minute, 3,000 other calls), and a 429
on a create blocks creates only (issue 16.3)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from common.errors import VendorUnavailable
from common.ids import parse_task_id
from common.states import TaskStatus
from db import queries
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import Limits, VendorHealth
from taskhook.runtime import vendor_limits
from tests.factories import make_user
from tests.scripted_vendor import ScriptedVendor, app_client, install

Conn = asyncpg.Connection


def test_replicate_gets_its_documented_create_budget(runtime: Runtime) -> None:
    replicate = runtime.vendors["replicate"]
    assert vendor_limits(runtime.settings, replicate).create_rate == 10.0  # 600 a minute
    tuned = runtime.settings.with_overrides(create_rate=25.0)
    assert vendor_limits(tuned, replicate).create_rate == 25.0
    assert vendor_limits(tuned, ScriptedVendor("fal")).create_rate is None  # one bucket


async def test_creates_and_polls_draw_from_separate_budgets(runtime: Runtime) -> None:
    health = VendorHealth(runtime.pool, "replicate", Limits(rate=50, burst=50, create_rate=2))
    assert await health.take(5, budget="create") == 2
    assert await health.take(5, budget="create") == 0, "the create budget is spent"
    assert await health.take(50) == 50, "polls still have their whole budget"


async def test_without_a_create_budget_registrations_share_the_vendors_bucket(
    runtime: Runtime,
) -> None:
    health = VendorHealth(runtime.pool, "fal", Limits(rate=3, burst=3))
    assert await health.take(2, budget="create") == 2
    assert await health.take(5) == 1


async def test_a_429_on_a_create_blocks_creates_not_polls(runtime: Runtime, conn: Conn) -> None:
    health = VendorHealth(runtime.pool, "replicate", Limits(rate=50, burst=50, create_rate=10))
    await health.take(1, budget="create")
    await health.record(VendorUnavailable("429", throttled=True, retry_after=30), budget="create")
    assert await health.take(1, budget="create") == 0
    assert await health.take(1) == 1
    state = await conn.fetchrow(
        "SELECT circuit, failures FROM vendor_state WHERE vendor = 'replicate'"
    )
    assert state is not None
    assert (state["circuit"], state["failures"]) == ("closed", 0)


@pytest.fixture
def vendor(runtime: Runtime) -> ScriptedVendor:
    scripted = ScriptedVendor("replicate")
    install(runtime, scripted)
    runtime.health["replicate"] = VendorHealth(
        runtime.pool, "replicate", Limits(rate=50, burst=50, create_rate=2)
    )
    return scripted


async def submit_many(runtime: Runtime, conn: Conn, n: int) -> list[Any]:
    _, key = await make_user(conn, credits=n)
    ids = []
    async with app_client(runtime) as api:
        for i in range(n):
            r = await api.post(
                "/v1/tasks",
                json={"model": "owner/model", "input": {"prompt": f"fox {i}"}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 202, r.text
            ids.append(parse_task_id(r.json()["id"]))
            await runtime.drain()  # one registration after the other: no race for tokens
    return ids


async def test_registrations_beyond_the_create_budget_wait_without_spending_an_attempt(
    runtime: Runtime, conn: Conn, vendor: ScriptedVendor
) -> None:
    ids = await submit_many(runtime, conn, 5)
    tasks = [await queries.get_task(conn, task_id=i, user_id=None) for i in ids]
    sent = [t for t in tasks if t is not None and t.status is TaskStatus.SUBMITTED]
    waiting = [t for t in tasks if t is not None and t.status is TaskStatus.PENDING]
    assert len(vendor.called("submit")) == len(sent) == 2, "a burst of two, then the rate"
    assert len(waiting) == 3
    assert all(t.attempts == 0 and t.next_attempt_at is not None for t in waiting)
    assert all("rate limit for creates" in (t.last_error or "") for t in waiting)


async def test_the_replicate_adapter_registers_through_its_create_budget(
    runtime: Runtime, conn: Conn
) -> None:
    """The real adapter, its answers mocked: a 429 from a create blocks the next creates."""
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(
            429,
            headers={"ratelimit-remaining": "0", "ratelimit-reset": "20"},
            json={"detail": "Request was throttled. Your rate limit resets in ~20s."},
        )

    from vendors.replicate import ReplicateAdapter

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    adapter = ReplicateAdapter(client, api_token="t", api_base="http://replicate.test/v1")
    runtime.vendors["replicate"] = adapter
    runtime.health["replicate"] = VendorHealth(
        runtime.pool, "replicate", vendor_limits(runtime.settings, adapter)
    )
    try:
        ids = await submit_many(runtime, conn, 3)
    finally:
        await client.aclose()
    assert len(calls) == 1, "the 429 said 20 s: no other create went out meanwhile"
    left = await conn.fetchval(
        "SELECT blocked_until - clock_timestamp() FROM vendor_state"
        " WHERE vendor = 'replicate:create'"
    )
    assert 15 < left.total_seconds() <= 20
    statuses = {
        (await queries.get_task(conn, task_id=i, user_id=None)).status  # type: ignore[union-attr]
        for i in ids
    }
    assert statuses == {TaskStatus.PENDING}
