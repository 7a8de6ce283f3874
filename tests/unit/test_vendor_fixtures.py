"""The real vendors' payloads (tests/fixtures/vendors, each naming its public source) against
the adapters and against the simulator (issue 16, Proof): the adapters must read what the
vendors send, and the simulator must send what they send, so a drift in either shows here."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.errors import VendorParentNotReady, VendorRejected, VendorUnavailable
from common.states import TaskStatus
from simulator import SimulatorConfig, create_app
from storage.download import from_data_uri
from vendors.fal import FalAdapter
from vendors.midjourney_proxy import MidjourneyProxyAdapter
from vendors.replicate import ReplicateAdapter
from vendors.signature import decode_secret, verify_standard_webhook

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vendors"
ALL = sorted(FIXTURES.glob("*/*.json"))


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def answer_of(name: str) -> httpx.Response:
    """The fixture as an HTTP answer."""
    doc = fixture(name)
    if "body" in doc:
        return httpx.Response(doc["status"], headers=doc.get("headers"), json=doc["body"])
    return httpx.Response(doc["status"], headers=doc.get("headers"), text=doc["body_text"])


def replaying(*names: str) -> Callable[[httpx.Request], httpx.Response]:
    answers = [answer_of(n) for n in names]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return handler


def keys(value: Any) -> set[str]:
    return set(value) if isinstance(value, dict) else set()


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_names_its_public_source(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(doc.get("source"), str) and len(doc["source"]) > 20
    assert "body" in doc or "body_text" in doc


# -- Replicate: the adapter reads what Replicate sends -------------------------------------


@asynccontextmanager
async def replicate(handler: Callable[[httpx.Request], httpx.Response]) -> AsyncIterator[Any]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield ReplicateAdapter(client, api_token="t", api_base="https://api.replicate.com/v1")


async def create(adapter: Any) -> Any:
    return await adapter.submit(
        task_id=uuid.uuid4(), model="stability-ai/sdxl", input={"prompt": "x"}, callback_url="h"
    )


async def test_replicate_create_answer() -> None:
    async with replicate(replaying("replicate/create_201.json")) as adapter:
        update = await create(adapter)
    assert (update.vendor_task_id, update.status) == (
        "vgcm4plb7tgzlyznry5d5jkgvu",
        TaskStatus.SUBMITTED,
    )


async def test_replicate_running_and_finished_predictions() -> None:
    async with replicate(replaying("replicate/get_processing.json")) as adapter:
        running = await adapter.fetch("vgcm4plb7tgzlyznry5d5jkgvu")
    async with replicate(replaying("replicate/get_succeeded.json")) as adapter:
        done = await adapter.fetch("vgcm4plb7tgzlyznry5d5jkgvu")
    assert running.status is TaskStatus.PROCESSING and running.progress is not None
    assert 0 < running.progress < 100
    assert (done.status, done.outputs) == (
        TaskStatus.STORING,
        fixture("replicate/get_succeeded.json")["body"]["output"],
    )


async def test_replicate_cancel_and_a_refused_token() -> None:
    async with replicate(replaying("replicate/cancel_200.json")) as adapter:
        await adapter.cancel("hdwst0bb05rgp0cf0p29mzk2am")
    async with replicate(replaying("replicate/unauthenticated_401.json")) as adapter:
        with pytest.raises(VendorUnavailable, match="token"):
            await create(adapter)


@pytest.mark.parametrize(
    ("name", "wait"),
    [("replicate/throttled_429.json", 30.0), ("replicate/throttled_429_older.json", 1.0)],
)
async def test_replicate_429_as_sent(name: str, wait: float) -> None:
    async with replicate(replaying(name)) as adapter:
        with pytest.raises(VendorUnavailable) as caught:
            await create(adapter)
    assert caught.value.throttled and caught.value.retry_after == wait


def test_a_prefer_wait_answer_is_stored_from_its_data_uri() -> None:
    body = fixture("replicate/create_prefer_wait_201.json")["body"]
    uri = body["output"][0]
    stored = from_data_uri(uri, max_bytes=64 * 1024 * 1024)
    assert stored.content_type == "image/png"
    assert stored.file.read(8) == b"\x89PNG\r\n\x1a\n"


async def test_replicate_list_finds_an_earlier_create() -> None:
    listed = fixture("replicate/list_predictions.json")["body"]["results"][0]
    since = datetime.fromisoformat(listed["created_at"]) - timedelta(seconds=5)
    async with replicate(replaying("replicate/list_predictions.json")) as adapter:
        found = await adapter.find_created(
            model="replicate/hello-world", input={"text": "Alice"}, since=since
        )
    assert [u.vendor_task_id for u in found] == [listed["id"]]


def test_replicate_webhook_body_and_signature() -> None:
    async_adapter = ReplicateAdapter(httpx.AsyncClient(), api_token="t", api_base="https://x")
    update = async_adapter.parse(
        json.dumps(fixture("replicate/webhook_starting.json")["body"]).encode()
    )
    assert (update.vendor_task_id, update.status) == (
        "ufawqhfynnddngldkgtslldrkq",
        TaskStatus.SUBMITTED,
    )
    vector = fixture("replicate/standard_webhooks_vector.json")
    delivery = verify_standard_webhook(
        vector["body_text"].encode(),
        vector["headers"],
        [decode_secret(vector["secret"])],
        now=int(vector["headers"]["webhook-timestamp"]),
        tolerance=300,
    )
    assert delivery.delivery_id == vector["headers"]["webhook-id"]


# -- fal: the adapter reads what fal sends -------------------------------------------------


@asynccontextmanager
async def fal(handler: Callable[[httpx.Request], httpx.Response]) -> AsyncIterator[FalAdapter]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield FalAdapter(client, api_key="k", queue_base="https://queue.fal.run")


async def test_fal_submit_answer_gives_the_urls_to_use() -> None:
    async with fal(replaying("fal/submit.json")) as adapter:
        update = await adapter.submit(
            task_id=uuid.uuid4(),
            model="fal-ai/fast-sdxl",
            input={"prompt": "a cat"},
            callback_url="h",
        )
    body = fixture("fal/submit.json")["body"]
    assert update.vendor_task_id == body["request_id"]
    assert update.urls == {k: body[k] for k in ("status_url", "response_url", "cancel_url")}


@pytest.mark.parametrize(
    ("name", "status", "error"),
    [
        ("fal/status_in_queue.json", TaskStatus.SUBMITTED, None),
        ("fal/status_in_progress.json", TaskStatus.PROCESSING, None),
        (
            "fal/status_completed_runner_disconnected.json",
            TaskStatus.FAILED,
            "Runner disconnected (runner_disconnected)",
        ),
        (
            "fal/status_completed_request_timeout.json",
            TaskStatus.FAILED,
            "Request timed out (request_timeout)",
        ),
    ],
)
async def test_fal_statuses(name: str, status: TaskStatus, error: str | None) -> None:
    async with fal(replaying(name)) as adapter:
        update = await adapter.fetch("r1", model="fal-ai/fast-sdxl")
    assert (update.status, update.error) == (status, error)


def test_fal_webhooks() -> None:
    adapter = FalAdapter(httpx.AsyncClient(), api_key="k")
    ok = adapter.parse(json.dumps(fixture("fal/webhook_ok.json")["body"]).encode())
    error = adapter.parse(json.dumps(fixture("fal/webhook_error.json")["body"]).encode())
    hint = adapter.parse(json.dumps(fixture("fal/webhook_payload_error.json")["body"]).encode())
    assert (ok.status, ok.outputs) == (TaskStatus.STORING, ["https://url.to/image.png"])
    assert error.status is TaskStatus.FAILED and "model_name: field required" in (error.error or "")
    assert (hint.status, hint.confirm, hint.outputs) == (TaskStatus.STORING, True, None)


# -- midjourney-proxy: the adapter reads both forks ----------------------------------------


@asynccontextmanager
async def proxy(
    handler: Callable[[httpx.Request], httpx.Response], dialect: str = "auto"
) -> AsyncIterator[MidjourneyProxyAdapter]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield MidjourneyProxyAdapter(
            client, api_base="http://proxy.test", api_secret=None, dialect=dialect
        )


async def imagine(adapter: MidjourneyProxyAdapter) -> Any:
    return await adapter.submit(
        task_id=uuid.uuid4(), model="midjourney", input={"prompt": "cat"}, callback_url="h"
    )


async def test_midjourney_submit_codes() -> None:
    for name in ("midjourney/submit_1.json", "midjourney/submit_22_queued.json"):
        async with proxy(replaying(name)) as adapter:
            assert (await imagine(adapter)).vendor_task_id == fixture(name)["body"]["result"]
    async with proxy(replaying("midjourney/submit_21_existed.json"), "novicezk") as adapter:
        existed = await imagine(adapter)
    assert (existed.status, existed.outputs) == (TaskStatus.STORING, ["https://xxxx"])
    async with proxy(replaying("midjourney/submit_23_queue_full.json")) as adapter:
        with pytest.raises(VendorUnavailable) as full:
            await imagine(adapter)
    assert full.value.not_accepted
    async with proxy(replaying("midjourney/submit_24_banned.json")) as adapter:
        with pytest.raises(VendorRejected, match="nude"):
            await imagine(adapter)


def test_midjourney_notify() -> None:
    adapter = MidjourneyProxyAdapter(
        httpx.AsyncClient(), api_base="http://proxy.test", api_secret=None
    )
    update = adapter.parse(json.dumps(fixture("midjourney/notify_success.json")["body"]).encode())
    assert (update.status, update.progress) == (TaskStatus.STORING, 100)


async def test_trueai_follow_up_through_its_window() -> None:
    parent = fixture("midjourney/trueai_task_success_with_buttons.json")["body"]
    handler = replaying(
        "midjourney/trueai_task_success_with_buttons.json",
        "midjourney/trueai_action_21_modal.json",
        "midjourney/submit_1.json",
    )
    sent: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handler(request)

    async with proxy(recording) as adapter:
        update = await adapter.submit_action(
            task_id=uuid.uuid4(),
            parent_vendor_task_id=parent["id"],
            action="variation",
            index=2,
            callback_url="h",
        )
    assert [r.url.path for r in sent] == [
        f"/mj/task/{parent['id']}/fetch",
        "/mj/submit/action",
        "/mj/submit/modal",
    ]
    assert json.loads(sent[1].content)["customId"] == parent["buttons"][6]["customId"]
    assert update.status is TaskStatus.SUBMITTED


async def test_trueai_unknown_task_is_an_empty_204() -> None:
    async with proxy(replaying("midjourney/trueai_fetch_unknown_204.json")) as adapter:
        with pytest.raises(VendorRejected, match="does not know") as caught:
            await adapter.fetch("1712205491372000")
    assert not isinstance(caught.value, VendorParentNotReady)


# -- the simulator sends what the vendors send ---------------------------------------------


@asynccontextmanager
async def simulator(**config: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any, list[bytes]]]:
    hooks: list[bytes] = []

    def receive(request: httpx.Request) -> httpx.Response:
        hooks.append(request.read())
        return httpx.Response(200)

    settings = {"job_seconds": 0.02, "seed": 1, "time_scale": 0.001, **config}
    webhook_client = httpx.AsyncClient(transport=httpx.MockTransport(receive))
    app = create_app(SimulatorConfig(**settings), webhook_client=webhook_client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as api,
    ):
        yield api, app.state.simulator, hooks
    await webhook_client.aclose()


# A model's output is whatever that model returns (a text model's string, an image model's
# list of URLs): its type is the model's, not the vendor's.
MODEL_DEFINED = frozenset({"output"})


def assert_shaped_like(sent: Any, real: Any, where: str = "body") -> None:
    """Every field the vendor sends is there, with a value of the same JSON type (null aside)."""
    assert isinstance(sent, dict) and isinstance(real, dict), where
    missing = set(real) - set(sent)
    assert not missing, f"{where}: the simulator leaves out {sorted(missing)}"
    for key, value in real.items():
        if value is None or sent[key] is None or key in MODEL_DEFINED:
            continue
        same = isinstance(sent[key], type(value)) or (
            isinstance(value, int | float) and isinstance(sent[key], int | float)
        )
        assert same, f"{where}.{key}: {type(sent[key]).__name__} for {type(value).__name__}"


HOOK = "https://taskhook.test/hooks/x/tok"


async def test_simulated_replicate_answers_are_shaped_like_replicates() -> None:
    async with simulator() as (api, sim, hooks):
        created = await api.post(
            "/v1/models/stability-ai/sdxl/predictions",
            json={"input": {"prompt": "a corgi"}, "webhook": HOOK},
        )
        real = answer_of("replicate/create_201.json")
        assert created.status_code == real.status_code
        assert {"ratelimit-remaining", "ratelimit-reset"} <= set(created.headers)
        assert_shaped_like(created.json(), real.json(), "create")
        await sim.wait_idle()
        got = await api.get(created.json()["urls"]["get"].removeprefix("http://sim"))
        assert_shaped_like(got.json(), fixture("replicate/get_succeeded.json")["body"], "get")
        assert_shaped_like(
            json.loads(hooks[0]), fixture("replicate/webhook_starting.json")["body"], "webhook"
        )
        listed = (await api.get("/v1/predictions")).json()
        real_list = fixture("replicate/list_predictions.json")["body"]
        assert set(listed) == set(real_list)
        assert_shaped_like(listed["results"][0], real_list["results"][0], "list entry")
        waited = await api.post(
            "/v1/models/stability-ai/sdxl/predictions",
            json={"input": {"prompt": "a corgi"}},
            headers={"Prefer": "wait"},
        )
        real_wait = answer_of("replicate/create_prefer_wait_201.json")
        assert waited.headers["preference-applied"] == real_wait.headers["preference-applied"]
        assert waited.json()["output"][0].startswith("data:image/png;base64,")


async def test_simulated_replicate_refusals_are_replicates() -> None:
    async with simulator(error_rate=1.0, api_token="right") as (api, _, _):
        refused = await api.post(
            "/v1/predictions", json={}, headers={"Authorization": "Bearer wrong"}
        )
        assert_shaped_like(refused.json(), fixture("replicate/unauthenticated_401.json")["body"])
        assert refused.status_code == 401
        throttled = None
        for _ in range(20):
            r = await api.get("/v1/predictions/x", headers={"Authorization": "Bearer right"})
            if r.status_code == 429:
                throttled = r
                break
        assert throttled is not None
        real = answer_of("replicate/throttled_429.json")
        assert "retry-after" not in throttled.headers
        assert {"ratelimit-remaining", "ratelimit-reset"} <= set(throttled.headers)
        pattern = re.sub(r"\d+", r"\\d+", re.escape(real.json()["detail"]))
        assert re.fullmatch(pattern, throttled.json()["detail"])


async def test_simulated_fal_answers_are_shaped_like_fals() -> None:
    async with simulator(fail=0.0) as (api, sim, hooks):
        submitted = await api.post(
            f"/fal/fal-ai/fast-sdxl?fal_webhook={HOOK}", json={"prompt": "a cat"}
        )
        assert_shaped_like(submitted.json(), fixture("fal/submit.json")["body"], "submit")
        queued = await api.get(submitted.json()["status_url"].removeprefix("http://sim"))
        if queued.json()["status"] == "IN_QUEUE":
            assert_shaped_like(queued.json(), fixture("fal/status_in_queue.json")["body"], "status")
        await sim.wait_idle()
        assert_shaped_like(json.loads(hooks[-1]), fixture("fal/webhook_ok.json")["body"], "webhook")
    async with simulator(fail=1.0) as (api, sim, hooks):
        submitted = await api.post(
            f"/fal/fal-ai/fast-sdxl?fal_webhook={HOOK}", json={"prompt": "a cat"}
        )
        await sim.wait_idle()
        done = await api.get(submitted.json()["status_url"].removeprefix("http://sim"))
        real = fixture("fal/status_completed_runner_disconnected.json")["body"]
        assert_shaped_like(done.json(), real, "completed status")
        assert done.json()["error_type"] == real["error_type"]
        assert_shaped_like(
            json.loads(hooks[-1]), fixture("fal/webhook_error.json")["body"], "error webhook"
        )
    async with simulator(fal_payload_error=1.0) as (api, sim, hooks):
        await api.post(f"/fal/fal-ai/fast-sdxl?fal_webhook={HOOK}", json={"prompt": "a cat"})
        await sim.wait_idle()
        assert_shaped_like(
            json.loads(hooks[-1]),
            fixture("fal/webhook_payload_error.json")["body"],
            "payload_error",
        )
        assert json.loads(hooks[-1])["payload"] is None


async def test_simulated_proxies_answer_like_both_forks() -> None:
    async with simulator() as (api, sim, hooks):
        submitted = await api.post("/mj/submit/imagine", json={"prompt": "cat", "notifyHook": HOOK})
        assert_shaped_like(submitted.json(), fixture("midjourney/submit_1.json")["body"], "submit")
        await sim.wait_idle()
        assert_shaped_like(
            json.loads(hooks[-1]), fixture("midjourney/notify_success.json")["body"], "notify"
        )
    async with simulator(mj_dialect="trueai") as (api, sim, hooks):
        parent = (await api.post("/mj/submit/imagine", json={"prompt": "cat"})).json()["result"]
        await sim.wait_idle()
        task = (await api.get(f"/mj/task/{parent}/fetch")).json()
        real = fixture("midjourney/trueai_task_success_with_buttons.json")["body"]
        assert_shaped_like(task, real, "trueai task")
        shape = [re.sub(r"[0-9a-f-]{36}", "<hash>", b["customId"]) for b in task["buttons"]]
        assert shape == [re.sub(r"[0-9a-f-]{36}", "<hash>", b["customId"]) for b in real["buttons"]]
        variation = next(b["customId"] for b in task["buttons"] if b["label"] == "V1")
        waiting = await api.post(
            "/mj/submit/action", json={"taskId": parent, "customId": variation}
        )
        assert_shaped_like(
            waiting.json(), fixture("midjourney/trueai_action_21_modal.json")["body"], "21"
        )
        assert waiting.json()["code"] == 21
        unknown = await api.get("/mj/task/1712205491372000/fetch")
        assert unknown.status_code == fixture("midjourney/trueai_fetch_unknown_204.json")["status"]
        assert unknown.content == b""


def test_fixture_data_uri_is_base64_of_a_png() -> None:
    """The Prefer: wait fixture is what its cassette recorded, image and all."""
    uri = fixture("replicate/create_prefer_wait_201.json")["body"]["output"][0]
    assert base64.b64decode(uri.partition(",")[2])[:4] == b"\x89PNG"
