"""Follow-up actions: a child task with its own charge, on a parent the vendor has finished."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from common.errors import VendorParentNotReady
from common.ids import parse_task_id
from common.states import TaskStatus
from db import queries
from db.models import Task
from db.transition import transition
from lifecycle.runtime import Runtime
from tests.factories import make_user
from tests.scripted_vendor import ScriptedVendor, app_client, install, update

Conn = asyncpg.Connection


@pytest.fixture
def mj(runtime: Runtime) -> ScriptedVendor:
    vendor = ScriptedVendor(
        "midjourney", signed_callbacks=False, actions=frozenset({"upscale", "variation", "reroll"})
    )
    install(runtime, vendor, ScriptedVendor("replicate"))
    return vendor


@pytest.fixture
async def api(runtime: Runtime, mj: ScriptedVendor) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(runtime) as c:
        _, key = await make_user_in(runtime)
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


async def make_user_in(runtime: Runtime) -> Any:
    async with runtime.pool.acquire() as conn:
        return await make_user(conn, credits=10)


async def load(runtime: Runtime, public_id: str) -> Task:
    await runtime.drain()
    task_id = parse_task_id(public_id)
    assert task_id is not None
    async with runtime.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None
    return task


async def parent_at(api: httpx.AsyncClient, runtime: Runtime, status: TaskStatus) -> Task:
    r = await api.post(
        "/v1/tasks", json={"model": "midjourney", "vendor": "midjourney", "input": {"prompt": "x"}}
    )
    assert r.status_code == 202, r.text
    parent = await load(runtime, r.json()["id"])
    assert parent.status is TaskStatus.SUBMITTED
    path = {
        TaskStatus.PROCESSING: [TaskStatus.PROCESSING],
        TaskStatus.COMPLETED: [TaskStatus.STORING, TaskStatus.COMPLETED],
        TaskStatus.FAILED: [TaskStatus.FAILED],
        TaskStatus.SUBMITTED: [],
    }[status]
    async with runtime.pool.acquire() as conn:
        for step in path:
            await transition(conn, task_id=parent.id, to=step, event_key=f"t:{step}", cause="test")
    return await load(runtime, parent.public_id)


async def balance(api: httpx.AsyncClient) -> int:
    credits: int = (await api.get("/v1/me")).json()["credits"]
    return credits


async def test_an_upscale_of_a_completed_task_is_a_charged_child_on_the_parents_job(
    api: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    parent = await parent_at(api, runtime, TaskStatus.COMPLETED)
    before = await balance(api)
    r = await api.post(
        f"/v1/tasks/{parent.public_id}/actions", json={"action": "upscale", "index": 2}
    )
    assert r.status_code == 202, r.text
    child = r.json()
    assert child["parent_id"] == parent.public_id
    assert (child["vendor"], child["input"], child["cost"]) == (
        "midjourney",
        {"action": "upscale", "index": 2},
        parent.cost,
    )
    assert await balance(api) == before - parent.cost
    stored = await load(runtime, child["id"])
    assert stored.status is TaskStatus.SUBMITTED
    assert mj.called("action") == [
        {"parent": parent.vendor_task_id, "action": "upscale", "index": 2}
    ]


async def test_a_parent_finished_at_the_vendor_but_not_here_is_confirmed_not_refused(
    api: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    parent = await parent_at(api, runtime, TaskStatus.PROCESSING)
    assert parent.vendor_task_id is not None
    mj.on_fetch.append(update(parent.vendor_task_id, TaskStatus.STORING))
    r = await api.post(
        f"/v1/tasks/{parent.public_id}/actions", json={"action": "variation", "index": 1}
    )
    assert r.status_code == 202, r.text
    assert mj.called("fetch") == [{"job": parent.vendor_task_id, "model": "midjourney"}]
    assert (await load(runtime, parent.public_id)).status in (
        TaskStatus.STORING,
        TaskStatus.COMPLETED,
    )


async def test_a_parent_still_at_work_at_the_vendor_is_409_not_ready_and_charges_nothing(
    api: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    parent = await parent_at(api, runtime, TaskStatus.PROCESSING)
    before = await balance(api)
    r = await api.post(
        f"/v1/tasks/{parent.public_id}/actions", json={"action": "upscale", "index": 1}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "parent_not_ready"
    assert await balance(api) == before
    assert len(mj.called("fetch")) == 1


async def test_a_failed_parent_is_409_not_succeeded(
    api: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    parent = await parent_at(api, runtime, TaskStatus.FAILED)
    r = await api.post(f"/v1/tasks/{parent.public_id}/actions", json={"action": "reroll"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "parent_not_succeeded"
    assert mj.called("fetch") == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"action": "upscale"}, ["index"]),
        ({"action": "upscale", "index": 5}, ["index"]),
        ({"action": "upscale", "index": True}, ["index"]),
        ({"action": "reroll", "index": 1}, ["index"]),
        ({"action": "zoom", "extra": 1}, ["extra", "action"]),
        ([], [""]),
    ],
)
async def test_bad_action_bodies_are_422_with_every_problem(
    api: httpx.AsyncClient, runtime: Runtime, body: Any, fields: list[str]
) -> None:
    parent = await parent_at(api, runtime, TaskStatus.COMPLETED)
    r = await api.post(f"/v1/tasks/{parent.public_id}/actions", json=body)
    assert r.status_code == 422, r.text
    assert [d["field"] for d in r.json()["error"]["details"]] == fields


async def test_a_vendor_without_actions_is_422_and_an_unknown_parent_404(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    r = await api.post("/v1/tasks", json={"model": "a/b", "input": {"prompt": "x"}})
    task = await load(runtime, r.json()["id"])
    r = await api.post(
        f"/v1/tasks/{task.public_id}/actions", json={"action": "upscale", "index": 1}
    )
    assert r.status_code == 422
    assert "replicate offers no follow-up actions" in r.text
    missing = await api.post("/v1/tasks/tsk_" + "0" * 32 + "/actions", json={"action": "reroll"})
    assert missing.status_code == 404


async def test_the_vendor_refusing_an_unfinished_parent_confirms_it_and_retries(
    api: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor, conn: Conn
) -> None:
    parent = await parent_at(api, runtime, TaskStatus.COMPLETED)
    mj.on_submit.append(VendorParentNotReady("task_status_not_success"))
    r = await api.post(
        f"/v1/tasks/{parent.public_id}/actions", json={"action": "upscale", "index": 1}
    )
    child = await load(runtime, r.json()["id"])
    assert child.status is TaskStatus.PENDING and child.next_attempt_at is not None
    assert child.last_error == "task_status_not_success"
