"""Replicate: the predictions HTTP API and its Standard Webhooks callbacks.

Wire format: https://replicate.com/docs/reference/http (create by model or by version, get,
cancel; Bearer token) and https://replicate.com/docs/topics/webhooks (webhook-id,
webhook-timestamp, webhook-signature over `id.timestamp.body`, `whsec_` secret).
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from common.errors import PayloadInvalid, VendorRejected, VendorUnavailable, VerificationUnavailable
from common.settings import Settings, base_url, setting, text
from common.states import TaskStatus
from vendors.base import (
    RESULT_EXPIRED,
    CheckFailed,
    VendorAdapter,
    VendorChecks,
    VendorPlugin,
    VendorUpdate,
)
from vendors.http import raise_for_transient, seconds_in, send
from vendors.signature import Delivery, decode_secret, verify_standard_webhook

NAME = "replicate"
EVENTS_FILTER = ("start", "output", "logs", "completed")
_VERSION_ID = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[A-Za-z0-9]+")
# Both parts are path segments of the API's URLs: never `.` or `..`, nor anything else that
# does not start with a letter or digit.
_MODEL = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", re.ASCII)
# tqdm lines in the logs ("  50%|█████     | 2/4 ...") are the only progress Replicate reports.
_PROGRESS = re.compile(r"(\d{1,3})%\|")
# A running prediction is never done: many models run several tqdm loops (a base and a
# refiner, an upscaler after the sampler), so the first loop's 100% is not the end.
RUNNING_PROGRESS_CAP = 99


# Replicate's 429 carries no Retry-After; its body says when ("Request was throttled. Your rate
# limit resets in ~30s.", formerly "Expected available in 1 second.").
# https://replicate.com/docs/topics/predictions/rate-limits
_THROTTLE_WAIT = re.compile(r"(?:resets in|available in)\s*~?\s*(\d+(?:\.\d+)?)\s*s", re.I)

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
    """The latest tqdm percentage, below 100 while the prediction runs (see the cap)."""
    if not logs:
        return None
    found = _PROGRESS.findall(logs)
    return min(RUNNING_PROGRESS_CAP, int(found[-1])) if found else None


def is_output(value: str) -> bool:
    """A file output: an http(s) URL, or the `data:` URI a `Prefer: wait` create returns
    (https://replicate.com/docs/topics/predictions/create-a-prediction)."""
    return value.startswith(("http://", "https://", "data:"))


def output_urls(output: Any) -> list[str]:
    """Replicate models return a URL, a list of URLs, or an object of them; keep them in order."""
    if isinstance(output, str):
        return [output] if is_output(output) else []
    if isinstance(output, list):
        return [url for item in output for url in output_urls(item)]
    if isinstance(output, dict):
        return [url for item in output.values() for url in output_urls(item)]
    return []


def webhook_base_problem(public_url: str | None) -> str | None:
    """Why Replicate would not deliver webhooks under this base URL (TASKHOOK_PUBLIC_URL), or
    None. It calls only https webhook URLs ("webhook: an HTTPS URL", its HTTP API reference),
    from the internet: a loopback or private address is out of its reach."""
    if not public_url:
        return "TASKHOOK_PUBLIC_URL is not set: Replicate could not call back"
    try:
        url = httpx.URL(public_url)
    except httpx.InvalidURL:
        return f"TASKHOOK_PUBLIC_URL is not a URL: {public_url!r}"
    if url.scheme != "https":
        return (
            f"TASKHOOK_PUBLIC_URL must be https: Replicate calls only https webhook URLs, "
            f"got {public_url!r}"
        )
    host = url.host
    try:
        private = not ipaddress.ip_address(host).is_global
    except ValueError:
        private = host == "localhost" or host.endswith((".localhost", ".local", ".internal"))
    if private:
        return f"TASKHOOK_PUBLIC_URL points at {host}, which Replicate cannot reach"
    return None


async def webhook_redirect_problem(client: httpx.AsyncClient, public_url: str) -> str | None:
    """Whether a webhook POSTed under this base URL is answered with a redirect: Replicate does
    not follow one, so every webhook would be lost (an http-to-https or www redirect in front of
    the deployment is the usual cause). None when it is not; VendorUnavailable-free: transport
    errors are for the caller to report."""
    probe = f"{public_url.rstrip('/')}/hooks/replicate/redirect-probe"
    response = await client.post(probe, content=b"{}", follow_redirects=False)
    if response.is_redirect:
        target = response.headers.get("location", "?")
        return (
            f"{probe} answers HTTP {response.status_code} (to {target}): Replicate follows no "
            "redirect, its webhooks would be lost; set TASKHOOK_PUBLIC_URL to where it points"
        )
    return None


def throttle_wait(response: httpx.Response) -> float | None:
    """How long a 429's body says to wait, when no header did."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return None
    found = _THROTTLE_WAIT.search(detail) if isinstance(detail, str) else None
    return seconds_in(found.group(1)) if found else None


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
    error = error_code = None
    if status == "succeeded":
        outputs = output_urls(prediction.get("output"))
        if not outputs and prediction.get("data_removed") is True:
            # Replicate deletes an API prediction's files an hour after it ends.
            mapped, error_code = TaskStatus.FAILED, RESULT_EXPIRED
            error = "the prediction succeeded, but Replicate deleted its output (data_removed)"
        elif not outputs:
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
        error_code=error_code,
    )


# An ambiguous create is looked for among the predictions created since a little before it was
# sent (Replicate's clock and ours may differ), at most this many pages of 100 back.
CLOCK_SKEW = timedelta(minutes=2)
MAX_LIST_PAGES = 20


def created_at(prediction: Mapping[str, Any]) -> datetime | None:
    value = prediction.get("created_at")
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def same_job(prediction: Mapping[str, Any], *, model: str, input: Mapping[str, Any]) -> bool:
    """Whether a listed prediction is what our create for `model` with `input` would have made:
    made through the API, for this model (or version), with exactly this input."""
    if prediction.get("source", "api") != "api" or prediction.get("input") != dict(input):
        return False
    name, _, version = model.partition(":")
    if _VERSION_ID.fullmatch(model):
        return prediction.get("version") == model
    if version:
        return prediction.get("version") == version and prediction.get("model") == name
    return prediction.get("model") == name


class ReplicateAdapter:
    name = NAME
    signed_callbacks = True
    actions: frozenset[str] = frozenset()
    finds_created = True
    # "You can create predictions at 600 requests per minute. All other endpoints you can call
    # at 3000 requests per minute." https://replicate.com/docs/topics/predictions/rate-limits
    create_rate = 600 / 60
    # "Input and output (including any files) are automatically deleted after an hour for any
    # predictions created through the API." https://replicate.com/docs/webhooks
    result_retention: float | None = 3600.0

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
        # No idempotency key: Replicate has none (its API declares no such header), so a create
        # retried after a timeout could start a second job. Registration asks `find_created`
        # before it sends one again, and a stray job's webhook gets it canceled.
        return self._update(await self._call("POST", path, json=body))

    async def find_created(
        self, *, model: str, input: Mapping[str, Any], since: datetime
    ) -> list[VendorUpdate]:
        """Walk `GET /predictions` (newest first, 100 a page) back to `since` minus the clock
        skew; https://replicate.com/docs/reference/http#predictions.list."""
        oldest = since - CLOCK_SKEW
        found: list[VendorUpdate] = []
        url: str | None = f"{self._base}/predictions"
        for _ in range(MAX_LIST_PAGES):
            if url is None:
                return found
            page = await self._call_url("GET", url)
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise VendorUnavailable("Replicate's prediction list has no results")
            for entry in results:
                if not isinstance(entry, dict):
                    continue
                when = created_at(entry)
                if when is not None and when < oldest:
                    return found
                if same_job(entry, model=model, input=input):
                    found.append(self._update(entry))
            next_url = page.get("next")
            url = next_url if isinstance(next_url, str) and self._own(next_url) else None
        raise VendorUnavailable(
            f"more than {MAX_LIST_PAGES * 100} predictions since {oldest.isoformat()}: "
            "cannot tell whether the create went through"
        )

    def _own(self, url: str) -> bool:
        """A `next` link we may send our token to: Replicate's own API, nowhere else."""
        theirs, ours = httpx.URL(url), httpx.URL(self._base)
        return (theirs.scheme, theirs.host, theirs.port) == (ours.scheme, ours.host, ours.port)

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

    async def fetch(
        self, vendor_task_id: str, *, model: str = "", urls: Mapping[str, str] | None = None
    ) -> VendorUpdate:
        return self._update(await self._call("GET", f"/predictions/{vendor_task_id}"))

    async def cancel(
        self, vendor_task_id: str, *, model: str = "", urls: Mapping[str, str] | None = None
    ) -> None:
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

    async def _call(self, method: str, path: str, *, json: Any = None) -> Any:
        return await self._call_url(method, self._base + path, json=json)

    async def _call_url(self, method: str, url: str, *, json: Any = None) -> Any:
        response = await send(
            self._client,
            method,
            url,
            vendor="Replicate",
            headers=self._headers,
            timeout=self._timeout,
            json=json,
        )
        raise_for_transient(response, vendor="Replicate", credential="token", wait=throttle_wait)
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


def webhook_secrets(raw: str) -> tuple[str, ...]:
    """REPLICATE_WEBHOOK_SECRET: `whsec_...` secrets, comma-separated (several during a
    rotation), their base64 padded or not, as the official library reads them."""
    found = tuple(s.strip() for s in raw.split(",") if s.strip())
    for secret in found:
        try:
            if not secret.startswith("whsec_"):
                raise ValueError(secret)
            decode_secret(secret)
        except ValueError:
            raise ValueError("whsec_<base64> secrets, comma-separated") from None
    return found


DEFAULT_API_BASE = "https://api.replicate.com/v1"


@dataclass(frozen=True, kw_only=True)
class ReplicateSettings:
    api_token: str = setting(
        "REPLICATE_API_TOKEN",
        doc="Replicate's API token; unset, no Replicate",
        read=text,
        secret=True,
    )
    api_base: str = setting(
        "REPLICATE_API_BASE", DEFAULT_API_BASE, doc="Replicate's API", read=base_url
    )
    # Several `whsec_...` secrets during a rotation; empty = fetch the account's default secret.
    webhook_secrets: tuple[str, ...] = setting(
        "REPLICATE_WEBHOOK_SECRET",
        (),
        doc="webhook signing secrets; unset: the account's default one, fetched",
        read=webhook_secrets,
        secret=True,
    )


def _build(config: ReplicateSettings, http: httpx.AsyncClient, settings: Settings) -> VendorAdapter:
    return ReplicateAdapter(
        http,
        api_token=config.api_token,
        api_base=config.api_base,
        webhook_secrets=config.webhook_secrets,
        tolerance=settings.webhook_tolerance,
        timeout=settings.registration_timeout,
    )


def _settings_problem(config: ReplicateSettings, settings: Settings) -> str | None:
    """Replicate delivers webhooks only to an https URL it can reach (issue 16.6). Asked only
    of Replicate itself: with REPLICATE_API_BASE elsewhere (a simulator, a recording proxy) the
    caller of our webhooks is that, and it decides what it can reach."""
    if config.api_base == DEFAULT_API_BASE:
        return webhook_base_problem(settings.public_url)
    return None


def _checks(
    config: ReplicateSettings,
    adapter: VendorAdapter,
    settings: Settings,
    client: httpx.AsyncClient,
) -> VendorChecks:
    async def secret() -> str:
        if config.webhook_secrets:
            return f"{len(config.webhook_secrets)} configured in REPLICATE_WEBHOOK_SECRET"
        async with httpx.AsyncClient(timeout=10.0) as own:
            await _build(config, own, settings).prepare()
        return "the account's default secret was fetched (GET /webhooks/default/secret)"

    async def url() -> str:
        """Replicate delivers only to an https URL it can reach, and follows no redirect
        (16.6). The reachability rule is Replicate's own: with REPLICATE_API_BASE elsewhere (a
        simulator) that other caller decides what it reaches, and only the redirect probe
        applies."""
        public = settings.public_url
        if public is None:
            raise CheckFailed("TASKHOOK_PUBLIC_URL is not set: Replicate could not call back")
        own = config.api_base == DEFAULT_API_BASE
        if own and (problem := webhook_base_problem(public)):
            raise CheckFailed(problem)
        try:
            problem = await webhook_redirect_problem(client, public)
        except httpx.HTTPError as exc:
            raise CheckFailed(f"{public} did not answer: {exc!r}") from None
        if problem:
            raise CheckFailed(problem)
        reach = "https and reachable, " if own else ""
        return f"{public}: {reach}webhooks are answered without a redirect"

    return (("replicate webhook secret", secret), ("replicate webhook url", url))


VENDOR = VendorPlugin(
    name=NAME,
    settings=ReplicateSettings,
    enabled_by="REPLICATE_API_TOKEN",
    # Standard Webhooks' headers.
    headers=("webhook-id", "webhook-timestamp", "webhook-signature"),
    build=_build,
    settings_problem=_settings_problem,
    checks=_checks,
)
