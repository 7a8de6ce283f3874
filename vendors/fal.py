"""fal: the queue API and its ED25519-signed webhooks.

Wire format, checked against fal's docs and its Python client (fal-ai/fal, ``fal_client``):

* submit: ``POST {queue}/{model_id}?fal_webhook=<url>`` with ``Authorization: Key <FAL_KEY>`` and
  the model input as the JSON body; the answer carries ``request_id`` (plus status/response/
  cancel URLs). https://docs.fal.ai/model-endpoints/queue, https://docs.fal.ai/model-endpoints/webhooks
* status ``GET .../requests/{id}/status?logs=1``, result ``GET .../requests/{id}``, cancel
  ``PUT .../requests/{id}/cancel`` live under the *app* id (owner/app, without the endpoint path;
  ``workflows/`` and ``comfy/`` ids keep one more segment). https://fal.ai/docs/api-reference/inference-api
* the result answer "has the status code, headers and body that the model returned": a failed
  request is ``COMPLETED`` and its result is an error (422 ``detail`` list, ``error_type``...).
  https://fal.ai/docs/inference-api/queue/result, https://fal.ai/docs/documentation/model-apis/request-errors
* one webhook when the request is done: ``{request_id, gateway_request_id, status: OK|ERROR,
  payload, error?, payload_error?}``, signed with ED25519 over
  ``request_id\\nuser_id\\ntimestamp\\nsha256hex(body)`` (``X-Fal-Webhook-*`` headers, hex
  signature), keys published as a JWKS. https://docs.fal.ai/model-apis/model-endpoints/webhooks

* "Do not build these URLs yourself. Use the status_url, response_url, and cancel_url fields
  from the submit response" (https://fal.ai/docs/api-reference/inference-api): they are kept
  with the task (``VendorUpdate.urls``) and used, as long as they point at the queue we send
  our key to; tasks registered before fall back to the built form.
* "fal keeps the result for 1 hour after the request completes. If the result is 10 KB or
  larger, fal keeps it for 6 minutes" (https://fal.ai/docs/inference-api/queue/result): a
  COMPLETED request whose result answers 404 lost it to that retention (``result_expired``).

fal has no idempotency key for submit (none in the docs or the client), so a submit that timed
out after fal accepted it may leave an orphan job; only answers that prove nothing was created
(connect errors, 429, 503) are marked ``not_accepted``. fal cannot list requests either, so an
ambiguous submit cannot be looked up (``finds_created`` is False): a second job's webhook gets
it canceled (receiver).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import PayloadInvalid, SignatureInvalid, VendorRejected, VendorUnavailable
from common.settings import Settings, base_url, setting, text
from common.states import TaskStatus
from vendors.base import RESULT_EXPIRED, VendorAdapter, VendorChecks, VendorPlugin, VendorUpdate
from vendors.http import json_object, raise_for_transient, send
from vendors.signature import Delivery, check_timestamp

log = structlog.get_logger()

NAME = "fal"
DEFAULT_QUEUE_BASE = "https://queue.fal.run"
DEFAULT_API_BASE = "https://api.fal.ai/v1"
# A model whose price `check_credentials` asks for when no route names a fal model.
CHECK_MODEL = "fal-ai/flux/schnell"
DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"

# The submit answer's URLs for the request, to be used as given (see the module docstring).
URL_FIELDS = ("status_url", "response_url", "cancel_url")

HEADER_REQUEST_ID = "x-fal-webhook-request-id"
HEADER_USER_ID = "x-fal-webhook-user-id"
HEADER_TIMESTAMP = "x-fal-webhook-timestamp"
HEADER_SIGNATURE = "x-fal-webhook-signature"

# A forged webhook must not make us fetch the JWKS more often than this.
MIN_REFRESH_INTERVAL = 60.0
# fal rotates keys; its docs say to cache the JWKS for at most 24 hours.
MAX_KEY_AGE = 24 * 3600.0

_SEGMENT = r"[A-Za-z0-9][\w.-]*"
_MODEL = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})+", re.ASCII)
# Namespaced ids (`workflows/owner/app/...`) keep the namespace in their app id.
_NAMESPACES = frozenset({"workflows", "comfy"})
# tqdm-style lines ("  50%|█████     | 2/4") are the only progress fal's logs show.
_PERCENT = re.compile(r"(\d{1,3})(?:\.\d+)?\s*%")
RUNNING_PROGRESS_CAP = 99

# The queue's statuses. COMPLETED says nothing about success: the result decides.
_STATUS_MAP: Mapping[str, TaskStatus] = {
    "IN_QUEUE": TaskStatus.SUBMITTED,
    "IN_PROGRESS": TaskStatus.PROCESSING,
    "COMPLETED": TaskStatus.STORING,
}
# The webhook's statuses; an OK without any image is still a failure for the client.
_WEBHOOK_STATUS_MAP: Mapping[str, TaskStatus] = {
    "OK": TaskStatus.STORING,
    "ERROR": TaskStatus.FAILED,
}


class UnknownSigningKey(SignatureInvalid):
    """The webhook signature matches none of fal's keys we know."""


# -- pure helpers ---------------------------------------------------------------------------


def app_id(model: str) -> str:
    """The part of a model id the status, result and cancel URLs use (`fal-ai/flux/dev` →
    `fal-ai/flux`)."""
    parts = model.split("/")
    keep = 3 if parts[0] in _NAMESPACES else 2
    return "/".join(parts[:keep])


def progress_from_logs(logs: Any) -> int | None:
    """The percentage in the most recent log line that shows one (fal logs are objects); below
    100 while the request runs, since a model may run several 0-100 % loops."""
    if not isinstance(logs, list):
        return None
    for entry in reversed(logs):
        message = entry.get("message") if isinstance(entry, dict) else entry
        if isinstance(message, str) and (found := _PERCENT.findall(message)):
            return min(RUNNING_PROGRESS_CAP, int(found[-1]))
    return None


def image_urls(output: Any) -> list[str]:
    """The image URLs of a model output (`images: [{url}]`, or a single `image: {url}`)."""
    if not isinstance(output, dict):
        return []
    images = output.get("images")
    if not isinstance(images, list):
        single = output.get("image")
        images = [single] if single is not None else []
    urls = []
    for image in images:
        url = image.get("url") if isinstance(image, dict) else None
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            urls.append(url)
    return urls


def detail_text(detail: Any) -> str:
    """fal's `detail`: a message, or FastAPI-style `[{loc, msg, type}]` validation errors."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc[1:]) if isinstance(loc, list) else ""
                parts.append(f"{where}: {item['msg']}" if where else item["msg"])
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return "" if detail is None else str(detail)


def _error_text(error: Any, payload: Any, default: str) -> str:
    """An error message plus the details fal put next to it, e.g. "Invalid status code: 422:
    prompt: field required"."""
    parts = [error] if isinstance(error, str) and error else []
    if isinstance(payload, dict) and (detail := detail_text(payload.get("detail"))):
        parts.append(detail)
    return ": ".join(parts)[:1000] or default


def result_update(request_id: str, output: Any) -> VendorUpdate:
    """A completed request's output: its images to store, or a failure when it has none."""
    urls = image_urls(output)
    if not urls:
        return VendorUpdate(
            vendor_task_id=request_id,
            status=TaskStatus.FAILED,
            raw_status="COMPLETED",
            error="the request completed without any image",
        )
    return VendorUpdate(
        vendor_task_id=request_id, status=TaskStatus.STORING, raw_status="COMPLETED", outputs=urls
    )


def status_update(request_id: str, body: Any) -> VendorUpdate | None:
    """Map a status answer; None when it is COMPLETED and only the result can tell the outcome.

    ValueError when the answer is not a status object.
    """
    if not isinstance(body, dict):
        raise ValueError("status answer is not a JSON object")
    status = body.get("status")
    if not isinstance(status, str) or status not in _STATUS_MAP:
        raise ValueError(f"unknown request status {status!r}")
    if status == "COMPLETED":
        error = body.get("error")
        if isinstance(error, str) and error:
            kind = body.get("error_type")
            text = f"{error} ({kind})" if isinstance(kind, str) and kind else error
            return VendorUpdate(
                vendor_task_id=request_id,
                status=TaskStatus.FAILED,
                raw_status=status,
                error=text[:1000],
            )
        return None
    return VendorUpdate(
        vendor_task_id=request_id,
        status=_STATUS_MAP[status],
        raw_status=status,
        progress=progress_from_logs(body.get("logs")) if status == "IN_PROGRESS" else None,
    )


def webhook_update(body: Any) -> VendorUpdate:
    """Map a webhook body; ValueError when it is not one (or carries no usable payload)."""
    if not isinstance(body, dict):
        raise ValueError("webhook body is not a JSON object")
    request_id, status = body.get("request_id"), body.get("status")
    if not isinstance(request_id, str) or not request_id:
        raise ValueError("webhook has no request_id")
    if not isinstance(status, str) or status not in _WEBHOOK_STATUS_MAP:
        raise ValueError(f"unknown webhook status {status!r}")
    payload = body.get("payload")
    if payload is None and status == "OK" and body.get("payload_error"):
        # The job succeeded but fal could not put the result in the webhook ("payload is set
        # to null and a payload_error will include details"): only a hint, confirmed at once
        # from the queue, whose result is kept for as little as 6 minutes.
        return VendorUpdate(
            vendor_task_id=request_id, status=TaskStatus.STORING, raw_status=status, confirm=True
        )
    if status == "ERROR":
        return VendorUpdate(
            vendor_task_id=request_id,
            status=TaskStatus.FAILED,
            raw_status=status,
            error=_error_text(body.get("error"), payload, "fal reported an error"),
        )
    update = result_update(request_id, payload)
    return VendorUpdate(
        vendor_task_id=request_id,
        status=update.status,
        raw_status=status,
        outputs=update.outputs,
        error=update.error,
    )


def signed_message(*, request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs: the three headers and the body's SHA-256, one per line."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def verify_signature(
    body: bytes,
    headers: Mapping[str, str],
    keys: Sequence[Ed25519PublicKey],
    *,
    now: float,
    tolerance: float,
) -> Delivery:
    """Check the signature over the raw bytes under any current key, then the timestamp window.

    The signature comes first so that a forgery is never reported as merely stale. The delivery
    id is the same on fal's retries of one webhook (same request, same bytes).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    request_id = lowered.get(HEADER_REQUEST_ID, "")
    user_id = lowered.get(HEADER_USER_ID, "")
    timestamp = lowered.get(HEADER_TIMESTAMP, "")
    signature_hex = lowered.get(HEADER_SIGNATURE, "")
    if not (request_id and user_id and timestamp and signature_hex):
        raise SignatureInvalid(
            "X-Fal-Webhook-Request-Id, -User-Id, -Timestamp and -Signature are required"
        )
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError as exc:
        raise SignatureInvalid("X-Fal-Webhook-Signature is not hex") from exc
    if len(signature) != 64:
        raise SignatureInvalid("X-Fal-Webhook-Signature is not an ED25519 signature")
    message = signed_message(request_id=request_id, user_id=user_id, timestamp=timestamp, body=body)
    if not any(_verifies(key, signature, message) for key in keys):
        raise UnknownSigningKey()
    seconds = check_timestamp(
        timestamp, now=now, tolerance=tolerance, header="X-Fal-Webhook-Timestamp"
    )
    digest = hashlib.sha256(body).hexdigest()
    return Delivery(
        delivery_id=f"{request_id}:{digest[:16]}",
        timestamp=seconds,
        account=user_id,
        job=request_id,
    )


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def parse_jwks(document: Any) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 signing keys of a JWKS; other keys are skipped. ValueError when none."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or (entry.get("kty"), entry.get("crv")) != (
            "OKP",
            "Ed25519",
        ):
            continue
        if entry.get("use", "sig") != "sig" or not isinstance(entry.get("x"), str):
            continue
        x = entry["x"].rstrip("=")  # fal's live JWKS pads its base64url; the RFC does not
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError):
            continue
    if not keys:
        raise ValueError("the JWKS holds no Ed25519 signing key")
    return tuple(keys)


# -- the adapter ----------------------------------------------------------------------------


class FalAdapter:
    name = NAME
    signed_callbacks = True
    actions: frozenset[str] = frozenset()
    finds_created = False
    # The result of a COMPLETED request: 1 hour, or 6 minutes when it is 10 KB or more (which
    # we cannot know in advance: the worst case it is).
    result_retention: float | None = 6 * 60.0

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_key: str,
        queue_base: str = DEFAULT_QUEUE_BASE,
        jwks_url: str = DEFAULT_JWKS_URL,
        tolerance: float = 300.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
        max_key_age: float = MAX_KEY_AGE,
        api_base: str = DEFAULT_API_BASE,
    ) -> None:
        self._client = client
        self._base = queue_base.rstrip("/")
        self._api_base = api_base.rstrip("/")
        self._jwks_url = jwks_url
        self._headers = {"Authorization": f"Key {api_key}"}
        self._tolerance = tolerance
        self._timeout = timeout
        self._clock = clock
        self._min_refresh_interval = min_refresh_interval
        self._max_key_age = max_key_age
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._fetched_at: float | None = None  # when the keys we hold were fetched
        self._attempted_at: float | None = None  # when we last tried, successful or not
        self._refresh_lock = asyncio.Lock()
        self._background: set[asyncio.Task[bool]] = set()

    # -- keys -------------------------------------------------------------------------------

    @property
    def keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The signing keys currently trusted."""
        return self._keys

    async def check_credentials(self, model: str = CHECK_MODEL) -> str:
        """The platform API's model pricing: cheap, and it answers a valid key only."""
        response = await send(
            self._client,
            "GET",
            f"{self._api_base}/models/pricing",
            vendor="fal",
            headers=self._headers,
            timeout=self._timeout,
            params={"endpoint_id": model},
        )
        raise_for_transient(response, vendor="fal", credential="key")
        if response.status_code >= 400:
            detail = detail_text(json_object(response).get("detail")) or "no detail"
            raise VendorRejected(f"fal refused the pricing call ({response.status_code}): {detail}")
        prices = json_object(response).get("prices")
        if not isinstance(prices, list):
            raise VendorUnavailable("fal's pricing answer has no prices")
        return f"key accepted (priced {model})"

    async def prepare(self) -> None:
        """Fetch fal's signing keys; VendorUnavailable when they cannot be had."""
        async with self._refresh_lock:
            self._attempted_at = self._clock()
            self._install(await self._fetch_jwks())

    def refresh_due(self) -> bool:
        """True when a JWKS fetch is allowed now (not within the minimum interval of the last)."""
        return (
            self._attempted_at is None
            or self._clock() - self._attempted_at >= self._min_refresh_interval
        )

    async def refresh_keys(self) -> bool:
        """Fetch the JWKS again unless it was tried too recently; True when new keys came in.

        Concurrent callers share one fetch: the ones that waited find it done and return False
        with the fresh keys already installed. Never raises for fal's failures (logged).
        """
        async with self._refresh_lock:
            if not self.refresh_due():
                return False
            self._attempted_at = self._clock()
            try:
                keys = await self._fetch_jwks()
            except VendorUnavailable as exc:
                log.warning("fal_jwks_refresh_failed", error=str(exc))
                return False
            self._install(keys)
            return True

    def _install(self, keys: tuple[Ed25519PublicKey, ...]) -> None:
        self._keys = keys
        self._fetched_at = self._clock()

    def _keys_stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_key_age

    def _refresh_in_background(self) -> None:
        """Start a rate-limited refresh when an event loop runs (a sync caller cannot await)."""
        if not self.refresh_due() or any(not t.done() for t in self._background):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.refresh_keys())
        self._background.add(task)
        task.add_done_callback(self._forget)

    async def drain(self) -> None:
        """Wait for background key refreshes to finish (a clean shutdown; tests)."""
        while self._background:
            await asyncio.wait(list(self._background))

    def _forget(self, task: asyncio.Task[bool]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("fal_jwks_refresh_crashed", error=repr(exc))

    async def _fetch_jwks(self) -> tuple[Ed25519PublicKey, ...]:
        # The JWKS is public: our key is not sent to it.
        try:
            response = await self._client.get(self._jwks_url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise VendorUnavailable(f"fal's JWKS unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise VendorUnavailable(f"fal's JWKS answered {response.status_code}")
        try:
            return parse_jwks(response.json())
        except ValueError as exc:
            raise VendorUnavailable(f"fal's JWKS is unusable: {exc}") from exc

    # -- webhooks ---------------------------------------------------------------------------

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> Delivery:
        """Verify with the cached keys. An unknown key (or an old cache) starts a background
        refresh, so fal's retry of the same webhook passes after a key rotation; callers that
        can await should use :meth:`verify_async`, which lets the first delivery pass."""
        try:
            delivery = verify_signature(
                body, headers, self._keys, now=now, tolerance=self._tolerance
            )
        except UnknownSigningKey:
            self._refresh_in_background()
            raise
        if self._keys_stale():
            self._refresh_in_background()
        return delivery

    async def verify_async(
        self, body: bytes, headers: Mapping[str, str], *, now: float
    ) -> Delivery:
        """Like :meth:`verify`, but when no cached key matches, refresh the JWKS (at most once
        per minimum interval) and try once more before refusing."""
        try:
            return self.verify(body, headers, now=now)
        except UnknownSigningKey:
            pass
        await self.refresh_keys()
        return self.verify(body, headers, now=now)

    def parse(self, body: bytes) -> VendorUpdate:
        try:
            return webhook_update(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadInvalid(f"not a fal webhook: {exc}") from exc

    # -- the queue API ----------------------------------------------------------------------

    def model_error(self, model: str) -> str | None:
        parts = model.split("/")
        if _MODEL.fullmatch(model) and (parts[0] not in _NAMESPACES or len(parts) >= 3):
            return None
        return "model must be a fal model id like 'fal-ai/flux/dev' (owner/app[/path])"

    def model_key(self, model: str) -> str:
        # Every path is its own endpoint with its own price (fal-ai/flux/dev, .../schnell).
        return model.lower()

    async def submit(
        self, *, task_id: uuid.UUID, model: str, input: Mapping[str, Any], callback_url: str
    ) -> VendorUpdate:
        # No idempotency key exists at fal (task_id unused): see the module docstring.
        body = await self._call(
            "POST", f"{self._base}/{model}", json=dict(input), params={"fal_webhook": callback_url}
        )
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise VendorUnavailable("fal accepted the request without a request_id")
        urls = {key: body[key] for key in URL_FIELDS if isinstance(body.get(key), str)}
        return VendorUpdate(
            vendor_task_id=request_id,
            status=TaskStatus.SUBMITTED,
            raw_status="IN_QUEUE",
            urls=urls or None,
        )

    async def find_created(
        self, *, model: str, input: Mapping[str, Any], since: datetime
    ) -> list[VendorUpdate]:
        """fal has no API to list jobs: an ambiguous create cannot be looked up."""
        raise VendorUnavailable("fal cannot list its jobs")

    async def submit_action(
        self,
        *,
        task_id: uuid.UUID,
        parent_vendor_task_id: str,
        action: str,
        index: int,
        callback_url: str,
    ) -> VendorUpdate:
        raise VendorRejected("fal has no follow-up actions on a request")

    async def fetch(
        self, vendor_task_id: str, *, model: str, urls: Mapping[str, str] | None = None
    ) -> VendorUpdate:
        where = self._urls(vendor_task_id, model, urls)
        body = await self._call("GET", where["status_url"], params={"logs": "1"})
        try:
            update = status_update(vendor_task_id, body)
        except ValueError as exc:
            raise VendorUnavailable(f"unexpected fal status answer: {exc}") from exc
        if update is not None:
            return update
        return await self._result(vendor_task_id, where["response_url"])

    async def cancel(
        self, vendor_task_id: str, *, model: str, urls: Mapping[str, str] | None = None
    ) -> None:
        url = self._urls(vendor_task_id, model, urls)["cancel_url"]
        response = await self._send("PUT", url)
        if (
            response.status_code == 400
            and json_object(response).get("status") == "ALREADY_COMPLETED"
        ):
            return  # nothing left to stop
        self._check(response)

    def _urls(self, request_id: str, model: str, given: Mapping[str, str] | None) -> dict[str, str]:
        """The URLs submit gave for this request when every one of them is fit to receive our
        key (the queue's own scheme, host and port, naming this request); else, for tasks
        registered before they were kept, the form fal's client builds."""
        if given is not None and all(self._ours(given.get(k), request_id) for k in URL_FIELDS):
            return {key: given[key] for key in URL_FIELDS}
        if self.model_error(model) is not None:
            raise VendorRejected(f"cannot address fal request {request_id} of model {model!r}")
        base = f"{self._base}/{app_id(model)}/requests/{request_id}"
        return {
            "status_url": f"{base}/status",
            "response_url": base,
            "cancel_url": f"{base}/cancel",
        }

    def _ours(self, url: str | None, request_id: str) -> bool:
        if not isinstance(url, str):
            return False
        try:
            theirs, queue = httpx.URL(url), httpx.URL(self._base)
        except httpx.InvalidURL:
            return False
        return (theirs.scheme, theirs.host, theirs.port) == (
            queue.scheme,
            queue.host,
            queue.port,
        ) and request_id in theirs.path.split("/")

    async def _result(self, request_id: str, url: str) -> VendorUpdate:
        """A COMPLETED request's result. fal answers with the model's own status: an error
        declared by fal (X-Fal-Error-Type) or a JSON error body is the job's failure; overload
        answers and non-JSON ingress errors are ours to retry."""
        response = await self._send("GET", url)
        if response.is_success:
            return result_update(request_id, self._check(response))
        status, body = response.status_code, json_object(response)
        declared = response.headers.get("x-fal-error-type") or body.get("error_type")
        if status == 404 and not declared:
            # The status said COMPLETED, the result is gone: fal deleted it (6 minutes for a
            # result of 10 KB or more, an hour otherwise).
            return VendorUpdate(
                vendor_task_id=request_id,
                status=TaskStatus.FAILED,
                raw_status="COMPLETED",
                error="the request completed, but fal deleted its result before we read it",
                error_code=RESULT_EXPIRED,
            )
        if not declared and (status < 400 or status in (401, 403, 429, 503) or not body):
            self._check(response)  # raises for every error status
            raise VendorUnavailable(f"fal answered {status} for the result")
        error = detail_text(body.get("detail")) or f"HTTP {response.status_code}"
        if declared:
            error = f"{error} ({declared})"
        return VendorUpdate(
            vendor_task_id=request_id,
            status=TaskStatus.FAILED,
            raw_status="COMPLETED",
            error=error[:1000],
        )

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._check(await self._send(method, url, **kwargs))

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await send(
            self._client,
            method,
            url,
            vendor="fal",
            headers=self._headers,
            timeout=self._timeout,
            **kwargs,
        )

    def _check(self, response: httpx.Response) -> Any:
        """The JSON of a successful answer, or the error it stands for."""
        raise_for_transient(response, vendor="fal", credential="key")
        status = response.status_code
        if status >= 400:
            detail = detail_text(json_object(response).get("detail")) or f"HTTP {status}"
            raise VendorRejected(f"fal rejected the request: {detail[:500]}")
        try:
            return response.json()
        except ValueError as exc:
            raise VendorUnavailable("fal answered with a body that is not JSON") from exc


@dataclass(frozen=True, kw_only=True)
class FalSettings:
    api_key: str = setting("FAL_KEY", doc="fal's API key; unset, no fal", read=text, secret=True)
    queue_base: str = setting(
        "FAL_QUEUE_BASE", DEFAULT_QUEUE_BASE, doc="fal's queue API", read=base_url
    )
    jwks_url: str = setting(
        "FAL_JWKS_URL", DEFAULT_JWKS_URL, doc="fal's webhook signing keys", read=text
    )
    # fal's platform API (model pricing answers only a valid key: `taskhook check` asks it).
    api_base: str = setting(
        "FAL_API_BASE", DEFAULT_API_BASE, doc="fal's platform API", read=base_url
    )
    # Our fal account (X-Fal-Webhook-User-Id); None: learned and pinned (lifecycle/accounts.py).
    user_id: str | None = setting(
        "FAL_USER_ID", None, doc="the fal account whose webhooks we accept", read=text
    )


def _build(config: FalSettings, http: httpx.AsyncClient, settings: Settings) -> VendorAdapter:
    return FalAdapter(
        http,
        api_key=config.api_key,
        queue_base=config.queue_base,
        jwks_url=config.jwks_url,
        api_base=config.api_base,
        tolerance=settings.webhook_tolerance,
        timeout=settings.registration_timeout,
    )


def _checks(
    config: FalSettings, adapter: VendorAdapter, settings: Settings, client: httpx.AsyncClient
) -> VendorChecks:
    async def keys() -> str:
        assert isinstance(adapter, FalAdapter)
        await adapter.prepare()
        return f"{len(adapter.keys)} signing key(s) fetched from fal's JWKS"

    return (("fal webhook keys", keys),)


def _account(config: FalSettings) -> str | None:
    return config.user_id


VENDOR = VendorPlugin(
    name=NAME,
    settings=FalSettings,
    enabled_by="FAL_KEY",
    headers=(
        "x-fal-webhook-request-id",
        "x-fal-webhook-user-id",
        "x-fal-webhook-timestamp",
        "x-fal-webhook-signature",
    ),
    build=_build,
    account=_account,
    checks=_checks,
)
