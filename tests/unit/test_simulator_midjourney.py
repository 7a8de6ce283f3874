"""The midjourney-proxy adapter end to end against the simulator's ``/mj`` routes, in-process.

The adapter talks to the app through ``httpx.ASGITransport``; notify callbacks are captured with
an ``httpx.MockTransport`` and read exactly as the receiver would (verify, then parse). Nothing
sleeps to wait for state: tests wait for the simulator to go idle, with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from common.errors import VendorParentNotReady, VendorRejected, VendorUnavailable
from common.ids import format_task_id
from common.states import TaskStatus
from simulator import SimulatorConfig, create_app
from simulator.lifecycle import RANDOM_FAILURE, REQUESTED_FAILURE, Simulator
from simulator.midjourney import MidjourneyDialect
from vendors.base import VendorUpdate
from vendors.midjourney_proxy import MidjourneyProxyAdapter

BASE = "http://sim.test"
HOOK = "https://receiver.test/hooks/midjourney/tok123"
CHILD_HOOK = "https://receiver.test/hooks/midjourney/tok456"
SECRET = "sim-mj-secret"
MODEL = "midjourney"
WAIT = 5.0
TASK_KEYS = {
    "id",
    "action",
    "prompt",
    "promptEn",
    "description",
    "state",
    "submitTime",
    "startTime",
    "finishTime",
    "imageUrl",
    "status",
    "progress",
    "failReason",
    "properties",
}


@dataclass
class Hook:
    url: str
    headers: httpx.Headers
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    hooks: list[Hook] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.hooks.append(Hook(url=str(request.url), headers=request.headers, body=request.read()))
        self._arrived.set()
        return httpx.Response(200)

    def for_task(self, task_id: str) -> list[Hook]:
        return [hook for hook in self.hooks if hook.json["id"] == task_id]

    async def wait_for_task(self, task_id: str) -> list[Hook]:
        async with asyncio.timeout(WAIT):
            while not self.for_task(task_id):
                self._arrived.clear()
                await self._arrived.wait()
        return self.for_task(task_id)


@dataclass
class Harness:
    app: Starlette
    api: httpx.AsyncClient
    adapter: MidjourneyProxyAdapter
    receiver: Receiver

    @property
    def sim(self) -> Simulator:
        sim: Simulator = self.app.state.simulator
        return sim

    async def submit(
        self, prompt: str = "a red fox", *, task_id: uuid.UUID | None = None
    ) -> VendorUpdate:
        return await self.adapter.submit(
            task_id=task_id or uuid.uuid4(),
            model=MODEL,
            input={"prompt": prompt},
            callback_url=HOOK,
        )

    async def act(
        self,
        parent: str,
        action: str = "upscale",
        index: int = 2,
        *,
        task_id: uuid.UUID | None = None,
    ) -> VendorUpdate:
        return await self.adapter.submit_action(
            task_id=task_id or uuid.uuid4(),
            parent_vendor_task_id=parent,
            action=action,
            index=index,
            callback_url=CHILD_HOOK,
        )

    async def settle(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.sim.wait_idle()

    def receive(self, hook: Hook) -> VendorUpdate:
        """What the receiver does with an unsigned vendor: verify (a no-op), then parse."""
        self.adapter.verify(hook.body, hook.headers, now=time.time())
        return self.adapter.parse(hook.body)


@asynccontextmanager
async def simulator(
    *, secret: str | None = SECRET, adapter_dialect: str = "auto", **overrides: Any
) -> AsyncIterator[Harness]:
    settings: dict[str, Any] = {"job_seconds": 0.05, "steps": 4, "seed": 7, "mj_secret": SECRET}
    settings.update(overrides)
    receiver = Receiver()
    hooks = httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle))
    app = create_app(SimulatorConfig(**settings), webhook_client=hooks)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as api,
    ):
        adapter = MidjourneyProxyAdapter(
            api, api_base=BASE, api_secret=secret, dialect=adapter_dialect
        )
        yield Harness(app=app, api=api, adapter=adapter, receiver=receiver)
    await hooks.aclose()


# -- the happy path -----------------------------------------------------------------------


async def test_success_end_to_end() -> None:
    async with simulator() as h:
        task_id = uuid.uuid4()
        submitted = await h.submit(task_id=task_id)
        assert submitted.status is TaskStatus.SUBMITTED
        job = submitted.vendor_task_id
        assert job.isdigit() and len(job) == 16
        await h.settle()

        hooks = h.receiver.for_task(job)
        assert [hook.json["status"] for hook in hooks] == [
            "SUBMITTED",
            *["IN_PROGRESS"] * 4,
            "SUCCESS",
        ]
        assert [hook.json["progress"] for hook in hooks] == [
            "0%",
            "25%",
            "50%",
            "75%",
            "100%",  # a 100% callback before the SUCCESS one, as the real proxy sends
            "100%",
        ]
        updates = [h.receive(hook) for hook in hooks]
        assert [u.status for u in updates] == [
            TaskStatus.SUBMITTED,
            *[TaskStatus.PROCESSING] * 4,
            TaskStatus.STORING,
        ]
        assert [u.progress for u in updates] == [0, 25, 50, 75, 100, 100]
        image = f"{BASE}/files/{job}/0.png"
        assert updates[-1].outputs == [image]
        for hook in hooks:
            assert hook.url == HOOK
            assert hook.headers["content-type"] == "application/json"
            assert not any(name.startswith("webhook-") for name in hook.headers)
            assert hook.json["state"] == format_task_id(task_id)

        polled = await h.adapter.fetch(job, model=MODEL)
        assert (polled.status, polled.outputs, polled.progress) == (
            TaskStatus.STORING,
            [image],
            100,
        )
        assert h.sim.stats.fetches[job] == 1

        png = await h.api.get(image)
        assert png.status_code == 200
        assert png.content.startswith(b"\x89PNG")


async def test_task_json_looks_like_the_proxy() -> None:
    async with simulator() as h:
        job = (await h.submit("一只猫 --ar 3:2")).vendor_task_id
        await h.settle()
        body = h.receiver.for_task(job)[-1].json
        assert set(body) == TASK_KEYS
        assert (body["action"], body["prompt"], body["description"]) == (
            "IMAGINE",
            "一只猫 --ar 3:2",
            "/imagine 一只猫 --ar 3:2",
        )
        assert body["failReason"] is None
        assert body["submitTime"] <= body["startTime"] <= body["finishTime"]
        assert body["properties"]["notifyHook"] == HOOK


async def test_submit_answer_and_unknown_task_on_the_wire() -> None:
    async with simulator(job_seconds=10) as h:
        auth = {"mj-api-secret": SECRET}
        response = await h.api.post(
            "/mj/submit/imagine", json={"prompt": "x", "notifyHook": HOOK}, headers=auth
        )
        assert response.status_code == 200
        answer = response.json()
        assert (answer["code"], answer["description"], answer["properties"]) == (1, "提交成功", {})
        assert h.sim.get(answer["result"]) is not None

        empty = await h.api.post("/mj/submit/imagine", json={"prompt": " "}, headers=auth)
        assert (empty.status_code, empty.json()["code"]) == (200, 4)

        unknown = await h.api.get("/mj/task/1712205491372000/fetch", headers=auth)
        assert (unknown.status_code, unknown.content) == (200, b"")
        with pytest.raises(VendorRejected, match="1712205491372000"):
            await h.adapter.fetch("1712205491372000", model=MODEL)


def test_ids_are_numeric_and_unique() -> None:
    dialect = MidjourneyDialect()
    ids = [dialect.new_id() for _ in range(500)]
    assert len(set(ids)) == 500
    assert all(i.isdigit() and len(i) == 16 for i in ids)
    assert ids == sorted(ids, key=int)


# -- follow-up actions ----------------------------------------------------------------------


async def test_action_on_an_unfinished_parent_is_not_ready() -> None:
    async with simulator(job_seconds=10) as h:
        parent = (await h.submit()).vendor_task_id
        with pytest.raises(VendorParentNotReady, match=parent):
            await h.act(parent)
        assert h.sim.stats.predictions_created == 1  # nothing was created for the action
        confirmed = await h.adapter.fetch(parent, model=MODEL)  # what the caller does next
        assert confirmed.status is TaskStatus.SUBMITTED


async def test_actions_on_a_finished_parent_are_new_jobs() -> None:
    async with simulator() as h:
        parent = (await h.submit()).vendor_task_id
        await h.settle()
        task_id = uuid.uuid4()
        upscale = await h.act(parent, "upscale", 2, task_id=task_id)
        variation = await h.act(parent, "variation", 4)
        reroll = await h.act(parent, "reroll", 0)
        children = [upscale.vendor_task_id, variation.vendor_task_id, reroll.vendor_task_id]
        assert len({parent, *children}) == 4
        assert all(u.status is TaskStatus.SUBMITTED for u in (upscale, variation, reroll))
        await h.settle()

        finals = [h.receiver.for_task(child)[-1] for child in children]
        assert [(f.json["action"], f.json["description"]) for f in finals] == [
            ("UPSCALE", f"/up {parent} U2"),
            ("VARIATION", f"/up {parent} V4"),
            ("REROLL", f"/up {parent} R"),
        ]
        assert all(f.url == CHILD_HOOK for f in finals)
        assert finals[0].json["state"] == format_task_id(task_id)
        assert finals[0].json["prompt"] == "a red fox"
        for child, final in zip(children, finals, strict=True):
            update = h.receive(final)
            assert (update.status, update.outputs) == (
                TaskStatus.STORING,
                [f"{BASE}/files/{child}/0.png"],
            )

        # An upscaled image is not a grid: the proxy refuses to change it, for good.
        with pytest.raises(VendorRejected) as caught:
            await h.act(upscale.vendor_task_id, "variation", 1)
        assert not isinstance(caught.value, VendorParentNotReady)


async def test_action_on_an_unknown_parent_is_rejected() -> None:
    async with simulator() as h:
        # auto: the adapter asks for the parent first, which the proxy does not know
        with pytest.raises(VendorRejected, match=r"code 3|does not know") as caught:
            await h.act("1712205491372000")
        assert not isinstance(caught.value, VendorParentNotReady)


async def test_the_lagging_proxy_race() -> None:
    """The SUCCESS notify is out, but fetch and change still see the job running (note 003)."""
    async with simulator(mj_lag=3600) as h:
        parent = (await h.submit()).vendor_task_id
        await h.settle()
        notified = h.receive(h.receiver.for_task(parent)[-1])
        assert notified.status is TaskStatus.STORING  # the hint says done ...

        polled = await h.adapter.fetch(parent, model=MODEL)  # ... the proxy does not, yet
        assert (polled.status, polled.progress, polled.outputs) == (
            TaskStatus.PROCESSING,
            100,
            None,
        )
        with pytest.raises(VendorParentNotReady):
            await h.act(parent)

        prediction = h.sim.get(parent)
        assert prediction is not None and prediction.completed_ts is not None
        prediction.completed_ts -= 3600  # the lag has passed, without sleeping through it
        assert (await h.adapter.fetch(parent, model=MODEL)).status is TaskStatus.STORING
        child = await h.act(parent)
        assert child.status is TaskStatus.SUBMITTED


# -- failures ---------------------------------------------------------------------------------


async def test_requested_failure_by_notify_and_by_fetch() -> None:
    async with simulator() as h:
        job = (await h.submit("please fail-me")).vendor_task_id
        await h.settle()
        final = h.receiver.for_task(job)[-1]
        assert (final.json["status"], final.json["failReason"]) == ("FAILURE", REQUESTED_FAILURE)
        assert final.json["imageUrl"] is None
        update = h.receive(final)
        assert (update.status, update.error) == (TaskStatus.FAILED, REQUESTED_FAILURE)
        polled = await h.adapter.fetch(job, model=MODEL)
        assert (polled.status, polled.error) == (TaskStatus.FAILED, REQUESTED_FAILURE)
        # The proxy gives the same answer for a failed parent; fetching it tells the two apart.
        with pytest.raises(VendorParentNotReady):
            await h.act(job)


async def test_random_failure() -> None:
    async with simulator(fail=1.0) as h:
        job = (await h.submit()).vendor_task_id
        await h.settle()
        update = h.receive(h.receiver.for_task(job)[-1])
        assert (update.status, update.error) == (TaskStatus.FAILED, RANDOM_FAILURE)


async def test_banned_prompt_is_rejected() -> None:
    async with simulator() as h:
        with pytest.raises(VendorRejected, match="reject-me"):
            await h.submit("reject-me please")
        assert h.sim.stats.predictions_created == 0


# -- auth and faults ------------------------------------------------------------------------


async def test_wrong_secret_is_refused() -> None:
    async with simulator(secret="wrong") as h:
        with pytest.raises(VendorUnavailable, match="403"):
            await h.submit()
        bare = await h.api.post("/mj/submit/imagine", json={"prompt": "x"})
        assert (bare.status_code, bare.content) == (403, b"")
        assert h.sim.stats.predictions_created == 0


async def test_no_secret_configured_means_open() -> None:
    async with simulator(secret=None, mj_secret=None) as h:
        assert (await h.submit()).status is TaskStatus.SUBMITTED


async def test_api_faults_change_nothing() -> None:
    async with simulator(error_rate=1.0) as h:
        for _ in range(4):
            with pytest.raises(VendorUnavailable) as caught:
                await h.submit()
            assert caught.value.not_accepted  # 503 or 429: certainly not created
        with pytest.raises(VendorUnavailable):
            await h.adapter.fetch("1712205491372000", model=MODEL)
        stats = h.sim.stats
        assert stats.api_errors_503 + stats.api_errors_429 == 5
        assert stats.predictions_created == 0


async def test_duplicates_share_a_delivery_id() -> None:
    async with simulator(duplicate=1.0) as h:
        job = (await h.submit()).vendor_task_id
        await h.settle()
        hooks = h.receiver.for_task(job)
        assert len(hooks) == 12  # every message twice
        now = time.time()
        ids = [h.adapter.verify(hook.body, hook.headers, now=now).delivery_id for hook in hooks]
        assert ids[0::2] == ids[1::2]
        assert len(set(ids)) == 6


@pytest.mark.parametrize("early", [True, False])
async def test_early_mode_delivers_before_the_submit_returns(early: bool) -> None:
    async with simulator(job_seconds=0, early=early) as h:
        job = (await h.submit()).vendor_task_id
        if early:
            assert h.receiver.for_task(job)[-1].json["status"] == "SUCCESS"
        await h.settle()
        assert len(h.receiver.for_task(job)) == 6


# -- trueai-org/midjourney-proxy (issue 16.9) -----------------------------------------------


def auth() -> dict[str, str]:
    return {"mj-api-secret": SECRET}


async def finished_grid(h: Harness) -> str:
    parent = (await h.submit()).vendor_task_id
    await h.settle()
    return parent


async def test_trueai_has_no_change_and_answers_unknown_tasks_with_204() -> None:
    async with simulator(mj_dialect="trueai") as h:
        parent = await finished_grid(h)
        change = await h.api.post(
            "/mj/submit/change",
            json={"taskId": parent, "action": "UPSCALE", "index": 1},
            headers=auth(),
        )
        assert change.status_code == 404, "removed in v10"
        unknown = await h.api.get("/mj/task/1712205491372000/fetch", headers=auth())
        assert (unknown.status_code, unknown.content) == (204, b"")


async def test_a_finished_grid_carries_its_buttons() -> None:
    async with simulator(mj_dialect="trueai") as h:
        parent = await finished_grid(h)
        task = (await h.api.get(f"/mj/task/{parent}/fetch", headers=auth())).json()
        ids = [b["customId"] for b in task["buttons"]]
        assert [b["label"] for b in task["buttons"]] == [
            *(f"U{i}" for i in range(1, 5)),
            "",
            *(f"V{i}" for i in range(1, 5)),
        ]
        assert ids[0].startswith("MJ::JOB::upsample::1::") and ids[4].endswith("::SOLO")
        hook = h.receiver.for_task(parent)[-1].json
        assert hook["status"] == "SUCCESS" and hook["buttons"] == task["buttons"]


async def test_an_upscale_presses_its_button_and_runs() -> None:
    async with simulator(mj_dialect="trueai") as h:
        parent = await finished_grid(h)
        child = await h.act(parent, "upscale", 3)
        await h.settle()
        statuses = [hook.json["status"] for hook in h.receiver.for_task(child.vendor_task_id)]
        assert statuses[0] == "SUBMITTED" and statuses[-1] == "SUCCESS"
        done = await h.adapter.fetch(child.vendor_task_id, model=MODEL)
        assert done.status is TaskStatus.STORING


async def test_a_variation_waits_in_modal_until_its_window_is_confirmed() -> None:
    async with simulator(mj_dialect="trueai") as h:
        parent = await finished_grid(h)
        task = (await h.api.get(f"/mj/task/{parent}/fetch", headers=auth())).json()
        v2 = next(b["customId"] for b in task["buttons"] if b["label"] == "V2")
        pressed = await h.api.post(
            "/mj/submit/action",
            json={"taskId": parent, "customId": v2, "notifyHook": HOOK},
            headers=auth(),
        )
        body = pressed.json()
        assert (body["code"], body["description"]) == (21, "Waiting for window confirm")
        assert body["properties"] == {"finalPrompt": "a red fox", "remix": True}
        child = body["result"]
        waiting = (await h.api.get(f"/mj/task/{child}/fetch", headers=auth())).json()
        assert waiting["status"] == "MODAL"
        assert h.receiver.for_task(child) == [], "nothing runs, nothing is notified"
        confirm = await h.api.post(
            "/mj/submit/modal", json={"taskId": child, "prompt": ""}, headers=auth()
        )
        assert confirm.json()["code"] == 1
        await h.settle()
        assert h.receiver.for_task(child)[-1].json["status"] == "SUCCESS"


async def test_an_unconfirmed_window_closes_and_the_task_is_canceled() -> None:
    async with simulator(mj_dialect="trueai", time_scale=1e-4) as h:
        parent = await finished_grid(h)
        task = (await h.api.get(f"/mj/task/{parent}/fetch", headers=auth())).json()
        reroll = next(b["customId"] for b in task["buttons"] if "reroll" in b["customId"])
        pressed = await h.api.post(
            "/mj/submit/action",
            json={"taskId": parent, "customId": reroll, "notifyHook": HOOK},
            headers=auth(),
        )
        child = pressed.json()["result"]
        await h.receiver.wait_for_task(child)  # the window's clock decides
        await h.settle()
        closed = await h.adapter.fetch(child, model=MODEL)
        assert (closed.raw_status, closed.status) == ("CANCEL", TaskStatus.FAILED)


async def test_the_adapter_drives_a_trueai_variation_through_its_window() -> None:
    """Issue 16.1 against 16.9: the same client request, the other fork's API."""
    for adapter_dialect in ("auto", "trueai"):
        async with simulator(mj_dialect="trueai", adapter_dialect=adapter_dialect) as h:
            parent = await finished_grid(h)
            child = await h.act(parent, "variation", 1)
            assert child.status is TaskStatus.SUBMITTED
            await h.settle()
            done = await h.adapter.fetch(child.vendor_task_id, model=MODEL)
            assert done.status is TaskStatus.STORING and done.outputs


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"customId": "MJ::JOB::upsample::1::nope"}, 4),  # not one of the parent's buttons
        ({"taskId": "", "customId": "x"}, 4),
        ({"taskId": "1712205491372000", "customId": "MJ::JOB::upsample::1::x"}, 3),
    ],
)
async def test_bad_actions_are_refused_as_trueai_refuses_them(
    body: dict[str, Any], code: int
) -> None:
    async with simulator(mj_dialect="trueai") as h:
        parent = await finished_grid(h)
        answer = await h.api.post(
            "/mj/submit/action", json={"taskId": parent, **body}, headers=auth()
        )
        assert answer.json()["code"] == code
        assert answer.status_code == (404 if code == 3 else 200)
