"""The midjourney-proxy adapter against a mocked proxy: requests, status mapping, return codes.

Every HTTP exchange goes through ``httpx.MockTransport``; nothing leaves the process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from common.errors import PayloadInvalid, VendorParentNotReady, VendorRejected, VendorUnavailable
from common.ids import format_task_id
from common.states import TaskStatus
from common.tracing import current_trace_id
from vendors.midjourney_proxy import (
    _STATUS_MAP,
    MidjourneyProxyAdapter,
    progress_percent,
    to_update,
)

BASE = "http://mj.test"
SECRET = "mj-secret-123"
CALLBACK = "https://taskhook.test/hooks/midjourney/tok123"
TASK_ID = uuid.UUID("0b5e6c3c-3f3e-4a53-9d0e-6a1f3c2b1a00")
MJ_ID = "1712205491372123"
IMAGE = "https://cdn.discordapp.com/attachments/1/2/grid.png"

Handler = Callable[[httpx.Request], httpx.Response]


def task(status: str = "SUBMITTED", **fields: Any) -> dict[str, Any]:
    return {"id": MJ_ID, "action": "IMAGINE", "status": status, "progress": "0%", **fields}


def submitted(code: int = 1, result: Any = MJ_ID, **fields: Any) -> dict[str, Any]:
    return {"code": code, "description": "提交成功", "result": result, "properties": {}, **fields}


class Recorder:
    """A MockTransport handler that keeps every request and answers with `respond`."""

    def __init__(self, respond: Handler) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    @property
    def only(self) -> httpx.Request:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]

    @property
    def body(self) -> Any:
        return json.loads(self.only.content)


def answer(status: int = 200, body: Any = None, **kwargs: Any) -> Recorder:
    if body is None:
        return Recorder(lambda _request: httpx.Response(status, **kwargs))
    return Recorder(lambda _request: httpx.Response(status, json=body, **kwargs))


MakeAdapter = Callable[..., MidjourneyProxyAdapter]


@pytest.fixture
async def make_adapter() -> AsyncIterator[MakeAdapter]:
    clients: list[httpx.AsyncClient] = []

    def make(
        handler: Handler, *, secret: str | None = SECRET, dialect: str = "novicezk"
    ) -> MidjourneyProxyAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        return MidjourneyProxyAdapter(
            client, api_base=BASE + "/", api_secret=secret, dialect=dialect
        )

    yield make
    for client in clients:
        await client.aclose()


async def imagine(
    adapter: MidjourneyProxyAdapter, prompt: Any = "a red fox", *, model: str = "midjourney"
) -> Any:
    return await adapter.submit(
        task_id=TASK_ID, model=model, input={"prompt": prompt}, callback_url=CALLBACK
    )


async def change(adapter: MidjourneyProxyAdapter, action: str = "upscale", index: int = 2) -> Any:
    return await adapter.submit_action(
        task_id=TASK_ID,
        parent_vendor_task_id=MJ_ID,
        action=action,
        index=index,
        callback_url=CALLBACK,
    )


# -- status mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("NOT_START", TaskStatus.SUBMITTED),
        ("SUBMITTED", TaskStatus.SUBMITTED),
        ("IN_PROGRESS", TaskStatus.PROCESSING),
        ("MODAL", TaskStatus.PROCESSING),
        ("SUCCESS", TaskStatus.STORING),
        ("FAILURE", TaskStatus.FAILED),
        ("CANCEL", TaskStatus.FAILED),
    ],
)
def test_status_table(raw: str, expected: TaskStatus) -> None:
    assert _STATUS_MAP[raw] is expected
    update = to_update(task(raw, imageUrl=IMAGE, failReason="boom"))
    assert (update.vendor_task_id, update.status, update.raw_status) == (MJ_ID, expected, raw)


def test_every_status_is_in_the_table() -> None:
    assert set(_STATUS_MAP) == {
        "NOT_START",
        "SUBMITTED",
        "IN_PROGRESS",
        "MODAL",
        "SUCCESS",
        "FAILURE",
        "CANCEL",
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0%", 0),
        ("57%", 57),
        ("100%", 100),
        ("150%", 100),
        (" 42 % ", 42),
        ("12.5%", 12),
        ("57", 57),
        (57, 57),
        (-3, 0),
        ("", None),
        (None, None),
        ("abc", None),
        ("-5%", None),
        ("%", None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_progress(raw: Any, expected: int | None) -> None:
    assert progress_percent(raw) == expected
    assert to_update(task("IN_PROGRESS", progress=raw)).progress == expected


def test_success_carries_the_image_only_when_done() -> None:
    done = to_update(task("SUCCESS", imageUrl=IMAGE, progress="100%"))
    assert (done.status, done.outputs, done.progress, done.error) == (
        TaskStatus.STORING,
        [IMAGE],
        100,
        None,
    )
    preview = to_update(task("IN_PROGRESS", imageUrl=IMAGE, progress="46%"))
    assert (preview.status, preview.outputs, preview.progress) == (TaskStatus.PROCESSING, None, 46)


@pytest.mark.parametrize("url", [None, "", "ftp://x/y.png", 7])
def test_success_without_an_image_is_a_failure(url: Any) -> None:
    update = to_update(task("SUCCESS", imageUrl=url))
    assert update.status is TaskStatus.FAILED
    assert update.error == "the task succeeded without an imageUrl"
    assert update.raw_status == "SUCCESS"


def test_failure_reasons() -> None:
    failed = to_update(task("FAILURE", failReason="[Invalid parameter] Invalid value"))
    assert (failed.status, failed.error) == (TaskStatus.FAILED, "[Invalid parameter] Invalid value")
    assert to_update(task("FAILURE")).error == "midjourney-proxy reported FAILURE"
    assert to_update(task("CANCEL", failReason=None)).error == "midjourney-proxy reported CANCEL"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        json.dumps({"status": "SUCCESS"}).encode(),
        json.dumps({"id": "", "status": "SUCCESS"}).encode(),
        json.dumps({"id": 17, "status": "SUCCESS"}).encode(),
        json.dumps(task("DONE")).encode(),
        json.dumps(task(None)).encode(),  # type: ignore[arg-type]
    ],
)
def test_malformed_callbacks_are_payload_invalid(make_adapter: MakeAdapter, body: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        make_adapter(answer()).parse(body)


def test_parse_reads_a_callback(make_adapter: MakeAdapter) -> None:
    body = json.dumps(task("IN_PROGRESS", progress="57%"), ensure_ascii=False).encode()
    update = make_adapter(answer()).parse(body)
    assert (update.status, update.progress) == (TaskStatus.PROCESSING, 57)


# -- verify: there is no signature ----------------------------------------------------------


def test_verify_never_raises_and_dedupes_identical_bodies(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(answer())
    body = json.dumps(task("SUCCESS", imageUrl=IMAGE)).encode()
    first = adapter.verify(body, {}, now=1_700_000_000.9)
    again = adapter.verify(body, {"content-type": "application/json"}, now=1_700_000_100.0)
    assert first.delivery_id == again.delivery_id
    assert first.delivery_id.startswith("mj:")
    assert len(first.delivery_id) == 3 + 32
    int(first.delivery_id[3:], 16)
    assert first.timestamp == 1_700_000_000
    other = adapter.verify(json.dumps(task("FAILURE")).encode(), {}, now=1_700_000_000)
    assert other.delivery_id != first.delivery_id
    assert adapter.verify(b"", {}, now=0).delivery_id.startswith("mj:")  # even junk: parse decides


def test_adapter_contract(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(answer())
    assert adapter.name == "midjourney"
    assert adapter.signed_callbacks is False
    assert adapter.actions == frozenset({"upscale", "variation", "reroll"})
    assert issubclass(VendorParentNotReady, VendorRejected)


# -- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["midjourney", "midjourney/v6", "midjourney/6.1", "midjourney/v7", "niji", "niji/6"]
)
def test_models_accepted(make_adapter: MakeAdapter, model: str) -> None:
    assert make_adapter(answer()).model_error(model) is None


@pytest.mark.parametrize(
    "model", ["", "mj", "Midjourney", "midjourney/", "midjourney/latest", "niji/v", "dall-e-3"]
)
def test_models_refused(make_adapter: MakeAdapter, model: str) -> None:
    error = make_adapter(answer()).model_error(model)
    assert error is not None and "midjourney" in error


@pytest.mark.parametrize(
    ("model", "prompt"),
    [
        ("midjourney", "a red fox"),
        ("midjourney/v6.1", "a red fox --v 6.1"),
        ("niji", "a red fox --niji"),
        ("niji/v6", "a red fox --niji 6"),
    ],
)
async def test_model_becomes_a_prompt_parameter(
    make_adapter: MakeAdapter, model: str, prompt: str
) -> None:
    recorder = answer(body=submitted())
    await imagine(make_adapter(recorder), "  a red fox ", model=model)
    assert recorder.body["prompt"] == prompt


async def test_prompt_flags_conflicting_with_the_model_are_rejected(
    make_adapter: MakeAdapter,
) -> None:
    recorder = answer(body=submitted())
    adapter = make_adapter(recorder)
    with pytest.raises(VendorRejected, match="--v"):
        await imagine(adapter, "a fox --ar 3:2 --v 5", model="midjourney/v6")
    with pytest.raises(VendorRejected, match="model must be"):
        await imagine(adapter, "a fox", model="dall-e-3")
    await imagine(adapter, "a fox --niji 6")  # the plain model keeps the prompt's own choice
    assert recorder.body["prompt"] == "a fox --niji 6"


@pytest.mark.parametrize("prompt", [None, "", "   ", 7, ["a"]])
async def test_prompt_is_required(make_adapter: MakeAdapter, prompt: Any) -> None:
    recorder = answer(body=submitted())
    with pytest.raises(VendorRejected, match="prompt"):
        await imagine(make_adapter(recorder), prompt)
    assert recorder.requests == []


# -- submit ---------------------------------------------------------------------------------


async def test_submit_request_shape(make_adapter: MakeAdapter) -> None:
    recorder = answer(body=submitted())
    token = current_trace_id.set("4bf92f3577b34da6a3ce929d0e0e4736")
    try:
        update = await imagine(make_adapter(recorder))
    finally:
        current_trace_id.reset(token)
    request = recorder.only
    assert (request.method, str(request.url)) == ("POST", f"{BASE}/mj/submit/imagine")
    assert request.headers["mj-api-secret"] == SECRET
    assert request.headers["content-type"] == "application/json"
    assert request.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert recorder.body == {
        "prompt": "a red fox",
        "notifyHook": CALLBACK,
        "state": format_task_id(TASK_ID),
        "base64Array": [],
    }
    assert (update.vendor_task_id, update.status, update.raw_status) == (
        MJ_ID,
        TaskStatus.SUBMITTED,
        "NOT_START",
    )


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://mj.test", "http://mj.test/mj/submit/imagine"),
        ("http://mj.test/mj/", "http://mj.test/mj/submit/imagine"),
        ("http://relay.test/mj-relax/mj", "http://relay.test/mj-relax/mj/submit/imagine"),
    ],
)
async def test_base_with_or_without_the_context_path(base: str, url: str) -> None:
    recorder = answer(body=submitted())
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        await imagine(MidjourneyProxyAdapter(client, api_base=base, api_secret=None))
    assert str(recorder.only.url) == url


async def test_no_secret_no_header(make_adapter: MakeAdapter) -> None:
    recorder = answer(body=submitted())
    await imagine(make_adapter(recorder, secret=None))
    assert "mj-api-secret" not in recorder.only.headers


@pytest.mark.parametrize(
    ("code", "result"),
    [(1, MJ_ID), (22, MJ_ID), (21, MJ_ID), (1, int(MJ_ID))],
)
async def test_accepted_codes(make_adapter: MakeAdapter, code: int, result: Any) -> None:
    update = await imagine(make_adapter(answer(body=submitted(code, result))))
    assert (update.vendor_task_id, update.status) == (MJ_ID, TaskStatus.SUBMITTED)


async def test_existing_task_reports_its_state(make_adapter: MakeAdapter) -> None:
    body = submitted(21, properties={"status": "SUCCESS", "imageUrl": IMAGE})
    update = await change(make_adapter(answer(body=body)))
    assert (update.vendor_task_id, update.status, update.outputs) == (
        MJ_ID,
        TaskStatus.STORING,
        [IMAGE],
    )


@pytest.mark.parametrize("result", [None, "", True, [MJ_ID]])
async def test_accepted_without_an_id_is_unavailable(
    make_adapter: MakeAdapter, result: Any
) -> None:
    with pytest.raises(VendorUnavailable, match="without an id"):
        await imagine(make_adapter(answer(body=submitted(1, result))))


@pytest.mark.parametrize(
    ("code", "description"),
    [
        (4, "prompt不能为空"),
        (4, "base64格式错误"),
        (24, "可能包含敏感词"),
        (3, "数据未找到"),
    ],
)
async def test_permanent_codes_are_rejected(
    make_adapter: MakeAdapter, code: int, description: str
) -> None:
    body = {"code": code, "description": description, "result": None, "properties": {}}
    with pytest.raises(VendorRejected, match=description) as caught:
        await imagine(make_adapter(answer(body=body)))
    assert not isinstance(caught.value, VendorParentNotReady)


async def test_banned_prompt_names_the_word(make_adapter: MakeAdapter) -> None:
    body = {
        "code": 24,
        "description": "可能包含敏感词",
        "properties": {"promptEn": "nude body", "bannedWord": "nude"},
    }
    with pytest.raises(VendorRejected, match=r"\(nude\)"):
        await imagine(make_adapter(answer(body=body)))


async def test_full_queue_created_nothing(make_adapter: MakeAdapter) -> None:
    body = {"code": 23, "description": "队列已满, 请稍后尝试", "result": None}
    with pytest.raises(VendorUnavailable) as caught:
        await imagine(make_adapter(answer(body=body)))
    assert caught.value.not_accepted


@pytest.mark.parametrize(
    "body",
    [
        {"code": 9, "description": "提交失败, 系统异常"},
        {"code": 42, "description": "?"},
        {"description": "no code"},
        {"code": True},
        [],
        "ok",
    ],
)
async def test_unknown_answers_are_transient(make_adapter: MakeAdapter, body: Any) -> None:
    with pytest.raises(VendorUnavailable) as caught:
        await imagine(make_adapter(answer(body=body)))
    assert not caught.value.not_accepted  # the job may exist


async def test_http_errors(make_adapter: MakeAdapter) -> None:
    with pytest.raises(VendorUnavailable) as throttled:
        await imagine(make_adapter(answer(429, headers={"retry-after": "7"})))
    assert throttled.value.throttled and throttled.value.not_accepted
    assert throttled.value.retry_after == 7.0

    with pytest.raises(VendorUnavailable) as overloaded:
        await imagine(make_adapter(answer(503, headers={"retry-after": "1e9"})))
    assert overloaded.value.not_accepted and not overloaded.value.throttled
    assert overloaded.value.retry_after == 3600.0

    for status in (500, 502, 504):
        with pytest.raises(VendorUnavailable) as ambiguous:
            await imagine(make_adapter(answer(status)))
        assert not ambiguous.value.not_accepted

    with pytest.raises(VendorUnavailable, match="mj-api-secret"):
        await imagine(make_adapter(answer(403)))
    with pytest.raises(VendorUnavailable, match="mj-api-secret"):
        await imagine(make_adapter(answer(401)))

    not_json = Recorder(lambda _r: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(VendorUnavailable, match="non-JSON"):
        await imagine(make_adapter(not_json))

    missing = Recorder(lambda _r: httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(VendorRejected, match="404"):
        await imagine(make_adapter(missing))


async def test_transport_errors(make_adapter: MakeAdapter) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(VendorUnavailable) as refused:
        await imagine(make_adapter(refuse))
    assert refused.value.not_accepted
    with pytest.raises(VendorUnavailable) as timed_out:
        await imagine(make_adapter(hang))
    assert not timed_out.value.not_accepted  # the proxy may have taken it


# -- follow-up actions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "index", "expected"),
    [
        ("upscale", 2, {"action": "UPSCALE", "index": 2}),
        ("variation", 4, {"action": "VARIATION", "index": 4}),
        ("reroll", 0, {"action": "REROLL"}),
    ],
)
async def test_change_request_shape(
    make_adapter: MakeAdapter, action: str, index: int, expected: dict[str, Any]
) -> None:
    recorder = answer(body=submitted(1, "1712205500000042"))
    update = await change(make_adapter(recorder), action, index)
    request = recorder.only
    assert (request.method, str(request.url)) == ("POST", f"{BASE}/mj/submit/change")
    assert request.headers["mj-api-secret"] == SECRET
    assert recorder.body == {
        "taskId": MJ_ID,
        "notifyHook": CALLBACK,
        "state": format_task_id(TASK_ID),
        **expected,
    }
    assert (update.vendor_task_id, update.status) == ("1712205500000042", TaskStatus.SUBMITTED)


@pytest.mark.parametrize(
    ("action", "index", "match"),
    [
        ("zoom", 1, "no action"),
        ("UPSCALE", 1, "no action"),
        ("upscale", 0, "1 to 4"),
        ("variation", 5, "1 to 4"),
    ],
)
async def test_bad_actions_are_refused_before_calling(
    make_adapter: MakeAdapter, action: str, index: int, match: str
) -> None:
    recorder = answer(body=submitted())
    with pytest.raises(VendorRejected, match=match):
        await change(make_adapter(recorder), action, index)
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("status", "description"),
    [
        (200, "关联任务状态错误"),  # novicezk and trueai
        (400, "task_status_not_success"),  # new-api in front of a proxy
        (200, "task_status_not_success"),
    ],
)
async def test_parent_not_ready(make_adapter: MakeAdapter, status: int, description: str) -> None:
    body = {"code": 4, "description": description, "result": None, "properties": {}}
    with pytest.raises(VendorParentNotReady, match=MJ_ID):
        await change(make_adapter(answer(status, body)))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"code": 4, "description": "关联任务不允许执行变化"}),
        (200, {"code": 4, "description": "action参数错误"}),
        (404, {"code": 3, "description": "关联任务不存在或已失效"}),  # trueai answers 404
        (200, {"code": 3, "description": "关联任务不存在或已失效"}),
    ],
)
async def test_other_change_refusals_are_permanent(
    make_adapter: MakeAdapter, status: int, body: dict[str, Any]
) -> None:
    with pytest.raises(VendorRejected) as caught:
        await change(make_adapter(answer(status, body)))
    assert not isinstance(caught.value, VendorParentNotReady)


async def test_imagine_never_says_parent_not_ready(make_adapter: MakeAdapter) -> None:
    body = {"code": 4, "description": "关联任务状态错误"}
    with pytest.raises(VendorRejected) as caught:
        await imagine(make_adapter(answer(body=body)))
    assert not isinstance(caught.value, VendorParentNotReady)


# -- fetch and cancel -----------------------------------------------------------------------


async def test_fetch_request_and_mapping(make_adapter: MakeAdapter) -> None:
    recorder = answer(body=task("SUCCESS", imageUrl=IMAGE, progress="100%"))
    update = await make_adapter(recorder).fetch(MJ_ID, model="midjourney")
    request = recorder.only
    assert (request.method, str(request.url)) == ("GET", f"{BASE}/mj/task/{MJ_ID}/fetch")
    assert request.headers["mj-api-secret"] == SECRET
    assert (update.status, update.outputs, update.progress) == (TaskStatus.STORING, [IMAGE], 100)


async def test_fetch_escapes_the_id(make_adapter: MakeAdapter) -> None:
    recorder = answer(body=task(id="a/b"))
    await make_adapter(recorder).fetch("a/b", model="midjourney")
    assert recorder.only.url.raw_path == b"/mj/task/a%2Fb/fetch"


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200),  # novicezk: Spring's empty answer to a null task
        httpx.Response(200, text="null"),
        httpx.Response(204),  # trueai
        httpx.Response(404, json={"code": 3, "description": "not found"}),
        httpx.Response(404, text="<html>Not Found</html>"),
    ],
)
async def test_fetch_of_a_lost_task_is_rejected(
    make_adapter: MakeAdapter, response: httpx.Response
) -> None:
    with pytest.raises(VendorRejected, match=MJ_ID):
        await make_adapter(Recorder(lambda _r: response)).fetch(MJ_ID, model="midjourney")


@pytest.mark.parametrize("body", [task("WHAT"), task(id="1712205491372999"), {"code": 1}, ["x"]])
async def test_fetch_of_something_else_is_unavailable(make_adapter: MakeAdapter, body: Any) -> None:
    with pytest.raises(VendorUnavailable):
        await make_adapter(answer(body=body)).fetch(MJ_ID, model="midjourney")


async def test_fetch_errors(make_adapter: MakeAdapter) -> None:
    with pytest.raises(VendorUnavailable) as throttled:
        await make_adapter(answer(429)).fetch(MJ_ID, model="midjourney")
    assert throttled.value.throttled
    with pytest.raises(VendorRejected, match="400"):
        await make_adapter(answer(400, {"code": 4})).fetch(MJ_ID, model="midjourney")


async def test_cancel_is_a_no_op(make_adapter: MakeAdapter) -> None:
    recorder = answer(body={})
    adapter = make_adapter(recorder)
    await adapter.cancel(MJ_ID, model="midjourney")
    await adapter.prepare()
    assert recorder.requests == []


# -- trueai-org/midjourney-proxy (issue 16.1) -----------------------------------------------
# v10 removed /mj/submit/change: a follow-up presses one of the parent task's `buttons` with
# POST /mj/submit/action {taskId, customId}; code 21 there is "Waiting for window confirm",
# the new task MODAL until POST /mj/submit/modal confirms it (SubmitController.cs,
# TaskService.cs); an unknown task's fetch is an empty 204 (TaskController.Fetch).

HASH = "3dbbd469-36af-4a0f-8f02-df6c579e7011"
GRID_BUTTONS = [
    *({"customId": f"MJ::JOB::upsample::{i}::{HASH}", "label": f"U{i}"} for i in range(1, 5)),
    {"customId": f"MJ::JOB::reroll::0::{HASH}::SOLO", "emoji": "🔄", "label": ""},
    *({"customId": f"MJ::JOB::variation::{i}::{HASH}", "label": f"V{i}"} for i in range(1, 5)),
]
CHILD = "1712205500000042"


class TrueAi:
    """A trueai proxy for one parent task: fetch, action, modal; every request kept."""

    def __init__(self, parent: dict[str, Any] | None, action: dict[str, Any]) -> None:
        self.parent = parent
        self.action = action
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.endswith("/fetch"):
            return (
                httpx.Response(204)
                if self.parent is None
                else httpx.Response(200, json=self.parent)
            )
        if path == "/mj/submit/action":
            return httpx.Response(200, json=self.action)
        if path == "/mj/submit/modal":
            return httpx.Response(200, json=submitted(1, CHILD))
        return httpx.Response(404)

    def sent(self, path: str) -> dict[str, Any]:
        (request,) = [r for r in self.requests if r.url.path == path]
        body: dict[str, Any] = json.loads(request.content)
        return body


def grid(status: str = "SUCCESS", **fields: Any) -> dict[str, Any]:
    return task(status, imageUrl=IMAGE, buttons=GRID_BUTTONS, **fields)


@pytest.mark.parametrize("dialect", ["trueai", "auto"])
@pytest.mark.parametrize(
    ("action", "index", "custom_id"),
    [
        ("upscale", 2, f"MJ::JOB::upsample::2::{HASH}"),
        ("variation", 4, f"MJ::JOB::variation::4::{HASH}"),
        ("reroll", 0, f"MJ::JOB::reroll::0::{HASH}::SOLO"),
    ],
)
async def test_a_follow_up_presses_the_parents_button(
    make_adapter: MakeAdapter, dialect: str, action: str, index: int, custom_id: str
) -> None:
    proxy = TrueAi(grid(), submitted(1, CHILD))
    update = await change(make_adapter(proxy, dialect=dialect), action, index)
    assert [r.url.path for r in proxy.requests] == [
        f"/mj/task/{MJ_ID}/fetch",
        "/mj/submit/action",
    ]
    assert proxy.sent("/mj/submit/action") == {
        "taskId": MJ_ID,
        "customId": custom_id,
        "notifyHook": CALLBACK,
        "state": format_task_id(TASK_ID),
    }
    assert all(r.headers["mj-api-secret"] == SECRET for r in proxy.requests)
    assert (update.vendor_task_id, update.status) == (CHILD, TaskStatus.SUBMITTED)


async def test_code_21_at_trueai_is_a_window_to_confirm_not_an_existing_task(
    make_adapter: MakeAdapter,
) -> None:
    waiting = {
        "code": 21,
        "description": "Waiting for window confirm",
        "result": CHILD,
        "properties": {"finalPrompt": "a red fox --v 6.1", "remix": True},
    }
    proxy = TrueAi(grid(), waiting)
    update = await change(make_adapter(proxy, dialect="trueai"), "variation", 1)
    assert [r.url.path for r in proxy.requests][1:] == ["/mj/submit/action", "/mj/submit/modal"]
    assert proxy.sent("/mj/submit/modal") == {
        "taskId": CHILD,
        "prompt": "a red fox --v 6.1",
        "notifyHook": CALLBACK,
        "state": format_task_id(TASK_ID),
    }
    assert (update.vendor_task_id, update.status) == (CHILD, TaskStatus.SUBMITTED)


async def test_code_21_at_novicezk_is_the_existing_task(make_adapter: MakeAdapter) -> None:
    existing = submitted(21, CHILD, properties={"status": "SUCCESS", "imageUrl": IMAGE})
    update = await change(make_adapter(answer(body=existing), dialect="novicezk"))
    assert (update.vendor_task_id, update.status, update.outputs) == (
        CHILD,
        TaskStatus.STORING,
        [IMAGE],
    )


async def test_auto_uses_change_for_a_parent_without_buttons(make_adapter: MakeAdapter) -> None:
    def novicezk(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/fetch"):
            return httpx.Response(200, json=task("SUCCESS", imageUrl=IMAGE))
        return httpx.Response(200, json=submitted(1, CHILD))

    recorder = Recorder(novicezk)
    update = await change(make_adapter(recorder, dialect="auto"))
    assert [r.url.path for r in recorder.requests] == [
        f"/mj/task/{MJ_ID}/fetch",
        "/mj/submit/change",
    ]
    assert update.vendor_task_id == CHILD


@pytest.mark.parametrize("status", ["IN_PROGRESS", "MODAL", "NOT_START"])
async def test_a_parent_not_success_at_trueai_is_not_ready_yet(
    make_adapter: MakeAdapter, status: str
) -> None:
    proxy = TrueAi(grid(status), submitted(1, CHILD))
    with pytest.raises(VendorParentNotReady, match=MJ_ID):
        await change(make_adapter(proxy, dialect="trueai"))
    assert [r.url.path for r in proxy.requests] == [f"/mj/task/{MJ_ID}/fetch"]


async def test_a_parent_without_the_button_is_refused(make_adapter: MakeAdapter) -> None:
    upscaled = task("SUCCESS", imageUrl=IMAGE, buttons=[{"customId": f"MJ::Inpaint::1::{HASH}"}])
    with pytest.raises(VendorRejected, match="no button"):
        await change(make_adapter(TrueAi(upscaled, submitted()), dialect="trueai"))


async def test_a_parent_the_proxy_forgot_is_refused_for_good(make_adapter: MakeAdapter) -> None:
    """trueai answers an unknown id's fetch with an empty 204."""
    with pytest.raises(VendorRejected, match="does not know") as caught:
        await change(make_adapter(TrueAi(None, submitted()), dialect="trueai"))
    assert not isinstance(caught.value, VendorParentNotReady)


async def test_fetch_of_an_unknown_task_answered_204_is_lost(make_adapter: MakeAdapter) -> None:
    with pytest.raises(VendorRejected, match="does not know"):
        await make_adapter(TrueAi(None, submitted()), dialect="trueai").fetch(MJ_ID)


@pytest.mark.parametrize(
    ("status", "ours"), [("MODAL", TaskStatus.PROCESSING), ("CANCEL", TaskStatus.FAILED)]
)
def test_trueai_statuses(status: str, ours: TaskStatus) -> None:
    assert to_update(task(status)).status is ours


def test_an_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match="dialect"):
        MidjourneyProxyAdapter(httpx.AsyncClient(), api_base=BASE, api_secret=None, dialect="v9")
