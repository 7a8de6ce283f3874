"""Routing and failover: one model, several vendors, each with its price; never two jobs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from common.errors import VendorUnavailable
from common.ids import parse_task_id
from common.settings import VendorRoute
from common.states import TaskStatus
from db import queries
from lifecycle.replay import replay_delivery
from lifecycle.runtime import Runtime
from tests.acceptance.stack import wait_for
from tests.factories import make_user
from tests.scripted_vendor import ScriptedVendor, app_client, install, update

Conn = asyncpg.Connection
ROUTES = {
    "flux-schnell": (
        VendorRoute("replicate", "black-forest-labs/flux-schnell", 1),
        VendorRoute("fal", "fal-ai/flux/schnell", 3),
    )
}


@pytest.fixture
def vendors(runtime: Runtime) -> tuple[ScriptedVendor, ScriptedVendor]:
    first, second = ScriptedVendor("replicate"), ScriptedVendor("fal")
    install(runtime, first, second)
    runtime.settings = runtime.settings.with_overrides(routes=ROUTES)
    return first, second


@pytest.fixture
async def api(runtime: Runtime, vendors: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(runtime) as c:
        yield c


async def submit(api: httpx.AsyncClient, conn: Conn, body: dict[str, Any]) -> dict[str, Any]:
    _, key = await make_user(conn, credits=10)
    r = await api.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    task: dict[str, Any] = r.json()
    return task


async def stored(runtime: Runtime, public_id: str) -> Any:
    await runtime.drain()
    task_id = parse_task_id(public_id)
    assert task_id is not None
    async with runtime.pool.acquire() as conn:
        return await queries.get_task(conn, task_id=task_id, user_id=None)


async def open_circuit(conn: Conn, vendor: str) -> None:
    await conn.execute(
        "INSERT INTO vendor_state (vendor, tokens, circuit, open_until)"
        " VALUES ($1, 10, 'open', now() + interval '1 minute')"
        " ON CONFLICT (vendor) DO UPDATE SET circuit = 'open', open_until = EXCLUDED.open_until",
        vendor,
    )


BODY = {"model": "flux-schnell", "input": {"prompt": "a fox"}}


async def test_submit_takes_the_first_route_at_its_price(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, second = vendors
    task = await submit(api, conn, BODY)
    assert (task["vendor"], task["model"], task["cost"]) == ("replicate", "flux-schnell", 1)
    row = await stored(runtime, task["id"])
    assert row.status is TaskStatus.SUBMITTED
    assert first.called("submit")[0]["model"] == "black-forest-labs/flux-schnell"
    assert second.calls == []
    assert row.fallbacks == [{"vendor": "fal", "model": "fal-ai/flux/schnell"}]


async def test_an_open_circuit_routes_submit_to_the_next_vendor_and_its_price(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, second = vendors
    await open_circuit(conn, "replicate")
    task = await submit(api, conn, BODY)
    assert (task["vendor"], task["cost"]) == ("fal", 3)
    await stored(runtime, task["id"])
    assert first.calls == []
    assert second.called("submit")[0]["model"] == "fal-ai/flux/schnell"


async def test_a_create_that_certainly_failed_fails_over_once(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, second = vendors
    first.on_submit.append(VendorUnavailable("connection refused", not_accepted=True))
    task = await submit(api, conn, BODY)
    row = await stored(runtime, task["id"])
    assert (row.vendor, row.vendor_model, row.status) == (
        "fal",
        "fal-ai/flux/schnell",
        TaskStatus.SUBMITTED,
    )
    assert row.cost == 1, "the client pays what it was quoted"
    assert len(first.called("submit")) == 1 and len(second.called("submit")) == 1
    # The callback URL names the vendor that holds the job.
    assert "/hooks/fal/" in second.called("submit")[0]["callback_url"]
    events = await conn.fetch(
        "SELECT event_key, cause FROM task_events WHERE task_id = $1 AND cause = 'failover'",
        row.id,
    )
    assert [e["event_key"] for e in events] == ["reroute:replicate->fal"]


async def test_an_ambiguous_failure_retries_the_same_vendor_and_never_registers_twice(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, second = vendors
    first.on_submit.append(VendorUnavailable("Replicate answered 502"))  # may have made a job
    task = await submit(api, conn, BODY)
    row = await stored(runtime, task["id"])
    assert (row.vendor, row.status) == ("replicate", TaskStatus.PENDING)
    assert row.next_attempt_at is not None and row.last_error == "Replicate answered 502"
    assert second.calls == []


async def test_when_every_route_is_exhausted_the_task_waits_at_its_last_vendor(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, second = vendors
    first.on_submit.append(VendorUnavailable("refused", not_accepted=True))
    second.on_submit.append(VendorUnavailable("refused", not_accepted=True))
    task = await submit(api, conn, BODY)
    row = await stored(runtime, task["id"])
    assert (row.vendor, row.status, row.fallbacks) == ("fal", TaskStatus.PENDING, [])
    assert len(first.called("submit")) == 1 and len(second.called("submit")) == 1


async def test_a_pinned_vendor_has_no_fallbacks(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, second = vendors
    second.on_submit.append(VendorUnavailable("refused", not_accepted=True))
    task = await submit(api, conn, {**BODY, "vendor": "fal"})
    assert (task["vendor"], task["cost"]) == ("fal", 3)
    row = await stored(runtime, task["id"])
    assert (row.vendor, row.status, row.fallbacks) == ("fal", TaskStatus.PENDING, [])
    assert first.calls == []


async def test_two_workers_cannot_both_move_a_task(
    conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    user_id, _ = await make_user(conn)
    async with conn.transaction():
        _, task_id = await queries.create_task(
            conn,
            task_id=uuid.uuid4(),
            user_id=user_id,
            vendor="replicate",
            model="flux-schnell",
            input={"prompt": "x"},
            cost=1,
            idempotency_key=None,
            request_hash=None,
            trace_id="t",
            deadline_seconds=60,
            registration_lease_seconds=30,
            fallbacks=[{"vendor": "fal", "model": "fal-ai/flux/schnell"}],
        )
    assert task_id is not None
    moves = [
        await queries.reroute_task(
            conn, task_id=task_id, from_vendor="replicate", delay_seconds=0, error="x"
        )
        for _ in range(2)
    ]
    assert moves == ["fal", None]


async def test_a_callback_from_the_vendor_a_task_left_is_a_dead_letter_and_its_job_is_stopped(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, _ = vendors
    first.on_submit.append(VendorUnavailable("refused", not_accepted=True))
    task = await submit(api, conn, BODY)
    row = await stored(runtime, task["id"])
    assert row.vendor == "fal"
    # A job at replicate exists after all (say the refusal was a lie) and calls back.
    stray_url = runtime.callback_url(task_id=row.id, vendor="replicate")
    r = await api.post(
        stray_url.removeprefix(runtime.public_url),
        content=b'{"id": "ghost-job", "status": "storing"}',
        headers={"x-delivery-id": "stray-1"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payload"
    await runtime.drain()
    assert first.called("cancel") == [{"job": "ghost-job"}]
    after = await stored(runtime, task["id"])
    assert (after.vendor, after.status) == ("fal", TaskStatus.SUBMITTED)
    dead = await conn.fetchval(
        "SELECT error FROM webhook_deliveries WHERE delivery_id = 'stray-1' AND status = 'rejected'"
    )
    assert "served by fal" in dead


async def test_an_unsigned_callback_is_only_a_hint_confirmed_by_the_vendor(
    conn: Conn, runtime: Runtime
) -> None:
    vendor = ScriptedVendor("midjourney", signed_callbacks=False)
    install(runtime, vendor)
    async with app_client(runtime) as api:
        task = await submit(api, conn, {**BODY, "vendor": "midjourney"})
        row = await stored(runtime, task["id"])
        job = row.vendor_task_id
        # The callback claims success; the vendor's API says it is still at work.
        vendor.on_fetch.append(update(job, TaskStatus.PROCESSING, progress=40))
        path = runtime.callback_url(task_id=row.id, vendor="midjourney")
        body = f'{{"id": "{job}", "status": "storing"}}'.encode()
        r = await api.post(path.removeprefix(runtime.public_url), content=body)
        assert r.status_code == 200 and r.json() == {"status": "confirming"}
        again = await api.post(path.removeprefix(runtime.public_url), content=body)
        assert again.json() == {"status": "duplicate"}
        after = await stored(runtime, task["id"])
    assert (after.status, after.progress) == (TaskStatus.PROCESSING, 40)
    assert vendor.called("fetch") == [{"job": job, "model": "flux-schnell"}]


async def test_a_failover_in_flight_keeps_workers_off_the_task(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    """Regression: the reroute made the task due at once, so a worker registered it at the
    new vendor in parallel with the process doing the failover (two jobs at fal, seen e2e)."""
    first, second = vendors
    first.on_submit.append(VendorUnavailable("refused", not_accepted=True))
    second.gate = asyncio.Event()
    task = await submit(api, conn, BODY)

    async def at_second_vendor() -> bool:
        return bool(second.called("submit"))

    await wait_for(at_second_vendor, timeout=10, what="the failover's call to fal")
    claimed = await queries.claim_pending_registrations(conn, limit=10, lease_seconds=30)
    second.gate.set()
    row = await stored(runtime, task["id"])
    assert claimed == [], "a worker could claim a task whose registration is in flight"
    assert (row.vendor, row.status) == ("fal", TaskStatus.SUBMITTED)
    assert len(second.called("submit")) == 1


async def test_replaying_a_stray_callback_is_still_refused(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    first, _ = vendors
    first.on_submit.append(VendorUnavailable("refused", not_accepted=True))
    task = await submit(api, conn, BODY)
    row = await stored(runtime, task["id"])
    stray_url = runtime.callback_url(task_id=row.id, vendor="replicate")
    await api.post(
        stray_url.removeprefix(runtime.public_url),
        content=b'{"id": "ghost-job", "status": "storing"}',
        headers={"x-delivery-id": "stray-2"},
    )
    dead = await conn.fetchval("SELECT id FROM webhook_deliveries WHERE delivery_id = 'stray-2'")
    result = await replay_delivery(runtime, dead)
    assert (result.status, result.message) == ("rejected", "the task is served by fal now")
    assert (await stored(runtime, task["id"])).status is TaskStatus.SUBMITTED


async def test_replaying_an_unsigned_dead_letter_asks_the_vendor(
    conn: Conn, runtime: Runtime
) -> None:
    vendor = ScriptedVendor("midjourney", signed_callbacks=False)
    install(runtime, vendor)
    async with app_client(runtime) as api:
        task = await submit(api, conn, {**BODY, "vendor": "midjourney"})
    row = await stored(runtime, task["id"])
    dead = await queries.record_delivery(
        conn,
        vendor="midjourney",
        delivery_id="mj:old",
        task_id=row.id,
        status="rejected",
        outcome=None,
        error="could not be read then",
        headers={},
        body=f'{{"id": "{row.vendor_task_id}", "status": "storing"}}'.encode(),
    )
    assert dead is not None
    result = await replay_delivery(runtime, dead)
    assert result.status == "applied" and "asked the vendor" in result.message
    assert vendor.called("fetch") == [{"job": row.vendor_task_id, "model": "flux-schnell"}]
    # The body claimed success; the vendor's API (scripted default: processing) decides.
    assert (await stored(runtime, task["id"])).status is TaskStatus.PROCESSING


async def test_registrations_beyond_the_slots_wait_without_counting_against_the_vendor(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendors: Any
) -> None:
    """Regression (bench/submit_throughput.py): every submit spawned its vendor call at once;
    hundreds queued for a connection inside their timeout, timed out without being sent, and
    those 'failures' opened the vendor's circuit."""
    first, _ = vendors
    first.gate = asyncio.Event()
    runtime.registration_slots = asyncio.Semaphore(2)
    runtime.settings = runtime.settings.with_overrides(registration_timeout=0.5)
    ids = [(await submit(api, conn, BODY))["id"] for _ in range(4)]
    await runtime.drain()  # the gate never opens: every call times out at the vendor
    rows = [await stored(runtime, i) for i in ids]
    assert first.max_in_flight == 2, "no more calls in flight than slots"
    assert len(first.called("submit")) == 4, "the waiting ones were sent once a slot freed"
    assert {r.status for r in rows} == {TaskStatus.PENDING}


async def test_replaying_a_signed_hint_without_its_result_asks_the_vendor(
    conn: Conn, runtime: Runtime
) -> None:
    """fal's payload_error webhook (issue 16.4), kept as a dead letter before taskhook read it
    as a hint: replayed, it asks the vendor instead of storing a result it does not carry."""
    vendor = ScriptedVendor("fal")
    install(runtime, vendor)
    async with app_client(runtime) as api:
        task = await submit(api, conn, {**BODY, "vendor": "fal"})
    row = await stored(runtime, task["id"])
    dead = await queries.record_delivery(
        conn,
        vendor="fal",
        delivery_id="fal:old",
        task_id=row.id,
        status="rejected",
        outcome=None,
        error="webhook carries no payload",
        headers={},
        body=f'{{"id": "{row.vendor_task_id}", "status": "storing", "confirm": true}}'.encode(),
    )
    assert dead is not None
    result = await replay_delivery(runtime, dead)
    assert result.status == "applied" and "asked the vendor" in result.message
    assert [c["job"] for c in vendor.called("fetch")] == [row.vendor_task_id]
    assert (await stored(runtime, task["id"])).status is TaskStatus.PROCESSING
