"""fal's dialect of the simulator: the queue API under ``/fal`` and ED25519-signed webhooks.

The job lifecycle, the fault dice and the webhook courier are the shared ones (``lifecycle.py``,
``webhooks.py``); this module only decides how a job looks to fal's clients:

* ``POST /fal/{model_id}?fal_webhook=<url>`` queues a job (the JSON body is the model input) and
  answers ``{request_id, response_url, status_url, cancel_url}``;
* ``GET /fal/{app}/requests/{id}/status[?logs=1]``, ``GET /fal/{app}/requests/{id}`` and
  ``PUT /fal/{app}/requests/{id}/cancel`` address it by *app* id (owner/app, without the
  endpoint path), as fal does, so an adapter that builds those URLs wrongly gets 404s here;
* one webhook when the job is done, ``OK`` + the model output or ``ERROR`` + an error, signed
  over ``request_id\\nuser_id\\ntimestamp\\nsha256hex(body)`` with a key generated at start and
  published at ``GET /fal/.well-known/jwks.json``.

A failed job's result answers with the model's error, as fal's does: 422 with a validation
``detail`` when the prompt asked for the failure; a random failure is the platform's, and its
COMPLETED status says so (``error: "Runner disconnected"``, ``error_type``, as fal-client's own
tests record it). What fal does that is unpleasant is done too: a result is kept an hour after
the job ends, 6 minutes when it is 10 KB or more (then 404), scaled by ``time_scale``; a
``payload_error`` fraction of successful jobs' webhooks come without their payload; a refused
webhook is retried 10 times over 2 hours.

fal's platform API (``https://api.fal.ai/v1``) lives under ``/fal-api/v1``: only
``GET /models/pricing?endpoint_id=...``, which answers a valid key only (fal's docs: "Users must
provide a valid API key"), the cheap authenticated call ``taskhook check`` makes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import secrets
import time
import uuid
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.guard import guard
from simulator.lifecycle import Simulator
from simulator.png import SIZE
from simulator.predictions import EventKind, Prediction
from simulator.validation import FAIL_WORD, REJECT_WORD, CreateRequest, version_for

PREFIX = "/fal"
PLATFORM_PREFIX = "/fal-api/v1"
UNIT_PRICE = 0.003  # USD per image, what the simulator quotes for every endpoint
USER_ID = "sim-user-7f3a9c"
"""The fixed account id the simulator's webhooks carry in ``X-Fal-Webhook-User-Id``."""

_SEGMENT = r"[A-Za-z0-9][\w.-]*"
_MODEL = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})+", re.ASCII)
_NAMESPACES = ("workflows", "comfy")
_QUEUE_STATUS = {"starting": "IN_QUEUE", "processing": "IN_PROGRESS"}
_CANCELED_DETAIL = "Request was cancelled by the user"
# "If the webhook fails to deliver the payload, it will retry 10 times in the span of 2 hours."
# https://docs.fal.ai/model-apis/model-endpoints/webhooks (doubling waits that add up to 2 h)
FAL_WEBHOOK_RETRIES = tuple(7200.0 * 2**i / (2**10 - 1) for i in range(10))


class FalError(Exception):
    """An API error answer: HTTP status plus fal's ``detail`` (a message or a list)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status)


def _invalid(field: str, message: str, kind: str) -> FalError:
    loc = ["body", field] if field else ["body"]
    return FalError(422, [{"loc": loc, "msg": message, "type": kind}])


def app_id(model: str) -> str:
    """The owner/app part of a model id (three parts for ``workflows/`` and ``comfy/`` ids)."""
    parts = model.split("/")
    return "/".join(parts[: 3 if parts[0] in _NAMESPACES else 2])


class FalDialect:
    """fal on the wire: UUID request ids, one signed webhook when the job is done."""

    name = "fal"

    def __init__(
        self,
        private_key: Ed25519PrivateKey | None = None,
        *,
        user_id: str = USER_ID,
        payload_error: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self._key = private_key or Ed25519PrivateKey.generate()
        self.user_id = user_id
        self.key_id = secrets.token_hex(8)
        self._payload_error = payload_error
        self._rng = random.Random(seed)
        self._without_payload: set[str] = set()

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def webhook_body(self, prediction: Prediction, event: EventKind) -> bytes | None:
        if event != "completed":
            return None
        if self._rng.random() < self._payload_error:
            self._without_payload.add(prediction.id)
        missing = prediction.id in self._without_payload
        return json.dumps(
            webhook_json(prediction, payload_error=missing), separators=(",", ":")
        ).encode()

    def webhook_headers(self, message_id: str, body: bytes, *, forged: bool) -> dict[str, str]:
        """Signed now (retries carry fresh timestamps); a forged copy uses a throwaway key."""
        request_id = str(json.loads(body)["request_id"])
        timestamp = str(int(time.time()))
        digest = hashlib.sha256(body).hexdigest()
        message = f"{request_id}\n{self.user_id}\n{timestamp}\n{digest}".encode()
        key = Ed25519PrivateKey.generate() if forged else self._key
        return {
            "content-type": "application/json",
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": self.user_id,
            "x-fal-webhook-timestamp": timestamp,
            "x-fal-webhook-signature": key.sign(message).hex(),
        }

    def retry_delays(self, event: EventKind) -> tuple[float, ...]:
        return FAL_WEBHOOK_RETRIES

    def jwks(self) -> dict[str, Any]:
        """The public key as fal publishes its own (an OKP/Ed25519 JWK)."""
        raw = self._key.public_key().public_bytes_raw()
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        return {
            "keys": [
                {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.key_id, "use": "sig"},
            ]
        }


# -- fal's view of a prediction -----------------------------------------------------------


RESULT_KEPT = 3600.0
RESULT_KEPT_LARGE = 360.0
LARGE_RESULT = 10_000
"""fal keeps a result 1 hour after the request completes, 6 minutes if it is 10 KB or larger
(https://fal.ai/docs/inference-api/queue/result)."""
RUNNER_ERROR = ("Runner disconnected", "runner_disconnected")


def result_kept_for(prediction: Prediction) -> float:
    """Real seconds fal keeps this finished job's result."""
    if prediction.status != "succeeded":
        return RESULT_KEPT
    size = len(json.dumps(output_json(prediction), separators=(",", ":")))
    return RESULT_KEPT_LARGE if size >= LARGE_RESULT else RESULT_KEPT


def random_failure(prediction: Prediction) -> bool:
    """A failure of the platform (not the model's answer to the prompt)."""
    return prediction.status == "failed" and FAIL_WORD not in prediction.prompt


def queue_status(prediction: Prediction) -> str:
    """IN_QUEUE / IN_PROGRESS / COMPLETED (failed and canceled jobs are COMPLETED too)."""
    return _QUEUE_STATUS.get(prediction.status, "COMPLETED")


def request_url(prediction: Prediction) -> str:
    return f"{prediction.base_url}{PREFIX}/{app_id(prediction.model)}/requests/{prediction.id}"


def status_json(prediction: Prediction, *, with_logs: bool) -> dict[str, Any]:
    status = queue_status(prediction)
    url = request_url(prediction)
    body: dict[str, Any] = {
        "status": status,
        "request_id": prediction.id,
        "response_url": url,
        "status_url": f"{url}/status",
        "cancel_url": f"{url}/cancel",
    }
    if status == "IN_QUEUE":
        body["queue_position"] = 0
        return body
    body["logs"] = _log_entries(prediction) if with_logs else None
    if status == "COMPLETED":
        body["metrics"] = {"inference_time": _inference_time(prediction)}
        if random_failure(prediction):
            body["error"], body["error_type"] = RUNNER_ERROR
    return body


def _log_entries(prediction: Prediction) -> list[dict[str, Any]]:
    stamp = prediction.started_at or prediction.created_at
    return [
        {"message": line, "level": "INFO", "source": "user", "timestamp": stamp}
        for line in prediction.logs.splitlines()
    ]


def _inference_time(prediction: Prediction) -> float | None:
    if prediction.started_ts is None or prediction.completed_ts is None:
        return None
    return round(prediction.completed_ts - prediction.started_ts, 6)


def output_json(prediction: Prediction) -> dict[str, Any]:
    """A succeeded job's output, shaped like fal's text-to-image models'."""
    count = len(prediction.output or [])
    seed = int.from_bytes(hashlib.sha256(prediction.id.encode()).digest()[:4], "big")
    return {
        "images": [
            {
                "url": prediction.file_url(i),
                "content_type": "image/png",
                "file_name": f"{i}.png",
                "width": SIZE,
                "height": SIZE,
            }
            for i in range(count)
        ],
        "timings": {"inference": _inference_time(prediction)},
        "seed": seed,
        "has_nsfw_concepts": [False] * count,
        "prompt": prediction.prompt,
    }


def failure(prediction: Prediction) -> FalError:
    """What a finished-but-unsuccessful job's result answers (the model's error)."""
    if prediction.status == "canceled":
        return FalError(400, _CANCELED_DETAIL)
    error = prediction.error or "the model failed"
    if FAIL_WORD in prediction.prompt:
        return _invalid("prompt", error, "value_error")
    return FalError(500, RUNNER_ERROR[0])


def webhook_json(prediction: Prediction, *, payload_error: bool = False) -> dict[str, Any]:
    """The one webhook of a finished job; `payload_error`: fal could not serialize the result
    into it ("payload is set to null and a payload_error will include details")."""
    body: dict[str, Any] = {"request_id": prediction.id, "gateway_request_id": prediction.id}
    if prediction.status == "succeeded" and payload_error:
        return {
            **body,
            "status": "OK",
            "payload": None,
            "payload_error": "Failed to serialize the payload: Object of type bytes is not "
            "JSON serializable",
        }
    if prediction.status == "succeeded":
        return {**body, "status": "OK", "payload": output_json(prediction)}
    err = failure(prediction)
    return {
        **body,
        "status": "ERROR",
        "error": f"Invalid status code: {err.status}",
        "payload": {"detail": err.detail},
    }


def parse_input(raw: bytes, *, model: str, webhook: str | None, max_outputs: int) -> CreateRequest:
    """Validate a submit body (the model input itself) the way a fal model would."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    if not isinstance(body, dict):
        raise _invalid("", "Input should be a valid JSON object", "model_attributes_type")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid("prompt", "Field required", "missing")
    if REJECT_WORD in prompt:
        raise _invalid("prompt", f"the prompt was rejected by the model ({REJECT_WORD})", "value")
    count = body.get("num_images", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= max_outputs:
        raise _invalid(
            "num_images", f"Input should be an integer from 1 to {max_outputs}", "int_range"
        )
    return CreateRequest(
        model=model,
        version=version_for(model),
        input=body,
        webhook=webhook,
        events_filter=("completed",),
        num_outputs=count,
    )


def _webhook(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise FalError(422, "fal_webhook must be an http(s) URL")
    return value


def _fault(status: int) -> JSONResponse:
    # fal documents no Retry-After on its 429s: the simulator sends none either.
    if status == 429:
        return JSONResponse({"detail": "Rate limit exceeded"}, status_code=429)
    return JSONResponse({"detail": "Service temporarily unavailable"}, status_code=503)


# -- routes -------------------------------------------------------------------------------


def routes(sim: Simulator, dialect: FalDialect | None = None) -> list[Route]:
    """The ``/fal`` routes over the shared simulator; ``dialect`` defaults to a fresh key."""
    config = sim.config
    fal = dialect or FalDialect(payload_error=config.fal_payload_error, seed=config.seed)

    def authorized(request: Request) -> bool:
        if config.fal_key is None:
            return True
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "key" and hmac.compare_digest(
            key.strip().encode(), config.fal_key.encode()
        )

    api = guard(
        sim,
        authorized=authorized,
        refused=lambda: JSONResponse({"detail": "Unauthorized"}, status_code=401),
        fault=_fault,
        error=FalError,
        render=FalError.response,
    )

    def find(request: Request) -> Prediction:
        """The job named in the path, under the app id it was submitted to."""
        prediction = sim.get(request.path_params["request_id"])
        if (
            prediction is None
            or prediction.dialect is not fal
            or app_id(prediction.model) != request.path_params["app"]
        ):
            raise FalError(404, "Request not found")
        return prediction

    @api
    async def submit(request: Request) -> Response:
        model = request.path_params["model_id"]
        if not _MODEL.fullmatch(model):
            raise FalError(404, f"Application '{model}' not found")
        body = parse_input(
            await request.body(),
            model=model,
            webhook=_webhook(request.query_params.get("fal_webhook")),
            max_outputs=config.max_outputs,
        )
        base = config.public_url.rstrip("/") or str(request.base_url).rstrip("/")
        prediction = await sim.create(body, base_url=base, dialect=fal)
        url = request_url(prediction)
        return JSONResponse(
            {
                "status": "IN_QUEUE",
                "request_id": prediction.id,
                "gateway_request_id": prediction.id,
                "response_url": url,
                "status_url": f"{url}/status",
                "cancel_url": f"{url}/cancel",
                "queue_position": 0,
            }
        )

    @api
    async def status(request: Request) -> Response:
        prediction = find(request)
        sim.stats.fetches[prediction.id] += 1
        with_logs = request.query_params.get("logs", "").lower() in ("1", "true")
        body = status_json(prediction, with_logs=with_logs)
        return JSONResponse(body, status_code=200 if prediction.terminal else 202)

    def expired(prediction: Prediction) -> bool:
        done = prediction.completed_ts
        return done is not None and time.time() - done > config.scaled(result_kept_for(prediction))

    @api
    async def result(request: Request) -> Response:
        prediction = find(request)
        if not prediction.terminal:
            raise FalError(400, "Request is still in progress")
        if expired(prediction):
            sim.stats.results_expired += 1
            raise FalError(404, "Request not found")
        if prediction.status != "succeeded":
            raise failure(prediction)
        return JSONResponse(output_json(prediction))

    @api
    async def cancel(request: Request) -> Response:
        prediction = find(request)
        if prediction.terminal:
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        sim.cancel(prediction.id)
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    async def jwks(request: Request) -> Response:
        return JSONResponse(fal.jwks(), headers={"cache-control": "public, max-age=3600"})

    async def pricing(request: Request) -> Response:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "key" or not key.strip() or not authorized(request):
            return JSONResponse({"detail": "Unauthorized"}, status_code=401)
        ids = [
            part.strip()
            for value in request.query_params.getlist("endpoint_id")
            for part in value.split(",")
            if part.strip()
        ]
        if not 1 <= len(ids) <= 50:
            return FalError(422, "endpoint_id: 1 to 50 endpoint ids are required").response()
        prices = [
            {"endpoint_id": i, "unit_price": UNIT_PRICE, "unit": "image", "currency": "USD"}
            for i in ids
        ]
        return JSONResponse({"prices": prices, "next_cursor": None, "has_more": False})

    requests = PREFIX + "/{app:path}/requests/{request_id}"
    return [
        Route(PREFIX + "/.well-known/jwks.json", jwks, methods=["GET"]),
        Route(PLATFORM_PREFIX + "/models/pricing", pricing, methods=["GET"]),
        Route(requests + "/status", status, methods=["GET"]),
        Route(requests + "/cancel", cancel, methods=["PUT"]),
        Route(requests, result, methods=["GET"]),
        Route(PREFIX + "/{model_id:path}", submit, methods=["POST"]),
    ]
