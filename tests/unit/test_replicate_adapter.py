"""The Replicate adapter against a mocked HTTP API: requests, status mapping, errors, secrets.

Every HTTP exchange goes through ``httpx.MockTransport``; nothing leaves the process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from common.errors import (
    PayloadInvalid,
    SignatureInvalid,
    VendorRejected,
    VendorUnavailable,
    VerificationUnavailable,
)
from common.states import TaskStatus
from simulator.signing import webhook_headers
from vendors.replicate import EVENTS_FILTER, ReplicateAdapter, to_update

BASE = "http://replicate.test/v1"
TOKEN = "r8_test_token"
CALLBACK = "https://taskhook.test/hooks/replicate/tok123"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_QUFBQUFBQUFBQUFBQUFBQQ=="
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
TS = 1_700_000_000

Handler = Callable[[httpx.Request], httpx.Response]


def prediction(status: str = "starting", **fields: Any) -> dict[str, Any]:
    return {"id": "pred_123", "status": status, **fields}


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


def answer(status: int = 201, body: Any = None, **kwargs: Any) -> Recorder:
    payload = prediction() if body is None else body
    return Recorder(lambda _request: httpx.Response(status, json=payload, **kwargs))


MakeAdapter = Callable[..., ReplicateAdapter]


@pytest.fixture
async def make_adapter() -> AsyncIterator[MakeAdapter]:
    clients: list[httpx.AsyncClient] = []

    def make(
        handler: Handler, *, secrets: tuple[str, ...] = (), base: str = BASE
    ) -> ReplicateAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        return ReplicateAdapter(
            client, api_token=TOKEN, api_base=base, webhook_secrets=secrets, tolerance=300
        )

    yield make
    for client in clients:
        await client.aclose()


async def submit(adapter: ReplicateAdapter, model: str, task_id: uuid.UUID | None = None) -> Any:
    return await adapter.submit(
        task_id=task_id or uuid.uuid4(),
        model=model,
        input={"prompt": "a red fox", "steps": 4},
        callback_url=CALLBACK,
    )


# --- submit ---------------------------------------------------------------------------------


async def test_submit_by_model_posts_to_the_model_endpoint(make_adapter: MakeAdapter) -> None:
    recorder = answer(201, prediction("starting"))
    adapter = make_adapter(recorder)
    task_id = uuid.uuid4()

    update = await submit(adapter, "black-forest-labs/flux-schnell", task_id)

    request = recorder.only
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/models/black-forest-labs/flux-schnell/predictions"
    assert json.loads(request.content) == {
        "input": {"prompt": "a red fox", "steps": 4},
        "webhook": CALLBACK,
        "webhook_events_filter": ["start", "output", "logs", "completed"],
    }
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert update.vendor_task_id == "pred_123"
    assert update.status is TaskStatus.SUBMITTED


def test_events_filter_is_the_full_lifecycle() -> None:
    assert list(EVENTS_FILTER) == ["start", "output", "logs", "completed"]


async def test_submit_by_owner_name_and_version_posts_to_predictions(
    make_adapter: MakeAdapter,
) -> None:
    recorder = answer()
    adapter = make_adapter(recorder)

    await submit(adapter, f"stability-ai/sdxl:{VERSION}")

    request = recorder.only
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/predictions"
    body = json.loads(request.content)
    assert body["version"] == VERSION
    assert body["input"] == {"prompt": "a red fox", "steps": 4}
    assert body["webhook"] == CALLBACK
    assert body["webhook_events_filter"] == list(EVENTS_FILTER)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


async def test_submit_by_bare_version_posts_to_predictions(make_adapter: MakeAdapter) -> None:
    recorder = answer()
    adapter = make_adapter(recorder)

    await submit(adapter, VERSION)

    request = recorder.only
    assert str(request.url) == f"{BASE}/predictions"
    assert json.loads(request.content)["version"] == VERSION


async def test_submit_strips_a_trailing_slash_from_the_base(make_adapter: MakeAdapter) -> None:
    recorder = answer()
    adapter = make_adapter(recorder, base=BASE + "/")

    await submit(adapter, "owner/name")

    assert str(recorder.only.url) == f"{BASE}/models/owner/name/predictions"


async def test_no_idempotency_key_is_sent_replicate_has_none(make_adapter: MakeAdapter) -> None:
    """Issue 16.2: Replicate's API declares no Idempotency-Key; sending one promised a safety
    that did not exist. Ambiguous creates are resolved with find_created instead."""
    recorder = answer()
    await submit(make_adapter(recorder), "owner/name")
    assert "idempotency-key" not in recorder.only.headers


# --- find_created: was an ambiguous create made? (issue 16.2) ------------------------------

SENT_AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
INPUT = {"prompt": "a red fox", "steps": 4}


def listed(pid: str, minutes_after: float, **fields: Any) -> dict[str, Any]:
    """A `GET /v1/predictions` entry (the reference's fields: no logs, no webhook)."""
    when = SENT_AT + timedelta(minutes=minutes_after)
    return {
        "id": pid,
        "model": "owner/name",
        "version": VERSION,
        "input": INPUT,
        "status": "starting",
        "source": "api",
        "created_at": when.isoformat().replace("+00:00", "Z"),
        "urls": {"get": f"{BASE}/predictions/{pid}"},
        **fields,
    }


def pages(*results: list[dict[str, Any]], origin: str = BASE) -> Recorder:
    def respond(request: httpx.Request) -> httpx.Response:
        cursor = int(request.url.params.get("cursor", "0"))
        after = f"{origin}/predictions?cursor={cursor + 1}" if cursor + 1 < len(results) else None
        return httpx.Response(
            200, json={"next": after, "previous": None, "results": results[cursor]}
        )

    return Recorder(respond)


async def test_find_created_matches_model_and_input_since_the_create(
    make_adapter: MakeAdapter,
) -> None:
    recorder = pages(
        [
            listed("newer-other-input", 3, input={"prompt": "an owl"}),
            listed("newer-other-model", 2, model="owner/other"),
            listed("from-the-web", 2, source="web"),
            listed("ours", 1, status="processing"),
        ],
        [listed("ours-too", 0.5), listed("too-old", -10)],
    )
    found = await make_adapter(recorder).find_created(
        model="owner/name", input=INPUT, since=SENT_AT
    )
    assert [(u.vendor_task_id, u.status) for u in found] == [
        ("ours", TaskStatus.PROCESSING),
        ("ours-too", TaskStatus.SUBMITTED),
    ]
    assert [r.url.path for r in recorder.requests] == ["/v1/predictions"] * 2
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in recorder.requests)


async def test_find_created_stops_at_the_first_prediction_older_than_the_create(
    make_adapter: MakeAdapter,
) -> None:
    recorder = pages([listed("old", -5)], [listed("never-read", -6)])
    assert (
        await make_adapter(recorder).find_created(model="owner/name", input=INPUT, since=SENT_AT)
        == []
    )
    assert len(recorder.requests) == 1


async def test_find_created_matches_a_version_create_by_version(make_adapter: MakeAdapter) -> None:
    recorder = pages([listed("by-version", 1), listed("other-version", 1, version="f" * 64)])
    found = await make_adapter(recorder).find_created(model=VERSION, input=INPUT, since=SENT_AT)
    assert [u.vendor_task_id for u in found] == ["by-version"]


async def test_find_created_never_follows_a_next_link_elsewhere(make_adapter: MakeAdapter) -> None:
    """Our token goes to Replicate's API only."""
    recorder = pages([listed("ours", 1)], [listed("x", 0)], origin="https://evil.test/v1")
    found = await make_adapter(recorder).find_created(
        model="owner/name", input=INPUT, since=SENT_AT
    )
    assert [u.vendor_task_id for u in found] == ["ours"]
    assert len(recorder.requests) == 1


async def test_find_created_cannot_tell_past_its_page_limit(make_adapter: MakeAdapter) -> None:
    busy = [[listed(f"p{i}-{j}", 1, input={"n": j}) for j in range(100)] for i in range(25)]
    with pytest.raises(VendorUnavailable, match="cannot tell"):
        await make_adapter(pages(*busy)).find_created(
            model="owner/name", input=INPUT, since=SENT_AT
        )


async def test_find_created_when_replicate_is_down_is_unavailable(
    make_adapter: MakeAdapter,
) -> None:
    with pytest.raises(VendorUnavailable):
        await make_adapter(answer(503, {"detail": "down"})).find_created(
            model="owner/name", input=INPUT, since=SENT_AT
        )


async def test_submit_with_an_unreadable_prediction_is_unavailable(
    make_adapter: MakeAdapter,
) -> None:
    adapter = make_adapter(answer(201, {"status": "starting"}))  # no id
    with pytest.raises(VendorUnavailable):
        await submit(adapter, "owner/name")


# --- model_error ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "owner/name",
        "black-forest-labs/flux-schnell",
        "stability-ai/sdxl",
        "owner/name.v2",
        f"owner/name:{VERSION}",
        "owner/name:abc123",
        VERSION,
    ],
)
def test_model_error_accepts_replicate_forms(make_adapter: MakeAdapter, model: str) -> None:
    adapter = make_adapter(answer())
    assert adapter.model_error(model) is None


@pytest.mark.parametrize(
    "model",
    [
        "",
        "noslash",
        "a/b/c",
        "owner/name:ver-sion!",
        "/name",
        "owner/",
        "owner/na me",
        VERSION[:-1],
        VERSION + "0",
    ],
)
def test_model_error_rejects_junk(make_adapter: MakeAdapter, model: str) -> None:
    adapter = make_adapter(answer())
    error = adapter.model_error(model)
    assert isinstance(error, str) and error


@pytest.mark.parametrize("model", ["owner/name\n", VERSION + "\n"])
def test_model_error_rejects_a_trailing_newline(make_adapter: MakeAdapter, model: str) -> None:
    adapter = make_adapter(answer())
    assert adapter.model_error(model) is not None


# --- status mapping -------------------------------------------------------------------------


def test_starting_maps_to_submitted() -> None:
    update = to_update(prediction("starting"))
    assert update.vendor_task_id == "pred_123"
    assert update.status is TaskStatus.SUBMITTED
    assert update.raw_status == "starting"
    assert update.outputs is None
    assert update.error is None
    assert update.progress is None


def test_processing_maps_to_processing_with_progress_from_tqdm_logs() -> None:
    logs = (
        "Loading weights\n"
        "  25%|██▌       | 1/4 [00:01<00:03,  1.00it/s]\n"
        "  50%|█████     | 2/4 [00:02<00:02,  1.00it/s]\n"
    )
    update = to_update(prediction("processing", logs=logs))
    assert update.status is TaskStatus.PROCESSING
    assert update.progress == 50


def test_the_last_percentage_wins() -> None:
    logs = "  75%|███████▌  | 3/4 [..]\r  10%|█         | 1/10 [..]\n"
    assert to_update(prediction("processing", logs=logs)).progress == 10


@pytest.mark.parametrize("logs", [None, "", "Loading weights\nloaded 75% of the model\n", 42])
def test_no_tqdm_line_means_no_progress(logs: Any) -> None:
    assert to_update(prediction("processing", logs=logs)).progress is None


def test_a_finished_loop_is_not_a_finished_prediction() -> None:
    """A running prediction's 100 % line is one loop's end, not the job's (issue 16.6)."""
    logs = "100%|██████████| 4/4 [00:04<00:00,  1.00it/s]"
    assert to_update(prediction("processing", logs=logs)).progress == 99


def test_several_loops_never_show_100_before_the_prediction_succeeds() -> None:
    """A base model's loop, then a refiner's (SDXL): progress must not claim the end early."""
    base = "".join(f"{p:4d}%|{'█' * (p // 10):10s}| {p // 25}/4 [..]\n" for p in (25, 50, 75, 100))
    refiner = "  0%|          | 0/2 [..]\n 50%|█████     | 1/2 [..]\n"
    seen = [
        to_update(prediction("processing", logs=base[: i + 1])).progress
        for i in range(len(base))
        if base[i] == "\n"
    ] + [to_update(prediction("processing", logs=base + refiner)).progress]
    assert seen and max(p for p in seen if p is not None) < 100


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("https://replicate.delivery/a.png", ["https://replicate.delivery/a.png"]),
        (
            ["https://replicate.delivery/1.png", "http://replicate.delivery/2.png"],
            ["https://replicate.delivery/1.png", "http://replicate.delivery/2.png"],
        ),
        (
            {"image": "https://r.test/img.png", "mask": "https://r.test/mask.png"},
            ["https://r.test/img.png", "https://r.test/mask.png"],
        ),
        (
            [
                "https://r.test/1.png",
                3,
                "not a url",
                None,
                {"nested": ["https://r.test/2.png"]},
                "ftp://r.test/x.png",
            ],
            ["https://r.test/1.png", "https://r.test/2.png"],
        ),
        # What a `Prefer: wait` create answers with (issue 16.6): stored like any file.
        (
            ["data:image/png;base64,iVBORw0KGgo=", "https://r.test/2.png"],
            ["data:image/png;base64,iVBORw0KGgo=", "https://r.test/2.png"],
        ),
    ],
)
def test_succeeded_maps_to_storing_with_outputs_in_order(output: Any, expected: list[str]) -> None:
    update = to_update(prediction("succeeded", output=output))
    assert update.status is TaskStatus.STORING
    assert update.raw_status == "succeeded"
    assert update.outputs == expected
    assert update.error is None


@pytest.mark.parametrize("output", [None, [], {}, "just some text", [1, 2], {"text": "hi"}])
def test_succeeded_without_a_url_output_fails(output: Any) -> None:
    update = to_update(prediction("succeeded", output=output))
    assert update.status is TaskStatus.FAILED
    assert update.raw_status == "succeeded"
    assert update.error
    assert not update.outputs


def test_a_success_whose_output_replicate_deleted_is_result_expired() -> None:
    """An hour after an API prediction ends, Replicate deletes its output (issue 16.4)."""
    update = to_update(prediction("succeeded", output=None, data_removed=True))
    assert (update.status, update.error_code) == (TaskStatus.FAILED, "result_expired")


def test_failed_carries_the_vendors_error() -> None:
    update = to_update(prediction("failed", error="CUDA out of memory"))
    assert update.status is TaskStatus.FAILED
    assert update.raw_status == "failed"
    assert update.error == "CUDA out of memory"
    assert update.outputs is None


def test_failed_without_an_error_still_explains() -> None:
    update = to_update(prediction("failed", error=None))
    assert update.status is TaskStatus.FAILED
    assert update.error


@pytest.mark.parametrize("status", ["canceled", "aborted"])
def test_canceled_or_aborted_by_the_vendor_is_a_failure(status: str) -> None:
    update = to_update(prediction(status))
    assert update.status is TaskStatus.FAILED
    assert update.raw_status == status
    assert update.error and status in update.error


@pytest.mark.parametrize(
    "body",
    [
        prediction("queued"),
        prediction("SUCCEEDED"),
        {"status": "starting"},
        {"id": "", "status": "starting"},
        {"id": 7, "status": "starting"},
        {"id": "pred_123", "status": None},
        [],
        "pred_123",
        None,
    ],
)
def test_to_update_refuses_what_is_not_a_prediction(body: Any) -> None:
    with pytest.raises(ValueError):
        to_update(body)


# --- parse ----------------------------------------------------------------------------------


def test_parse_reads_a_callback_body(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(answer())
    body = json.dumps(prediction("succeeded", output=["https://r.test/1.png"])).encode()
    update = adapter.parse(body)
    assert update.status is TaskStatus.STORING
    assert update.outputs == ["https://r.test/1.png"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"pred_123"',
        b'{"id": "pred_123", "status": "exploded"}',
        b'{"status": "starting"}',
        b'{"id": "pred_123", "status": []}',
        b'{"id": "pred_123", "status": {}}',
        b'{"id": "pred_123", "status": null}',
    ],
)
def test_parse_refuses_unreadable_payloads(make_adapter: MakeAdapter, body: bytes) -> None:
    adapter = make_adapter(answer())
    with pytest.raises(PayloadInvalid):
        adapter.parse(body)


# --- HTTP errors ----------------------------------------------------------------------------

Operation = Callable[[ReplicateAdapter], Awaitable[Any]]

OPERATIONS: dict[str, Operation] = {
    "submit": lambda adapter: submit(adapter, "owner/name"),
    "fetch": lambda adapter: adapter.fetch("pred_123"),
    "cancel": lambda adapter: adapter.cancel("pred_123"),
}
operations = pytest.mark.parametrize("operation", list(OPERATIONS.values()), ids=list(OPERATIONS))


@operations
async def test_429_is_unavailable_with_retry_after(
    make_adapter: MakeAdapter, operation: Operation
) -> None:
    recorder = Recorder(
        lambda _r: httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow"})
    )
    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(recorder))
    assert caught.value.retry_after == 7.0
    assert len(recorder.requests) == 1


# Issue 16.3: Replicate's 429 has no Retry-After. What it sends (rate-limits page for the body,
# the official client's cassettes for the ratelimit-* headers it puts on every answer):
@operations
@pytest.mark.parametrize(
    ("headers", "detail", "wait"),
    [
        ({}, "Request was throttled. Your rate limit resets in ~30s.", 30.0),
        ({}, "Request was throttled. Expected available in 1 second.", 1.0),
        ({"ratelimit-remaining": "0", "ratelimit-reset": "12"}, "Request was throttled.", 12.0),
        (
            {"ratelimit-remaining": "0", "ratelimit-reset": "12"},
            "Request was throttled. Your rate limit resets in ~30s.",
            12.0,
        ),
        ({}, "Request was throttled.", None),
    ],
)
async def test_a_429_without_retry_after_waits_what_replicate_says(
    make_adapter: MakeAdapter,
    operation: Operation,
    headers: dict[str, str],
    detail: str,
    wait: float | None,
) -> None:
    recorder = Recorder(lambda _r: httpx.Response(429, headers=headers, json={"detail": detail}))
    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(recorder))
    assert caught.value.throttled
    assert caught.value.retry_after == wait


@operations
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_unavailable(
    make_adapter: MakeAdapter, operation: Operation, status: int
) -> None:
    recorder = Recorder(lambda _r: httpx.Response(status, text="upstream trouble"))
    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(recorder))
    assert caught.value.retry_after is None
    assert str(status) in str(caught.value)


@pytest.mark.parametrize("value", ["soon", "Wed, 21 Oct 2015 07:28:00 GMT", ""])
async def test_unreadable_retry_after_is_ignored(make_adapter: MakeAdapter, value: str) -> None:
    recorder = Recorder(lambda _r: httpx.Response(503, headers={"Retry-After": value}))
    with pytest.raises(VendorUnavailable) as caught:
        await make_adapter(recorder).fetch("pred_123")
    assert caught.value.retry_after is None


@pytest.mark.parametrize("value", ["inf", "1e999"])
async def test_non_finite_retry_after_is_not_used(make_adapter: MakeAdapter, value: str) -> None:
    recorder = Recorder(lambda _r: httpx.Response(429, headers={"Retry-After": value}))
    with pytest.raises(VendorUnavailable) as caught:
        await make_adapter(recorder).fetch("pred_123")
    retry_after = caught.value.retry_after
    assert retry_after is None or retry_after < 24 * 3600


@operations
@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out")],
    ids=["connect", "timeout"],
)
async def test_transport_errors_are_unavailable(
    make_adapter: MakeAdapter, operation: Operation, error: Exception
) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(VendorUnavailable):
        await operation(make_adapter(handler))


@operations
@pytest.mark.parametrize("status", [401, 403])
async def test_our_token_refused_is_unavailable_not_rejected(
    make_adapter: MakeAdapter, operation: Operation, status: int
) -> None:
    recorder = Recorder(
        lambda _r: httpx.Response(status, json={"detail": "You did not pass a valid token"})
    )
    with pytest.raises(VendorUnavailable) as caught:
        await operation(make_adapter(recorder))
    assert not isinstance(caught.value, VendorRejected)


@operations
@pytest.mark.parametrize("status", [400, 404, 422])
async def test_client_errors_are_rejected_with_the_detail(
    make_adapter: MakeAdapter, operation: Operation, status: int
) -> None:
    detail = f"Invalid version or not permitted ({status})"
    recorder = Recorder(
        lambda _r: httpx.Response(status, json={"title": "Bad", "detail": detail, "status": status})
    )
    with pytest.raises(VendorRejected) as caught:
        await operation(make_adapter(recorder))
    assert detail in str(caught.value)


async def test_rejection_without_a_json_body_names_the_status(make_adapter: MakeAdapter) -> None:
    recorder = Recorder(lambda _r: httpx.Response(422, text="<html>nope</html>"))
    with pytest.raises(VendorRejected) as caught:
        await submit(make_adapter(recorder), "owner/name")
    assert "422" in str(caught.value)


@operations
async def test_success_with_a_non_json_body_is_unavailable(
    make_adapter: MakeAdapter, operation: Operation
) -> None:
    recorder = Recorder(lambda _r: httpx.Response(201, text="<html>gateway</html>"))
    with pytest.raises(VendorUnavailable):
        await operation(make_adapter(recorder))


# --- fetch and cancel -----------------------------------------------------------------------


async def test_fetch_gets_the_prediction(make_adapter: MakeAdapter) -> None:
    recorder = answer(200, prediction("succeeded", output="https://r.test/out.png"))
    adapter = make_adapter(recorder)

    update = await adapter.fetch("pred_123")

    request = recorder.only
    assert request.method == "GET"
    assert str(request.url) == f"{BASE}/predictions/pred_123"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert update.vendor_task_id == "pred_123"
    assert update.status is TaskStatus.STORING
    assert update.outputs == ["https://r.test/out.png"]


async def test_fetch_of_something_that_is_not_a_prediction_is_unavailable(
    make_adapter: MakeAdapter,
) -> None:
    adapter = make_adapter(answer(200, {"id": "pred_123", "status": "teleported"}))
    with pytest.raises(VendorUnavailable):
        await adapter.fetch("pred_123")


async def test_cancel_posts_to_the_cancel_endpoint(make_adapter: MakeAdapter) -> None:
    recorder = answer(200, prediction("canceled"))
    adapter = make_adapter(recorder)

    await adapter.cancel("pred_123")

    request = recorder.only
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/predictions/pred_123/cancel"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


# --- prepare and verify ---------------------------------------------------------------------


def signed(secret: str, body: bytes, webhook_id: str = "msg_abc") -> dict[str, str]:
    return webhook_headers(secret, webhook_id, body, timestamp=TS)


async def test_prepare_fetches_the_default_secret_then_verify_accepts(
    make_adapter: MakeAdapter,
) -> None:
    recorder = answer(200, {"key": SECRET})
    adapter = make_adapter(recorder)
    body = json.dumps(prediction("processing")).encode()

    # No secret yet: not the sender's fault, and a 503 the vendor retries, not a 401.
    with pytest.raises(VerificationUnavailable) as caught:
        adapter.verify(body, signed(SECRET, body), now=TS)
    assert caught.value.status_code == 503 and "not been fetched" in caught.value.message

    await adapter.prepare()

    request = recorder.only
    assert request.method == "GET"
    assert str(request.url) == f"{BASE}/webhooks/default/secret"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    delivery = adapter.verify(body, signed(SECRET, body, "msg_1"), now=TS)
    assert (delivery.delivery_id, delivery.timestamp) == ("msg_1", TS)
    with pytest.raises(SignatureInvalid):
        adapter.verify(body, signed(OTHER_SECRET, body), now=TS)
    with pytest.raises(SignatureInvalid):
        adapter.verify(body + b" ", signed(SECRET, body), now=TS)


async def test_prepare_with_configured_secrets_makes_no_call(make_adapter: MakeAdapter) -> None:
    recorder = answer(200, {"key": OTHER_SECRET})
    adapter = make_adapter(recorder, secrets=(OTHER_SECRET, SECRET))
    body = b'{"id": "pred_123", "status": "starting"}'

    await adapter.prepare()

    assert recorder.requests == []
    assert adapter.verify(body, signed(SECRET, body), now=TS + 10).timestamp == TS
    assert adapter.verify(body, signed(OTHER_SECRET, body), now=TS).delivery_id == "msg_abc"


@pytest.mark.parametrize("body", [{}, {"key": None}, {"key": 5}, ["whsec_x"]])
async def test_prepare_without_a_key_is_unavailable(make_adapter: MakeAdapter, body: Any) -> None:
    adapter = make_adapter(answer(200, body))
    with pytest.raises(VendorUnavailable):
        await adapter.prepare()


async def test_prepare_when_replicate_is_down_is_unavailable(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(Recorder(lambda _r: httpx.Response(503)))
    with pytest.raises(VendorUnavailable):
        await adapter.prepare()


async def test_prepare_with_an_undecodable_key_is_unavailable(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(answer(200, {"key": "whsec_!!! not base64 !!!"}))
    with pytest.raises(VendorUnavailable):
        await adapter.prepare()


# --- TASKHOOK_PUBLIC_URL as Replicate sees it (issue 16.6) ----------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com", None),
        ("https://93.184.216.34:8443/base", None),
        (None, "not set"),
        ("http://hooks.example.com", "https"),
        ("https://localhost:8000", "cannot reach"),
        ("https://127.0.0.1", "cannot reach"),
        ("https://10.1.2.3", "cannot reach"),
        ("https://api.internal", "cannot reach"),
    ],
)
def test_a_public_url_replicate_would_not_call_is_named(
    url: str | None, problem: str | None
) -> None:
    from vendors.replicate import webhook_base_problem

    found = webhook_base_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(("status", "redirected"), [(301, True), (308, True), (401, False)])
async def test_a_redirect_in_front_of_the_hooks_is_found(status: int, redirected: bool) -> None:
    from vendors.replicate import webhook_redirect_problem

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers={"location": "https://www.example.com/hooks/x"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        problem = await webhook_redirect_problem(client, "https://example.com/")
    assert (problem is not None) == redirected
    assert [(r.method, str(r.url)) for r in seen] == [
        ("POST", "https://example.com/hooks/replicate/redirect-probe")
    ]
    if redirected:
        assert problem is not None and "follows no redirect" in problem
