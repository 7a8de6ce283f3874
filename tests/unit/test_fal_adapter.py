"""The fal adapter against a mocked queue API: requests, status mapping, results, errors.

Every HTTP exchange goes through ``httpx.MockTransport``; nothing leaves the process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from common.errors import PayloadInvalid, VendorRejected, VendorUnavailable
from common.states import TaskStatus
from common.tracing import current_trace_id
from vendors.fal import _STATUS_MAP, _WEBHOOK_STATUS_MAP, FalAdapter, app_id, progress_from_logs

BASE = "http://queue.fal.test"
KEY = "fal-key-123"
MODEL = "fal-ai/flux/dev"
RID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
CALLBACK = "https://taskhook.test/hooks/fal/tok123?x=1&y=2"
STATUS_URL = f"{BASE}/fal-ai/flux/requests/{RID}/status?logs=1"
RESULT_URL = f"{BASE}/fal-ai/flux/requests/{RID}"
IMAGE = "https://v3.fal.media/files/koala/abc.png"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that keeps every request and answers from `routes` by URL."""

    def __init__(self, respond: Handler | dict[str, httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if callable(self.respond):
            return self.respond(request)
        return self.respond[str(request.url)]

    @property
    def urls(self) -> list[str]:
        return [f"{r.method} {r.url}" for r in self.requests]


def answer(status: int = 200, body: Any = None, **kwargs: Any) -> Recorder:
    return Recorder(lambda _request: httpx.Response(status, json=body, **kwargs))


def completed(result: httpx.Response, status: dict[str, Any] | None = None) -> Recorder:
    return Recorder(
        {
            STATUS_URL: httpx.Response(200, json=status or {"status": "COMPLETED", "logs": []}),
            RESULT_URL: result,
        }
    )


MakeAdapter = Callable[[Handler], FalAdapter]


@pytest.fixture
async def make_adapter() -> AsyncIterator[MakeAdapter]:
    clients: list[httpx.AsyncClient] = []

    def make(handler: Handler) -> FalAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        return FalAdapter(client, api_key=KEY, queue_base=BASE + "/")

    yield make
    for client in clients:
        await client.aclose()


async def submit(adapter: FalAdapter, model: str = MODEL) -> Any:
    return await adapter.submit(
        task_id=uuid.uuid4(),
        model=model,
        input={"prompt": "a red fox", "num_images": 2},
        callback_url=CALLBACK,
    )


# --- the tables -----------------------------------------------------------------------------


def test_status_map_covers_the_queue_statuses() -> None:
    assert dict(_STATUS_MAP) == {
        "IN_QUEUE": TaskStatus.SUBMITTED,
        "IN_PROGRESS": TaskStatus.PROCESSING,
        "COMPLETED": TaskStatus.STORING,
    }
    assert dict(_WEBHOOK_STATUS_MAP) == {"OK": TaskStatus.STORING, "ERROR": TaskStatus.FAILED}


@pytest.mark.parametrize(
    ("model", "app"),
    [
        ("fal-ai/flux/dev", "fal-ai/flux"),
        ("fal-ai/flux-pro/v1.1-ultra/redux", "fal-ai/flux-pro"),
        ("fal-ai/fast-sdxl", "fal-ai/fast-sdxl"),
        ("workflows/fal-ai/sdxl-sticker", "workflows/fal-ai/sdxl-sticker"),
        ("comfy/owner/app/path", "comfy/owner/app"),
    ],
)
def test_app_id_is_owner_and_app_only(model: str, app: str) -> None:
    assert app_id(model) == app


@pytest.mark.parametrize(
    ("logs", "progress"),
    [
        (None, None),
        ([], None),
        ([{"message": "Loading model"}], None),
        ([{"message": " 25%|██▌       | 1/4"}, {"message": " 75%|███████▌  | 3/4"}], 75),
        ([{"message": " 50%|█████     | 2/4"}, {"message": "saving"}], 50),
        ([{"message": "progress 12.5 %"}], 12),
        # A running request's 100 % is one loop's end, not the request's (issue 16.6).
        ([{"message": "999%"}], 99),
        ([{"message": "100%|██████████| 4/4"}, {"message": "  0%|          | 0/2"}], 0),
        ([{"message": "100%|██████████| 4/4"}], 99),
        ("50%", None),
    ],
)
def test_progress_comes_from_the_latest_log_line_with_a_percentage(
    logs: Any, progress: int | None
) -> None:
    assert progress_from_logs(logs) == progress


def test_adapter_shape(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(answer())
    assert adapter.name == "fal"
    assert adapter.signed_callbacks is True
    assert adapter.actions == frozenset()


@pytest.mark.parametrize(
    "model",
    ["fal-ai/flux/dev", "fal-ai/fast-sdxl", "owner/app/a/b", "workflows/fal-ai/sdxl-sticker"],
)
def test_model_ids_accepted(make_adapter: MakeAdapter, model: str) -> None:
    assert make_adapter(answer()).model_error(model) is None


@pytest.mark.parametrize(
    "model", ["flux", "", "fal-ai/", "/fal-ai/flux", "fal-ai//flux", "a b/c", "workflows/x"]
)
def test_model_ids_refused(make_adapter: MakeAdapter, model: str) -> None:
    assert make_adapter(answer()).model_error(model)


# --- submit ---------------------------------------------------------------------------------


async def test_submit_posts_the_input_with_the_webhook_query(make_adapter: MakeAdapter) -> None:
    recorder = answer(
        200,
        {
            "request_id": RID,
            "response_url": RESULT_URL,
            "status_url": RESULT_URL + "/status",
            "cancel_url": RESULT_URL + "/cancel",
        },
    )
    adapter = make_adapter(recorder)
    token = current_trace_id.set("4bf92f3577b34da6a3ce929d0e0e4736")
    try:
        update = await submit(adapter)
    finally:
        current_trace_id.reset(token)

    (request,) = recorder.requests
    url = urlsplit(str(request.url))
    assert request.method == "POST"
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{BASE}/fal-ai/flux/dev"
    assert parse_qs(url.query) == {"fal_webhook": [CALLBACK]}
    assert json.loads(request.content) == {"prompt": "a red fox", "num_images": 2}
    assert request.headers["authorization"] == f"Key {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert "idempotency-key" not in request.headers  # fal has none
    assert update.vendor_task_id == RID
    assert update.status is TaskStatus.SUBMITTED
    assert update.raw_status == "IN_QUEUE"


@pytest.mark.parametrize("body", [{}, {"request_id": ""}, {"request_id": 5}, ["x"]])
async def test_submit_without_a_request_id_is_unavailable(
    make_adapter: MakeAdapter, body: Any
) -> None:
    with pytest.raises(VendorUnavailable):
        await submit(make_adapter(answer(200, body)))


async def test_submit_action_is_rejected(make_adapter: MakeAdapter) -> None:
    with pytest.raises(VendorRejected):
        await make_adapter(answer()).submit_action(
            task_id=uuid.uuid4(),
            parent_vendor_task_id=RID,
            action="upscale",
            index=1,
            callback_url=CALLBACK,
        )


# --- fetch ----------------------------------------------------------------------------------


async def test_fetch_in_queue_is_submitted(make_adapter: MakeAdapter) -> None:
    recorder = answer(202, {"status": "IN_QUEUE", "queue_position": 3})
    update = await make_adapter(recorder).fetch(RID, model=MODEL)
    assert recorder.urls == [f"GET {STATUS_URL}"]
    assert recorder.requests[0].headers["authorization"] == f"Key {KEY}"
    assert (update.status, update.raw_status, update.progress) == (
        TaskStatus.SUBMITTED,
        "IN_QUEUE",
        None,
    )
    assert update.vendor_task_id == RID


async def test_fetch_in_progress_reads_progress_from_the_logs(make_adapter: MakeAdapter) -> None:
    logs = [
        {"message": "Loading", "level": "INFO", "source": "user", "timestamp": "t"},
        {"message": " 50%|█████     | 2/4", "level": "INFO", "source": "user", "timestamp": "t"},
    ]
    recorder = answer(202, {"status": "IN_PROGRESS", "logs": logs})
    update = await make_adapter(recorder).fetch(RID, model=MODEL)
    assert (update.status, update.progress) == (TaskStatus.PROCESSING, 50)


async def test_fetch_in_progress_without_logs_has_no_progress(make_adapter: MakeAdapter) -> None:
    update = await make_adapter(answer(202, {"status": "IN_PROGRESS", "logs": None})).fetch(
        RID, model=MODEL
    )
    assert (update.status, update.progress) == (TaskStatus.PROCESSING, None)


async def test_fetch_completed_reads_the_result(make_adapter: MakeAdapter) -> None:
    output = {
        "images": [
            {"url": IMAGE, "content_type": "image/png", "width": 1024, "height": 1024},
            {"url": IMAGE + "?2", "content_type": "image/png"},
        ],
        "seed": 42,
    }
    recorder = completed(httpx.Response(200, json=output))
    update = await make_adapter(recorder).fetch(RID, model=MODEL)
    assert recorder.urls == [f"GET {STATUS_URL}", f"GET {RESULT_URL}"]
    assert update.status is TaskStatus.STORING
    assert update.outputs == [IMAGE, IMAGE + "?2"]
    assert update.vendor_task_id == RID


async def test_fetch_namespaced_model_uses_three_segments(make_adapter: MakeAdapter) -> None:
    recorder = answer(202, {"status": "IN_QUEUE"})
    await make_adapter(recorder).fetch(RID, model="workflows/fal-ai/sdxl-sticker")
    assert recorder.urls == [
        f"GET {BASE}/workflows/fal-ai/sdxl-sticker/requests/{RID}/status?logs=1"
    ]


@pytest.mark.parametrize(
    "output", [{"images": []}, {"seed": 1}, {"images": [{"url": "data:image/png;base64,AA"}]}]
)
async def test_fetch_completed_without_images_is_failed(
    make_adapter: MakeAdapter, output: Any
) -> None:
    update = await make_adapter(completed(httpx.Response(200, json=output))).fetch(RID, model=MODEL)
    assert update.status is TaskStatus.FAILED
    assert update.error


async def test_fetch_completed_single_image_output(make_adapter: MakeAdapter) -> None:
    output = {"image": {"url": IMAGE}}
    update = await make_adapter(completed(httpx.Response(200, json=output))).fetch(RID, model=MODEL)
    assert update.outputs == [IMAGE]


async def test_completed_with_an_error_in_the_status_fails_without_a_result_call(
    make_adapter: MakeAdapter,
) -> None:
    recorder = answer(
        200, {"status": "COMPLETED", "error": "Request timed out", "error_type": "request_timeout"}
    )
    update = await make_adapter(recorder).fetch(RID, model=MODEL)
    assert len(recorder.requests) == 1
    assert update.status is TaskStatus.FAILED
    assert update.error == "Request timed out (request_timeout)"


async def test_result_validation_error_is_failed_not_raised(make_adapter: MakeAdapter) -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]
    update = await make_adapter(completed(httpx.Response(422, json={"detail": detail}))).fetch(
        RID, model=MODEL
    )
    assert update.status is TaskStatus.FAILED
    assert update.raw_status == "COMPLETED"
    assert update.error == "prompt: field required"


async def test_result_model_error_500_with_detail_is_failed(make_adapter: MakeAdapter) -> None:
    update = await make_adapter(
        completed(httpx.Response(500, json={"detail": "CUDA out of memory"}))
    ).fetch(RID, model=MODEL)
    assert (update.status, update.error) == (TaskStatus.FAILED, "CUDA out of memory")


async def test_result_with_a_declared_error_type_is_failed(make_adapter: MakeAdapter) -> None:
    response = httpx.Response(
        503,
        headers={"X-Fal-Error-Type": "runner_scheduling_failure"},
        json={"detail": "No runner", "error_type": "runner_scheduling_failure"},
    )
    update = await make_adapter(completed(response)).fetch(RID, model=MODEL)
    assert update.status is TaskStatus.FAILED
    assert update.error == "No runner (runner_scheduling_failure)"


@pytest.mark.parametrize(
    ("response", "not_accepted"),
    [
        (httpx.Response(503, json={"detail": "overloaded"}), True),
        (httpx.Response(429, json={"detail": "slow down"}), True),
        (httpx.Response(502, text="<html>nginx</html>"), False),
        (httpx.Response(401, json={"detail": "no key"}), False),
        (httpx.Response(307, headers={"location": "https://elsewhere.test"}), False),
    ],
    ids=["503", "429", "502-ingress", "401", "redirect"],
)
async def test_result_overload_or_ingress_errors_are_retried(
    make_adapter: MakeAdapter, response: httpx.Response, not_accepted: bool
) -> None:
    with pytest.raises(VendorUnavailable) as caught:
        await make_adapter(completed(response)).fetch(RID, model=MODEL)
    assert caught.value.not_accepted is not_accepted


@pytest.mark.parametrize("body", [{"status": "DONE"}, {}, ["COMPLETED"], {"status": None}])
async def test_unknown_status_is_unavailable(make_adapter: MakeAdapter, body: Any) -> None:
    with pytest.raises(VendorUnavailable):
        await make_adapter(answer(200, body)).fetch(RID, model=MODEL)


async def test_fetch_without_a_usable_model_is_rejected(make_adapter: MakeAdapter) -> None:
    recorder = answer(200, {"status": "IN_QUEUE"})
    with pytest.raises(VendorRejected):
        await make_adapter(recorder).fetch(RID, model="")
    assert recorder.requests == []


# --- fal's own URLs (issue 16.5) -------------------------------------------------------------
# "Do not build these URLs yourself. Use the status_url, response_url, and cancel_url fields
# from the submit response." https://fal.ai/docs/api-reference/inference-api

GIVEN = {
    "status_url": f"{BASE}/q/fal-ai/flux/requests/{RID}/status",
    "response_url": f"{BASE}/q/fal-ai/flux/requests/{RID}",
    "cancel_url": f"{BASE}/q/fal-ai/flux/requests/{RID}/cancel",
}


async def test_submit_keeps_the_urls_fal_gives(make_adapter: MakeAdapter) -> None:
    update = await submit(make_adapter(answer(200, {"request_id": RID, **GIVEN})))
    assert update.urls == GIVEN


async def test_fetch_and_cancel_use_the_given_urls(make_adapter: MakeAdapter) -> None:
    recorder = Recorder(
        {
            f"{GIVEN['status_url']}?logs=1": httpx.Response(200, json={"status": "COMPLETED"}),
            GIVEN["response_url"]: httpx.Response(200, json={"images": [{"url": IMAGE}]}),
            GIVEN["cancel_url"]: httpx.Response(400, json={"status": "ALREADY_COMPLETED"}),
        }
    )
    adapter = make_adapter(recorder)
    update = await adapter.fetch(RID, model=MODEL, urls=GIVEN)
    await adapter.cancel(RID, model=MODEL, urls=GIVEN)
    assert update.outputs == [IMAGE]
    assert recorder.urls == [
        f"GET {GIVEN['status_url']}?logs=1",
        f"GET {GIVEN['response_url']}",
        f"PUT {GIVEN['cancel_url']}",
    ]


@pytest.mark.parametrize(
    "urls",
    [
        # elsewhere: our key must not go there
        {k: v.replace(BASE, "https://evil.test") for k, v in GIVEN.items()},
        {k: v.replace("http://", "https://") for k, v in GIVEN.items()},
        # another request's
        {k: v.replace(RID, "someone-else") for k, v in GIVEN.items()},
        # incomplete
        {"status_url": GIVEN["status_url"]},
    ],
)
async def test_urls_not_fit_for_our_key_fall_back_to_the_built_form(
    make_adapter: MakeAdapter, urls: dict[str, str]
) -> None:
    recorder = answer(202, {"status": "IN_QUEUE"})
    await make_adapter(recorder).fetch(RID, model=MODEL, urls=urls)
    assert recorder.urls == [f"GET {STATUS_URL}"]


# --- results fal deleted (issue 16.4) ---------------------------------------------------------


async def test_a_completed_request_whose_result_is_gone_is_result_expired(
    make_adapter: MakeAdapter,
) -> None:
    """fal keeps a result an hour, 6 minutes when it is 10 KB or more."""
    recorder = completed(httpx.Response(404, json={"detail": "Request not found"}))
    update = await make_adapter(recorder).fetch(RID, model=MODEL)
    assert (update.status, update.error_code) == (TaskStatus.FAILED, "result_expired")


async def test_a_model_error_declared_as_such_is_not_an_expiry(make_adapter: MakeAdapter) -> None:
    result = httpx.Response(404, headers={"x-fal-error-type": "file_not_found"}, json={})
    update = await make_adapter(completed(result)).fetch(RID, model=MODEL)
    assert (update.status, update.error_code) == (TaskStatus.FAILED, None)


# --- cancel ---------------------------------------------------------------------------------


async def test_cancel_puts_to_the_cancel_url(make_adapter: MakeAdapter) -> None:
    recorder = answer(202, {"status": "CANCELLATION_REQUESTED"})
    await make_adapter(recorder).cancel(RID, model=MODEL)
    assert recorder.urls == [f"PUT {BASE}/fal-ai/flux/requests/{RID}/cancel"]
    assert recorder.requests[0].headers["authorization"] == f"Key {KEY}"


async def test_cancel_of_a_finished_request_is_fine(make_adapter: MakeAdapter) -> None:
    """Nothing left to stop is not an error (the same call with 400 and no status is)."""
    await make_adapter(answer(400, {"status": "ALREADY_COMPLETED"})).cancel(RID, model=MODEL)
    with pytest.raises(VendorRejected):
        await make_adapter(answer(400, {"detail": "bad"})).cancel(RID, model=MODEL)


async def test_cancel_of_an_unknown_request_is_rejected(make_adapter: MakeAdapter) -> None:
    with pytest.raises(VendorRejected):
        await make_adapter(answer(404, {"status": "NOT_FOUND"})).cancel(RID, model=MODEL)


# --- HTTP errors ----------------------------------------------------------------------------

Operation = Callable[[FalAdapter], Awaitable[Any]]

OPERATIONS: dict[str, Operation] = {
    "submit": lambda adapter: submit(adapter),
    "fetch": lambda adapter: adapter.fetch(RID, model=MODEL),
    "cancel": lambda adapter: adapter.cancel(RID, model=MODEL),
}
operations = pytest.mark.parametrize("operation", list(OPERATIONS.values()), ids=list(OPERATIONS))


@operations
async def test_429_is_throttled_with_retry_after(
    make_adapter: MakeAdapter, operation: Operation
) -> None:
    recorder = answer(429, {"detail": "Rate limit exceeded"}, headers={"Retry-After": "7"})
    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(recorder))
    assert caught.value.retry_after == 7.0
    assert caught.value.throttled
    assert caught.value.not_accepted
    assert len(recorder.requests) == 1


@operations
@pytest.mark.parametrize(("status", "not_accepted"), [(500, False), (502, False), (503, True)])
async def test_5xx_is_unavailable(
    make_adapter: MakeAdapter, operation: Operation, status: int, not_accepted: bool
) -> None:
    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(answer(status, {"detail": "trouble"})))
    assert caught.value.not_accepted is not_accepted
    assert not caught.value.throttled
    assert str(status) in str(caught.value)


@operations
@pytest.mark.parametrize(
    ("error", "not_accepted"),
    [
        (httpx.ConnectError("connection refused"), True),
        (httpx.ConnectTimeout("connect timed out"), True),
        (httpx.ReadTimeout("timed out"), False),
    ],
    ids=["connect", "connect-timeout", "read-timeout"],
)
async def test_transport_errors_are_unavailable(
    make_adapter: MakeAdapter, operation: Operation, error: Exception, not_accepted: bool
) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(handler))
    assert caught.value.not_accepted is not_accepted


@operations
@pytest.mark.parametrize("status", [401, 403])
async def test_our_key_refused_is_unavailable_not_rejected(
    make_adapter: MakeAdapter, operation: Operation, status: int
) -> None:
    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(answer(status, {"detail": "Unauthorized"})))
    assert not caught.value.not_accepted


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_submit_client_errors_are_rejected_with_the_detail(
    make_adapter: MakeAdapter, status: int
) -> None:
    detail = [{"loc": ["body", "num_images"], "msg": "too many", "type": "value_error"}]
    with pytest.raises(VendorRejected) as caught:
        await submit(make_adapter(answer(status, {"detail": detail})))
    assert "num_images: too many" in str(caught.value)


async def test_non_json_success_is_unavailable(make_adapter: MakeAdapter) -> None:
    recorder = Recorder(lambda _r: httpx.Response(200, text="<html>"))
    with pytest.raises(VendorUnavailable):
        await submit(make_adapter(recorder))


# --- webhook bodies -------------------------------------------------------------------------


def body(**fields: Any) -> bytes:
    return json.dumps({"request_id": RID, "gateway_request_id": RID, **fields}).encode()


def test_parse_ok_with_images_is_storing(make_adapter: MakeAdapter) -> None:
    payload = {"images": [{"url": IMAGE, "content_type": "image/png"}], "seed": 1}
    update = make_adapter(answer()).parse(body(status="OK", payload=payload))
    assert (update.vendor_task_id, update.status, update.raw_status) == (
        RID,
        TaskStatus.STORING,
        "OK",
    )
    assert update.outputs == [IMAGE]


@pytest.mark.parametrize("payload", [{"images": []}, {"seed": 3}, None])
def test_parse_ok_without_an_image_is_failed(make_adapter: MakeAdapter, payload: Any) -> None:
    update = make_adapter(answer()).parse(body(status="OK", payload=payload))
    assert update.status is TaskStatus.FAILED
    assert update.raw_status == "OK"
    assert update.error


def test_parse_error_is_failed_with_the_error_text(make_adapter: MakeAdapter) -> None:
    payload = {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "x"}]}
    update = make_adapter(answer()).parse(
        body(status="ERROR", error="Invalid status code: 422", payload=payload)
    )
    assert update.status is TaskStatus.FAILED
    assert update.error == "Invalid status code: 422: prompt: field required"


def test_a_webhook_whose_payload_fal_could_not_deliver_is_a_hint_to_confirm(
    make_adapter: MakeAdapter,
) -> None:
    """ "payload is set to null and a payload_error will include details" (fal's webhooks page):
    the result must be read from the queue at once, not wait for a poll (issue 16.4)."""
    raw = body(status="OK", payload=None, payload_error="Object of type bytes is not serializable")
    update = make_adapter(answer()).parse(raw)
    assert (update.vendor_task_id, update.status, update.confirm) == (RID, TaskStatus.STORING, True)
    assert update.outputs is None


def test_parse_error_without_text_still_says_something(make_adapter: MakeAdapter) -> None:
    update = make_adapter(answer()).parse(body(status="ERROR", payload=None))
    assert update.status is TaskStatus.FAILED
    assert update.error


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"status": "OK", "payload": {}}).encode(),
        json.dumps({"request_id": RID, "status": "COMPLETED"}).encode(),
        json.dumps({"request_id": RID}).encode(),
    ],
)
def test_parse_malformed_is_payload_invalid(make_adapter: MakeAdapter, raw: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        make_adapter(answer()).parse(raw)
