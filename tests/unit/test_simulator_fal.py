"""The simulator's fal dialect, driven end to end by the real FalAdapter.

The app runs in-process (``httpx.ASGITransport``); its webhooks are captured with an
``httpx.MockTransport``. The adapter submits, polls, cancels and fetches the JWKS over the
simulator's HTTP API, and verifies and parses every captured webhook exactly as the receiver
would. Nothing sleeps to wait for state: tests wait on conditions with timeouts.
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

from common.errors import SignatureInvalid, VendorRejected, VendorUnavailable
from common.states import TaskStatus
from simulator import SimulatorConfig, create_app
from simulator.fal import FAL_WEBHOOK_RETRIES
from simulator.lifecycle import REQUESTED_FAILURE, Simulator
from simulator.predictions import tqdm_line
from vendors.base import VendorUpdate
from vendors.fal import FalAdapter

BASE = "http://sim.test"
HOOK = "https://receiver.test/hooks/fal/tok123"
MODEL = "fal-ai/flux/dev"
FAL_KEY = "sim-fal-key"
WAIT = 5.0


@dataclass
class Hook:
    headers: httpx.Headers
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    hooks: list[Hook] = field(default_factory=list)
    status: int = 200
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == HOOK
        self.hooks.append(Hook(headers=request.headers, body=request.read()))
        self._arrived.set()
        return httpx.Response(self.status)

    async def wait_count(self, n: int) -> list[Hook]:
        async with asyncio.timeout(WAIT):
            while len(self.hooks) < n:
                self._arrived.clear()
                await self._arrived.wait()
        return self.hooks


@dataclass
class Harness:
    app: Starlette
    api: httpx.AsyncClient
    adapter: FalAdapter
    receiver: Receiver

    @property
    def sim(self) -> Simulator:
        sim: Simulator = self.app.state.simulator
        return sim

    async def submit(self, prompt: str = "a red fox", **input: Any) -> VendorUpdate:
        return await self.adapter.submit(
            task_id=uuid.uuid4(),
            model=MODEL,
            input={"prompt": prompt, **input},
            callback_url=HOOK,
        )

    async def settle(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.sim.wait_idle()

    async def only_webhook(self) -> Hook:
        await self.settle()
        (hook,) = self.receiver.hooks
        return hook

    async def receive(self, hook: Hook) -> VendorUpdate:
        """What the receiver does: verify over the raw bytes, then parse."""
        await self.adapter.verify_async(hook.body, hook.headers, now=time.time())
        return self.adapter.parse(hook.body)


@asynccontextmanager
async def simulator(*, api_key: str = FAL_KEY, **overrides: Any) -> AsyncIterator[Harness]:
    settings: dict[str, Any] = {"job_seconds": 0.05, "seed": 7, "fal_key": FAL_KEY}
    settings.update(overrides)
    receiver = Receiver()
    hooks = httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle))
    app = create_app(SimulatorConfig(**settings), webhook_client=hooks)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as api,
    ):
        adapter = FalAdapter(
            api,
            api_key=api_key,
            queue_base=f"{BASE}/fal",
            jwks_url=f"{BASE}/fal/.well-known/jwks.json",
        )
        yield Harness(app=app, api=api, adapter=adapter, receiver=receiver)
    await hooks.aclose()


# -- the happy path -----------------------------------------------------------------------


async def test_success_end_to_end() -> None:
    async with simulator() as h:
        await h.adapter.prepare()
        submitted = await h.submit(num_images=2)
        assert submitted.status is TaskStatus.SUBMITTED
        assert uuid.UUID(submitted.vendor_task_id)
        rid = submitted.vendor_task_id

        hook = await h.only_webhook()  # fal sends exactly one webhook, when done
        assert hook.headers["x-fal-webhook-request-id"] == rid
        assert hook.headers["x-fal-webhook-user-id"]
        assert hook.json["status"] == "OK"
        update = await h.receive(hook)
        files = [f"{BASE}/files/{rid}/0.png", f"{BASE}/files/{rid}/1.png"]
        assert (update.vendor_task_id, update.status, update.outputs) == (
            rid,
            TaskStatus.STORING,
            files,
        )

        polled = await h.adapter.fetch(rid, model=MODEL)
        assert (polled.status, polled.outputs) == (TaskStatus.STORING, files)
        assert h.sim.stats.fetches[rid] == 1

        image = await h.api.get(files[1])
        assert image.status_code == 200
        assert image.content.startswith(b"\x89PNG")


async def test_webhook_payload_looks_like_a_fal_image_model() -> None:
    async with simulator() as h:
        rid = (await h.submit()).vendor_task_id
        body = (await h.only_webhook()).json
        assert set(body) == {"request_id", "gateway_request_id", "status", "payload"}
        assert body["request_id"] == body["gateway_request_id"] == rid
        payload = body["payload"]
        assert payload["prompt"] == "a red fox"
        assert isinstance(payload["seed"], int)
        (image,) = payload["images"]
        assert image["content_type"] == "image/png"
        assert image["width"] == image["height"] == 64


async def test_a_new_key_verifies_on_the_first_delivery() -> None:
    async with simulator() as h:  # no prepare(): the adapter has never seen the key
        await h.submit()
        hook = await h.only_webhook()
        with pytest.raises(SignatureInvalid):
            h.adapter.verify(hook.body, hook.headers, now=time.time())
        await h.adapter.drain()
        delivery = await h.adapter.verify_async(hook.body, hook.headers, now=time.time())
        assert delivery.delivery_id.startswith(hook.json["request_id"] + ":")


# -- the queue API ------------------------------------------------------------------------


async def test_submit_answer_and_queue_urls_use_the_app_id() -> None:
    async with simulator(job_seconds=10) as h:
        response = await h.api.post(
            f"/fal/{MODEL}",
            params={"fal_webhook": HOOK},
            json={"prompt": "x"},
            headers={"Authorization": f"Key {FAL_KEY}"},
        )
        assert response.status_code == 200
        body = response.json()
        rid = body["request_id"]
        url = f"{BASE}/fal/fal-ai/flux/requests/{rid}"
        assert body["status_url"] == url + "/status"
        assert body["response_url"] == url
        assert body["cancel_url"] == url + "/cancel"

        auth = {"Authorization": f"Key {FAL_KEY}"}
        assert (await h.api.get(url + "/status", headers=auth)).status_code == 202
        wrong = f"{BASE}/fal/{MODEL}/requests/{rid}/status"  # the full model id is not the app
        assert (await h.api.get(wrong, headers=auth)).status_code == 404


async def test_in_queue_then_in_progress_with_progress() -> None:
    async with simulator(job_seconds=10, steps=4) as h:
        rid = (await h.submit()).vendor_task_id
        queued = await h.adapter.fetch(rid, model=MODEL)
        assert (queued.status, queued.raw_status) == (TaskStatus.SUBMITTED, "IN_QUEUE")

        prediction = h.sim.get(rid)
        assert prediction is not None
        prediction.start_processing()  # the lifecycle sleeps for seconds; move it by hand
        prediction.logs += tqdm_line(1, 4, 0.5) + tqdm_line(2, 4, 1.0)
        running = await h.adapter.fetch(rid, model=MODEL)
        assert (running.status, running.progress) == (TaskStatus.PROCESSING, 50)
        assert h.sim.stats.fetches[rid] == 2


async def test_requested_failure_is_failed_by_webhook_and_by_polling() -> None:
    async with simulator() as h:
        rid = (await h.submit("please fail-me")).vendor_task_id
        hook = await h.only_webhook()
        assert hook.json["status"] == "ERROR"
        update = await h.receive(hook)
        assert update.status is TaskStatus.FAILED
        assert update.error is not None and REQUESTED_FAILURE in update.error

        polled = await h.adapter.fetch(rid, model=MODEL)  # the result answers 422
        assert polled.status is TaskStatus.FAILED
        assert polled.error is not None and REQUESTED_FAILURE in polled.error


async def test_random_failure_is_the_platforms_in_the_completed_status() -> None:
    """fal reports a platform failure in the COMPLETED status itself (``error`` and
    ``error_type``, as fal-client's tests record it): no result call is needed (issue 16.8)."""
    async with simulator(fail=1.0) as h:
        rid = (await h.submit()).vendor_task_id
        update = await h.receive(await h.only_webhook())
        assert update.status is TaskStatus.FAILED
        assert update.error is not None and "Runner disconnected" in update.error
        status = await h.api.get(
            f"/fal/fal-ai/flux/requests/{rid}/status", headers={"authorization": f"Key {FAL_KEY}"}
        )
        assert (status.status_code, status.json()["status"]) == (200, "COMPLETED")
        assert (status.json()["error"], status.json()["error_type"]) == (
            "Runner disconnected",
            "runner_disconnected",
        )
        polled = await h.adapter.fetch(rid, model=MODEL)
        assert (polled.status, polled.error) == (
            TaskStatus.FAILED,
            "Runner disconnected (runner_disconnected)",
        )


async def test_rejected_input_is_vendor_rejected() -> None:
    async with simulator() as h:
        with pytest.raises(VendorRejected, match="reject-me"):
            await h.submit("reject-me please")
        with pytest.raises(VendorRejected, match="num_images"):
            await h.submit(num_images=99)
        assert h.sim.stats.predictions_created == 0


async def test_cancel_then_cancel_again() -> None:
    async with simulator(job_seconds=10) as h:
        rid = (await h.submit()).vendor_task_id
        await h.adapter.cancel(rid, model=MODEL)
        update = await h.receive(await h.only_webhook())
        assert update.status is TaskStatus.FAILED
        polled = await h.adapter.fetch(rid, model=MODEL)
        assert polled.status is TaskStatus.FAILED
        await h.adapter.cancel(rid, model=MODEL)  # ALREADY_COMPLETED is not an error


async def test_unknown_request_is_rejected() -> None:
    async with simulator() as h:
        with pytest.raises(VendorRejected):
            await h.adapter.fetch(str(uuid.uuid4()), model=MODEL)


# -- auth and faults ----------------------------------------------------------------------


async def test_wrong_key_is_refused() -> None:
    async with simulator(api_key="wrong") as h:
        with pytest.raises(VendorUnavailable, match="401"):
            await h.submit()
        assert h.sim.stats.predictions_created == 0
        jwks = await h.api.get("/fal/.well-known/jwks.json")  # public, no key needed
        assert jwks.status_code == 200
        assert jwks.json()["keys"][0]["crv"] == "Ed25519"


async def test_api_faults_change_nothing() -> None:
    async with simulator(error_rate=1.0) as h:
        for _ in range(4):
            with pytest.raises(VendorUnavailable) as caught:
                await h.submit()
            assert caught.value.not_accepted  # 503 or 429: certainly not created
        stats = h.sim.stats
        assert stats.api_errors_503 + stats.api_errors_429 == 4
        assert stats.predictions_created == 0


async def test_forged_copy_is_rejected_and_the_genuine_one_accepted() -> None:
    async with simulator(bad_signature=1.0) as h:
        await h.adapter.prepare()
        rid = (await h.submit()).vendor_task_id
        await h.settle()
        forged, genuine = h.receiver.hooks
        assert forged.body == genuine.body
        with pytest.raises(SignatureInvalid):
            await h.adapter.verify_async(forged.body, forged.headers, now=time.time())
        update = await h.receive(genuine)
        assert (update.vendor_task_id, update.status) == (rid, TaskStatus.STORING)
        assert h.sim.stats.bad_signature == 1


async def test_duplicate_webhook_has_the_same_delivery_id() -> None:
    async with simulator(duplicate=1.0) as h:
        await h.adapter.prepare()
        await h.submit()
        await h.settle()
        first, second = h.receiver.hooks
        now = time.time()
        assert (
            h.adapter.verify(first.body, first.headers, now=now).delivery_id
            == h.adapter.verify(second.body, second.headers, now=now).delivery_id
        )


@pytest.mark.parametrize("early", [True, False])
async def test_early_mode_delivers_before_the_submit_returns(early: bool) -> None:
    async with simulator(job_seconds=0, early=early) as h:
        await h.submit()
        if early:
            assert len(h.receiver.hooks) == 1
        await h.settle()
        assert len(h.receiver.hooks) == 1


# -- fal as unkind as it is (issue 16.8) ----------------------------------------------------


async def wait_until_gone(h: Harness, rid: str) -> httpx.Response:
    """The result's answer once fal's retention has passed (a bounded wait on the clock)."""
    auth = {"authorization": f"Key {FAL_KEY}"}
    async with asyncio.timeout(WAIT):
        while True:
            answer = await h.api.get(f"/fal/fal-ai/flux/requests/{rid}", headers=auth)
            if answer.status_code != 200:
                return answer
            await asyncio.sleep(0.01)


async def test_a_large_result_expires_after_6_minutes_a_small_one_after_an_hour() -> None:
    """fal keeps a result an hour, 6 minutes when it is 10 KB or more; here an hour is 0.36 s
    and 6 minutes 36 ms (time_scale 1e-4)."""
    async with simulator(time_scale=1e-4) as h:
        large = (await h.submit("a fox " + "in the snow " * 1000)).vendor_task_id
        small = (await h.submit("a fox")).vendor_task_id
        await h.settle()
        started = time.monotonic()
        gone = await wait_until_gone(h, large)
        assert (gone.status_code, gone.json()) == (404, {"detail": "Request not found"})
        assert time.monotonic() - started < 0.3, "the large one went first"
        auth = {"authorization": f"Key {FAL_KEY}"}
        still = await h.api.get(f"/fal/fal-ai/flux/requests/{small}", headers=auth)
        assert still.status_code == 200
        status = await h.api.get(f"/fal/fal-ai/flux/requests/{large}/status", headers=auth)
        assert status.json()["status"] == "COMPLETED", "the status outlives the result"
        update = await h.adapter.fetch(large, model=MODEL)
        assert (update.status, update.error_code) == (TaskStatus.FAILED, "result_expired")
        assert h.sim.stats.results_expired >= 2


async def test_payload_error_webhooks_carry_no_result() -> None:
    async with simulator(fal_payload_error=1.0) as h:
        rid = (await h.submit()).vendor_task_id
        hook = await h.only_webhook()
        assert hook.json["status"] == "OK" and hook.json["payload"] is None
        assert "serialize" in hook.json["payload_error"]
        update = await h.receive(hook)
        assert (update.vendor_task_id, update.confirm, update.outputs) == (rid, True, None)
        polled = await h.adapter.fetch(rid, model=MODEL)  # the queue still has it
        assert polled.status is TaskStatus.STORING and polled.outputs


async def test_a_refused_webhook_is_retried_ten_times_over_two_hours() -> None:
    """ "If the webhook fails to deliver the payload, it will retry 10 times in the span of 2
    hours" (fal's webhooks page); 2 hours are 72 ms here."""
    assert len(FAL_WEBHOOK_RETRIES) == 10
    assert 7000 <= sum(FAL_WEBHOOK_RETRIES) <= 7300
    async with simulator(time_scale=1e-5) as h:
        h.receiver.status = 500
        await h.submit()
        await h.settle()
        assert len(h.receiver.hooks) == 11
        assert len({hook.body for hook in h.receiver.hooks}) == 1
        stats = h.sim.stats.to_json()["webhooks"]
        assert (stats["retried"], stats["failed_deliveries"]) == (10, 1)
