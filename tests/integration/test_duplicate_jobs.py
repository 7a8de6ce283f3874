"""No vendor has an idempotency key (issue 16.2): a create whose answer never came is looked
up before another is sent, and a job for one of our tasks that is not the one it recorded is
canceled, whoever hears of it first (the registration or a signed callback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from common.errors import VendorUnavailable
from common.ids import parse_task_id
from common.states import TaskStatus
from db import queries
from lifecycle.registration import register
from lifecycle.runtime import Runtime
from tests.acceptance.stack import wait_for
from tests.factories import make_user
from tests.scripted_vendor import ScriptedVendor, app_client, install, update

Conn = asyncpg.Connection
BODY = {"model": "owner/model", "input": {"prompt": "a fox"}}


@pytest.fixture
def vendor(runtime: Runtime) -> ScriptedVendor:
    scripted = ScriptedVendor("replicate", finds_created=True)
    install(runtime, scripted)
    return scripted


@pytest.fixture
async def api(runtime: Runtime, vendor: ScriptedVendor) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(runtime) as c:
        yield c


async def submit(api: httpx.AsyncClient, conn: Conn) -> Any:
    _, key = await make_user(conn, credits=10)
    r = await api.post("/v1/tasks", json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    return parse_task_id(r.json()["id"])


async def stored(runtime: Runtime, task_id: Any) -> Any:
    await runtime.drain()
    async with runtime.pool.acquire() as conn:
        return await queries.get_task(conn, task_id=task_id, user_id=None)


async def ambiguous_task(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendor: ScriptedVendor
) -> Any:
    """A task whose first create got no usable answer (a 502: the job may exist)."""
    vendor.on_submit.append(VendorUnavailable("Replicate answered 502"))
    task_id = await submit(api, conn)
    row = await stored(runtime, task_id)
    assert row.status is TaskStatus.PENDING and row.create_ambiguous_at is not None
    return row


async def test_an_ambiguous_create_that_made_a_job_is_adopted_not_sent_again(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendor: ScriptedVendor
) -> None:
    row = await ambiguous_task(api, conn, runtime, vendor)
    vendor.on_find.append([update("made-by-the-first-create", TaskStatus.PROCESSING)])
    await register(runtime, task_id=row.id, attempt=2)
    after = await stored(runtime, row.id)
    assert (after.status, after.vendor_task_id) == (
        TaskStatus.PROCESSING,
        "made-by-the-first-create",
    )
    assert len(vendor.called("submit")) == 1, "no second create"
    [find] = vendor.called("find")
    assert (find["model"], find["input"], find["since"]) == (
        "owner/model",
        {"prompt": "a fox"},
        row.create_ambiguous_at,
    )


async def test_an_ambiguous_create_known_to_have_made_nothing_is_sent_again(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendor: ScriptedVendor
) -> None:
    row = await ambiguous_task(api, conn, runtime, vendor)
    vendor.on_find.append([])
    await register(runtime, task_id=row.id, attempt=2)
    after = await stored(runtime, row.id)
    assert after.status is TaskStatus.SUBMITTED
    assert len(vendor.called("find")) == 1 and len(vendor.called("submit")) == 2


async def test_while_the_vendor_cannot_tell_nothing_is_sent(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendor: ScriptedVendor
) -> None:
    row = await ambiguous_task(api, conn, runtime, vendor)
    vendor.on_find.append(VendorUnavailable("Replicate answered 503", not_accepted=True))
    await register(runtime, task_id=row.id, attempt=2)
    after = await stored(runtime, row.id)
    assert after.status is TaskStatus.PENDING and after.next_attempt_at is not None
    assert len(vendor.called("submit")) == 1, "no create while it is unknown whether one worked"
    assert after.create_ambiguous_at == row.create_ambiguous_at, "the first one's time is kept"


async def test_a_job_another_task_recorded_is_never_adopted(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendor: ScriptedVendor
) -> None:
    """Two clients may send the same model the same input: the listing matches both jobs."""
    other = await stored(runtime, await submit(api, conn))
    row = await ambiguous_task(api, conn, runtime, vendor)
    vendor.on_find.append([update(other.vendor_task_id, TaskStatus.PROCESSING)])
    await register(runtime, task_id=row.id, attempt=2)
    after = await stored(runtime, row.id)
    assert after.vendor_task_id not in (None, other.vendor_task_id)
    assert len(vendor.called("submit")) == 3


async def test_after_an_ambiguous_create_the_task_never_fails_over(
    conn: Conn, runtime: Runtime
) -> None:
    from common.settings import VendorRoute

    first, second = ScriptedVendor("replicate"), ScriptedVendor("fal")
    install(runtime, first, second)
    routes = {"flux": (VendorRoute("replicate", "a/b", 1), VendorRoute("fal", "c/d", 1))}
    runtime.settings = runtime.settings.with_overrides(routes=routes)
    first.on_submit.append(VendorUnavailable("Replicate answered 504"))
    first.on_submit.append(VendorUnavailable("connection refused", not_accepted=True))
    async with app_client(runtime) as api:
        _, key = await make_user(conn, credits=10)
        r = await api.post(
            "/v1/tasks",
            json={"model": "flux", "input": {"prompt": "x"}},
            headers={"Authorization": f"Bearer {key}"},
        )
        task_id = parse_task_id(r.json()["id"])
        assert task_id is not None
        await stored(runtime, task_id)
        await register(runtime, task_id=task_id, attempt=2)  # refused for sure, this time
    after = await stored(runtime, task_id)
    assert (after.vendor, after.status) == ("replicate", TaskStatus.PENDING)
    assert second.calls == [], "the first create may have made a job: never a second vendor"


async def test_a_signed_callback_of_a_job_that_is_not_the_tasks_gets_it_canceled(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendor: ScriptedVendor
) -> None:
    row = await stored(runtime, await submit(api, conn))
    url = runtime.callback_url(task_id=row.id, vendor="replicate")
    r = await api.post(
        url.removeprefix(runtime.public_url),
        content=b'{"id": "second-job", "status": "processing"}',
        headers={"x-delivery-id": "d-second"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payload"
    await runtime.drain()
    assert vendor.called("cancel") == [{"job": "second-job"}]
    assert (await stored(runtime, row.id)).vendor_task_id == row.vendor_task_id


async def test_an_unsigned_callback_naming_another_job_cancels_nothing(
    conn: Conn, runtime: Runtime
) -> None:
    """Its body proves nothing (anyone with the URL can send one): never act on its job id."""
    vendor = ScriptedVendor("midjourney", signed_callbacks=False)
    install(runtime, vendor)
    async with app_client(runtime) as api:
        _, key = await make_user(conn, credits=10)
        r = await api.post(
            "/v1/tasks",
            json={**BODY, "vendor": "midjourney"},
            headers={"Authorization": f"Bearer {key}"},
        )
        row = await stored(runtime, parse_task_id(r.json()["id"]))
        url = runtime.callback_url(task_id=row.id, vendor="midjourney")
        r = await api.post(
            url.removeprefix(runtime.public_url),
            content=b'{"id": "someone-elses-job", "status": "processing"}',
        )
        assert r.status_code == 400
        await runtime.drain()
    assert vendor.called("cancel") == []


async def test_a_second_job_the_registration_hears_of_after_the_first_is_canceled(
    api: httpx.AsyncClient, conn: Conn, runtime: Runtime, vendor: ScriptedVendor
) -> None:
    """The first create's job called back (and was recorded) while a retried create was still
    waiting for its answer: that answer's job is a duplicate, stopped at once (its own
    webhooks may never come: Replicate does not retry intermediate ones)."""
    vendor.gate = asyncio.Event()
    vendor.on_submit.append(update("second-job", TaskStatus.SUBMITTED))
    task_id = await submit(api, conn)

    async def sent() -> bool:
        return bool(vendor.called("submit"))

    await wait_for(sent, timeout=5, what="the create to be sent")
    url = runtime.callback_url(task_id=task_id, vendor="replicate")
    r = await api.post(
        url.removeprefix(runtime.public_url),
        content=b'{"id": "first-job", "status": "processing"}',
        headers={"x-delivery-id": "d-first"},
    )
    assert r.json() == {"status": "applied"}
    vendor.gate.set()
    after = await stored(runtime, task_id)
    assert (after.status, after.vendor_task_id) == (TaskStatus.PROCESSING, "first-job")
    assert vendor.called("cancel") == [{"job": "second-job"}]
