"""Replicate: the predictions HTTP API and its Standard Webhooks callbacks.

Wire format: https://replicate.com/docs/reference/http (create by model or by version, get,
cancel; Bearer token) and https://replicate.com/docs/topics/webhooks (webhook-id,
webhook-timestamp, webhook-signature over `id.timestamp.body`, `whsec_` secret).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from db.models import format_task_id
from db.states import TaskStatus
from receiver.signature import Delivery, decode_secret, verify_standard_webhook
from taskhook.errors import (
    PayloadInvalid,
    VendorRejected,
    VendorUnavailable,
    VerificationUnavailable,
)
from vendors.base import VendorUpdate
from vendors.http import raise_for_transient, send

NAME = "replicate"
EVENTS_FILTER = ("start", "output", "logs", "completed")
_VERSION_ID = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[A-Za-z0-9]+")
# Both parts are path segments of the API's URLs: never `.` or `..`, nor anything else that
# does not start with a letter or digit.
_MODEL = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", re.ASCII)
# tqdm lines in the logs ("  50%|█████     | 2/4 ...") are the only progress Replicate reports.
_PROGRESS = re.compile(r"(\d{1,3})%\|")


_STATUS_MAP: Mapping[str, TaskStatus] = {
    "starting": TaskStatus.SUBMITTED,
    "processing": TaskStatus.PROCESSING,
    "succeeded": TaskStatus.STORING,
    "failed": TaskStatus.FAILED,
    # Canceled or aborted by the vendor, not by our client: for the client that is a failure.
    "canceled": TaskStatus.FAILED,
    "aborted": TaskStatus.FAILED,
}


def progress_from_logs(logs: str | None) -> int | None:
    if not logs:
        return None
    found = _PROGRESS.findall(logs)
    return min(100, int(found[-1])) if found else None


def output_urls(output: Any) -> list[str]:
    """Replicate models return a URL, a list of URLs, or an object of them; keep them in order."""
    if isinstance(output, str):
        return [output] if output.startswith(("http://", "https://")) else []
    if isinstance(output, list):
        return [url for item in output for url in output_urls(item)]
    if isinstance(output, dict):
        return [url for item in output.values() for url in output_urls(item)]
    return []


def to_update(prediction: Any) -> VendorUpdate:
    """Map one prediction object to our vocabulary; ValueError when it is not one."""
    if not isinstance(prediction, dict):
        raise ValueError("prediction is not a JSON object")
    pid, status = prediction.get("id"), prediction.get("status")
    if not isinstance(pid, str) or not pid:
        raise ValueError("prediction has no id")
    if not isinstance(status, str) or status not in _STATUS_MAP:
        raise ValueError(f"unknown prediction status {status!r}")
    mapped = _STATUS_MAP[status]
    outputs = None
    error = None
    if status == "succeeded":
        outputs = output_urls(prediction.get("output"))
        if not outputs:
            mapped, error = TaskStatus.FAILED, "the prediction succeeded without any output file"
    elif status in ("failed", "canceled", "aborted"):
        error = str(prediction.get("error") or f"prediction {status}")
    logs = prediction.get("logs")
    return VendorUpdate(
        vendor_task_id=pid,
        status=mapped,
        raw_status=status,
        progress=progress_from_logs(logs if isinstance(logs, str) else None),
        outputs=outputs,
        error=error,
    )


class ReplicateAdapter:
    name = NAME
    signed_callbacks = True
    actions: frozenset[str] = frozenset()

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_token: str,
        api_base: str,
        webhook_secrets: Sequence[str] = (),
        tolerance: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        self._client = client
        self._base = api_base.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_token}"}
        self._secrets = [decode_secret(s) for s in webhook_secrets]
        self._tolerance = tolerance
        self._timeout = timeout

    async def prepare(self) -> None:
        """Without a configured secret, use the account's default one, as Replicate suggests."""
        if self._secrets:
            return
        body = await self._call("GET", "/webhooks/default/secret")
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str):
            raise VendorUnavailable("Replicate returned no webhook signing secret")
        try:
            self._secrets = [decode_secret(key)]
        except ValueError as exc:
            raise VendorUnavailable(f"Replicate's webhook secret is unusable: {exc}") from exc

    async def check_credentials(self) -> str:
        """`GET /account`: the token's owner, Replicate's cheapest authenticated call."""
        body = await self._call("GET", "/account")
        username = body.get("username") if isinstance(body, dict) else None
        if not isinstance(username, str):
            raise VendorUnavailable("Replicate's account answer names no username")
        return f"token of {body.get('type') or 'account'} {username!r}"

    def model_error(self, model: str) -> str | None:
        name, _, version = model.partition(":")
        if _VERSION_ID.fullmatch(model) or (
            _MODEL.fullmatch(name) and (not version or _VERSION.fullmatch(version))
        ):
            return None
        return "model must be 'owner/name', 'owner/name:version' or a 64-hex version id"

    def model_key(self, model: str) -> str:
        # A version of a model is that model (Replicate's names are case-insensitive).
        return model.partition(":")[0].lower()

    async def submit(
        self, *, task_id: uuid.UUID, model: str, input: Mapping[str, Any], callback_url: str
    ) -> VendorUpdate:
        body: dict[str, Any] = {
            "input": dict(input),
            "webhook": callback_url,
            "webhook_events_filter": list(EVENTS_FILTER),
        }
        name, _, version = model.partition(":")
        if _VERSION_ID.fullmatch(model):
            path, body["version"] = "/predictions", model
        elif version:
            path, body["version"] = "/predictions", version
        else:
            path = f"/models/{name}/predictions"
        # Our task id, fixed before any retry, so a retried create cannot make a second job.
        headers = {"Idempotency-Key": format_task_id(task_id)}
        return self._update(await self._call("POST", path, json=body, headers=headers))

    async def submit_action(
        self,
        *,
        task_id: uuid.UUID,
        parent_vendor_task_id: str,
        action: str,
        index: int,
        callback_url: str,
    ) -> VendorUpdate:
        raise VendorRejected("Replicate has no follow-up actions on a prediction")

    async def fetch(self, vendor_task_id: str, *, model: str = "") -> VendorUpdate:
        return self._update(await self._call("GET", f"/predictions/{vendor_task_id}"))

    async def cancel(self, vendor_task_id: str, *, model: str = "") -> None:
        await self._call("POST", f"/predictions/{vendor_task_id}/cancel")

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> Delivery:
        if not self._secrets:
            # Not the sender's fault: the account's secret has not been fetched yet (the
            # runtime retries). A 503 makes Replicate deliver again instead of dropping it.
            raise VerificationUnavailable(
                "Replicate's webhook signing secret has not been fetched yet; taskhook is "
                "retrying. Deliver again shortly."
            )
        return verify_standard_webhook(
            body, headers, self._secrets, now=now, tolerance=self._tolerance
        )

    def parse(self, body: bytes) -> VendorUpdate:
        try:
            return to_update(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadInvalid(f"not a Replicate prediction: {exc}") from exc

    def _update(self, body: Any) -> VendorUpdate:
        try:
            return to_update(body)
        except ValueError as exc:
            raise VendorUnavailable(f"unexpected Replicate response: {exc}") from exc

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        response = await send(
            self._client,
            method,
            self._base + path,
            vendor="Replicate",
            headers={**self._headers, **(headers or {})},
            timeout=self._timeout,
            json=json,
        )
        raise_for_transient(response, vendor="Replicate", credential="token")
        if response.status_code >= 400:
            raise VendorRejected(f"Replicate rejected the request: {_detail(response)}")
        try:
            return response.json()
        except ValueError as exc:
            raise VendorUnavailable("Replicate answered with a body that is not JSON") from exc


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:500]
    return str(body)[:500]
