"""midjourney-proxy: Midjourney's Discord bot behind a small HTTP API, with unsigned callbacks.

Wire format, checked against the sources of novicezk/midjourney-proxy (``SubmitController``,
``TaskController``, ``ReturnCode``, ``TaskQueueHelper``, ``ApiAuthorizeInterceptor``,
``NotifyServiceImpl``, ``docs/api.md``) and of its most used fork trueai-org/midjourney-proxy:

* submit: ``POST {base}/mj/submit/imagine`` ``{"prompt", "notifyHook", "state", "base64Array"}``
  with the ``mj-api-secret`` header (a wrong one gets 403 and an empty body). The answer is HTTP
  200 whatever happened: ``{"code", "description", "result", "properties"}`` where code 1 =
  submitted, 22 = queued, 21 = already exists (``result`` is the task id in all three), 23 = queue
  full (the proxy deleted the task: nothing runs), 24 = banned prompt, 4 = validation error,
  3 = not found, 9 = system error.
* follow-up, two dialects (``MJ_PROXY_DIALECT``; ``auto`` looks at the parent task):

  - novicezk: ``POST {base}/mj/submit/change`` ``{"taskId", "action": "UPSCALE"|"VARIATION"|
    "REROLL", "index": 1-4, "notifyHook", "state"}``; code 21 means the same change exists
    ("任务已存在", docs/api.md), ``properties`` then holding that task's status and image.
  - trueai (v10, Dec 2025, removed ``/mj/submit/change``): ``POST {base}/mj/submit/action``
    ``{"taskId", "customId", "notifyHook", "state"}`` with ``customId`` one of the parent's
    ``buttons`` (``MJ::JOB::upsample::2::<hash>``, ``MJ::JOB::variation::2::<hash>``,
    ``MJ::JOB::reroll::0::<hash>::SOLO``; SubmitController.Action). Code 21 there means
    "Waiting for window confirm": the new task is ``MODAL`` (remix on, RemixAutoSubmit off)
    and runs only once ``POST {base}/mj/submit/modal`` ``{"taskId", "prompt"}`` confirms it
    (TaskService.SubmitAction; an empty prompt takes the parent's).

  A parent that is not ``SUCCESS`` gets code 4 ``关联任务状态错误`` (relays such as new-api
  answer code 4 ``task_status_not_success`` from their own copy, which may lag); an unknown
  parent gets code 3 (trueai: with HTTP 404).
* poll: ``GET {base}/mj/task/{id}/fetch`` → the task, or an empty body for an id the proxy does
  not know (HTTP 200 in the original, 204 in trueai).
* callbacks: the same task JSON POSTed to ``notifyHook`` on every status or progress change,
  with no signature at all. Statuses: NOT_START, SUBMITTED, IN_PROGRESS, FAILURE, SUCCESS, plus
  MODAL and CANCEL in trueai; ``progress`` is a string such as ``"57%"``.

The proxy has no idempotency key for submit: only answers that prove nothing was created
(connect errors, 429, 503, a full queue) are marked ``not_accepted``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from common.errors import PayloadInvalid, VendorParentNotReady, VendorRejected, VendorUnavailable
from common.ids import format_task_id
from common.settings import Settings, http_url, one_of, setting, text
from common.states import TaskStatus
from vendors.base import VendorAdapter, VendorPlugin, VendorUpdate
from vendors.http import raise_for_transient, send
from vendors.signature import Delivery

NAME = "midjourney"
SECRET_HEADER = "mj-api-secret"  # noqa: S105 - a header name, not a secret

_STATUS_MAP: Mapping[str, TaskStatus] = {
    "NOT_START": TaskStatus.SUBMITTED,  # queued inside the proxy
    "SUBMITTED": TaskStatus.SUBMITTED,  # sent to Discord, not drawing yet
    "IN_PROGRESS": TaskStatus.PROCESSING,
    # trueai: the job waits for a remix/zoom prompt answered through /mj/submit/modal. It is
    # alive and may still finish, so not a failure; nobody answering is what deadlines are for.
    "MODAL": TaskStatus.PROCESSING,
    "SUCCESS": TaskStatus.STORING,
    "FAILURE": TaskStatus.FAILED,
    # trueai: canceled at the proxy (by its admin), not by our client: a failure for the client.
    "CANCEL": TaskStatus.FAILED,
}

# Return codes of a submit answer (ReturnCode.java / ReturnCode.cs).
CODE_SUCCESS = 1
CODE_NOT_FOUND = 3
CODE_VALIDATION_ERROR = 4
CODE_FAILURE = 9
CODE_EXISTED = 21
CODE_IN_QUEUE = 22
CODE_QUEUE_REJECTED = 23
CODE_BANNED_PROMPT = 24
_ACCEPTED_CODES = frozenset({CODE_SUCCESS, CODE_EXISTED, CODE_IN_QUEUE})
_REJECTED_CODES = frozenset({CODE_NOT_FOUND, CODE_VALIDATION_ERROR, CODE_BANNED_PROMPT})

# What a code-4 answer says when the parent is not SUCCESS (yet): the proxy's own wording and
# the relays' (new-api). Any other code-4 answer to a change is a permanent refusal.
_PARENT_NOT_READY = ("关联任务状态错误", "task_status_not_success")

# Our action names → the proxy's; REROLL redraws the whole grid and takes no index.
ACTIONS: Mapping[str, str] = {"upscale": "UPSCALE", "variation": "VARIATION", "reroll": "REROLL"}
_INDEXED = frozenset({"UPSCALE", "VARIATION"})
MAX_INDEX = 4
# trueai: the Discord button each action presses, by the start of its customId.
_BUTTONS: Mapping[str, str] = {
    "UPSCALE": "MJ::JOB::upsample::{index}::",
    "VARIATION": "MJ::JOB::variation::{index}::",
    "REROLL": "MJ::JOB::reroll::",
}

DIALECTS = ("auto", "novicezk", "trueai")

# The proxy takes no model id: the prompt's own parameters choose the Midjourney version
# (`--v 6.1`) or the anime model (`--niji 6`), and the proxy passes the prompt to Discord as is.
_MODEL = re.compile(r"(?P<family>midjourney|niji)(?:/v?(?P<version>\d{1,2}(?:\.\d{1,2})?))?")
_VERSION_FLAG = re.compile(r"(?:^|\s)--(?:v|version|niji)(?:\s|$)")
_PROGRESS = re.compile(r"\s*(\d{1,3})(?:\.\d+)?\s*%?\s*")


def progress_percent(value: Any) -> int | None:
    """``"57%"`` → 57, clamped to 0..100; None for ``""``, None and anything unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return min(100, max(0, int(value)))
    if isinstance(value, str) and (found := _PROGRESS.fullmatch(value)):
        return min(100, int(found.group(1)))
    return None


def to_update(task: Any) -> VendorUpdate:
    """Map one task object (fetch answer or callback body); ValueError when it is not one."""
    if not isinstance(task, dict):
        raise ValueError("the task is not a JSON object")
    task_id, status = task.get("id"), task.get("status")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("the task has no id")
    if not isinstance(status, str) or status not in _STATUS_MAP:
        raise ValueError(f"unknown task status {status!r}")
    mapped, outputs, error = _STATUS_MAP[status], None, None
    if status == "SUCCESS":
        # While IN_PROGRESS imageUrl is a blurred preview; only SUCCESS makes it the result.
        url = task.get("imageUrl")
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            outputs = [url]
        else:
            mapped, error = TaskStatus.FAILED, "the task succeeded without an imageUrl"
    elif mapped is TaskStatus.FAILED:
        reason = task.get("failReason")
        error = str(reason)[:1000] if reason else f"midjourney-proxy reported {status}"
    return VendorUpdate(
        vendor_task_id=task_id,
        status=mapped,
        raw_status=status,
        progress=progress_percent(task.get("progress")),
        outputs=outputs,
        error=error,
    )


def prompt_for(model: str, prompt: str) -> str:
    """The prompt with the model's version parameter appended; ValueError on a conflict."""
    found = _MODEL.fullmatch(model)
    if found is None:
        raise ValueError(model_problem())
    family, version = found.group("family"), found.group("version")
    if family == "midjourney" and version is None:
        return prompt  # the account's default model, or whatever the prompt asks for
    if _VERSION_FLAG.search(prompt):
        raise ValueError(
            f"the prompt sets its own --v/--niji; use model 'midjourney' to keep it, "
            f"or drop it from the prompt to use {model!r}"
        )
    flag = "--v" if family == "midjourney" else "--niji"
    return f"{prompt.rstrip()} {flag} {version}" if version else f"{prompt.rstrip()} {flag}"


def model_problem() -> str:
    return (
        "model must be 'midjourney', 'midjourney/v<version>' (e.g. midjourney/v6.1), "
        "'niji' or 'niji/<version>'"
    )


class MidjourneyProxyAdapter:
    name = NAME
    # No signature: a callback is only a hint, confirmed by `fetch` before anything is applied.
    signed_callbacks = False
    actions: frozenset[str] = frozenset(ACTIONS)
    finds_created = False
    # The proxy keeps tasks (in memory, Redis or a database) and its images on Discord's CDN.
    result_retention: float | None = None

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_base: str,
        api_secret: str | None,
        timeout: float = 10.0,
        dialect: str = "auto",
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"midjourney-proxy dialect must be one of {DIALECTS}, not {dialect!r}")
        self.dialect = dialect
        self._client = client
        # The proxy's routes live under its /mj context path; a base that already ends with it
        # (as several clients configure it) must not become /mj/mj.
        self._base = api_base.rstrip("/").removesuffix("/mj")
        self._headers = {SECRET_HEADER: api_secret} if api_secret else {}
        self._timeout = timeout

    async def prepare(self) -> None:
        """Nothing to fetch: there are no keys to verify callbacks with."""

    async def check_credentials(self) -> str:
        """`POST /mj/task/list-by-condition` with no ids: cheap, and behind the secret."""
        status, answer = await self._call("POST", "/mj/task/list-by-condition", json={"ids": []})
        if status >= 400 or not isinstance(answer, list):
            raise VendorRejected(f"midjourney-proxy answered {status} to a task list")
        if SECRET_HEADER not in self._headers:
            return "answered without an mj-api-secret (the proxy asks for none)"
        return "mj-api-secret accepted"

    def model_error(self, model: str) -> str | None:
        return None if _MODEL.fullmatch(model) else model_problem()

    def model_key(self, model: str) -> str:
        # One imagine job whatever the version: the prompt may ask for another one anyway.
        found = _MODEL.fullmatch(model)
        return found.group("family") if found else model.lower()

    async def submit(
        self, *, task_id: uuid.UUID, model: str, input: Mapping[str, Any], callback_url: str
    ) -> VendorUpdate:
        prompt = input.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise VendorRejected("input.prompt is required and must be a non-empty string")
        try:
            final_prompt = prompt_for(model, prompt.strip())
        except ValueError as exc:
            raise VendorRejected(str(exc)) from exc
        body = {
            "prompt": final_prompt,
            "notifyHook": callback_url,
            # Free text the proxy echoes in every task view: lets a human match jobs to tasks.
            "state": format_task_id(task_id),
            "base64Array": [],
        }
        status, answer = await self._call("POST", "/mj/submit/imagine", json=body)
        return self._submitted(status, answer, parent=None)

    async def find_created(
        self, *, model: str, input: Mapping[str, Any], since: datetime
    ) -> list[VendorUpdate]:
        """midjourney-proxy has no API to list jobs: an ambiguous create cannot be looked up."""
        raise VendorUnavailable("midjourney-proxy cannot list its jobs")

    async def submit_action(
        self,
        *,
        task_id: uuid.UUID,
        parent_vendor_task_id: str,
        action: str,
        index: int,
        callback_url: str,
    ) -> VendorUpdate:
        """Raises VendorParentNotReady when the proxy does not see the parent SUCCESS: it may
        still be running (or our view raced its notify), or it failed; fetch it to know which.

        The same request to clients whichever fork answers: novicezk's ``/mj/submit/change``,
        or trueai's ``/mj/submit/action`` with the parent's button (``auto``: a parent task
        with ``buttons`` is trueai's)."""
        proxy_action = ACTIONS.get(action)
        if proxy_action is None:
            raise VendorRejected(f"midjourney-proxy has no action {action!r}")
        if proxy_action in _INDEXED and (isinstance(index, bool) or not 1 <= index <= MAX_INDEX):
            raise VendorRejected(f"{action} needs an image index from 1 to {MAX_INDEX}")
        if self.dialect != "novicezk":
            parent = await self._task(parent_vendor_task_id)
            if self.dialect == "trueai" or parent.get("buttons"):
                return await self._action(
                    task_id, parent, proxy_action, index, callback_url=callback_url
                )
        body: dict[str, Any] = {
            "taskId": parent_vendor_task_id,
            "action": proxy_action,
            "notifyHook": callback_url,
            "state": format_task_id(task_id),
        }
        if proxy_action in _INDEXED:
            body["index"] = index
        status, answer = await self._call("POST", "/mj/submit/change", json=body)
        return self._submitted(status, answer, parent=parent_vendor_task_id)

    async def _action(
        self,
        task_id: uuid.UUID,
        parent: Mapping[str, Any],
        proxy_action: str,
        index: int,
        *,
        callback_url: str,
    ) -> VendorUpdate:
        """trueai: press the parent's button; confirm the window when it asks (code 21)."""
        parent_id = str(parent["id"])
        if parent.get("status") != "SUCCESS":
            raise VendorParentNotReady(
                f"task {parent_id} is {parent.get('status')} at the proxy, not SUCCESS"
            )
        prefix = _BUTTONS[proxy_action].format(index=index)
        buttons = parent.get("buttons")
        custom_ids = (
            [b.get("customId") for b in buttons if isinstance(b, dict)]
            if isinstance(buttons, list)
            else []
        )
        custom_id = next(
            (c for c in custom_ids if isinstance(c, str) and c.startswith(prefix)), None
        )
        if custom_id is None:
            raise VendorRejected(f"task {parent_id} offers no button for {proxy_action} {index}")
        state = format_task_id(task_id)
        press = {
            "taskId": parent_id,
            "customId": custom_id,
            "notifyHook": callback_url,
            "state": state,
        }
        status, answer = await self._call("POST", "/mj/submit/action", json=press)
        if isinstance(answer, dict) and answer.get("code") == CODE_EXISTED and status < 300:
            # "Waiting for window confirm": the task waits in MODAL for the prompt a person
            # would type; ours is the parent's (an empty prompt is the parent's prompt).
            child = answer.get("result")
            properties = answer.get("properties")
            prompt = properties.get("finalPrompt") if isinstance(properties, dict) else None
            confirm = {
                "taskId": child,
                "prompt": prompt if isinstance(prompt, str) else "",
                "notifyHook": callback_url,
                "state": state,
            }
            status, answer = await self._call("POST", "/mj/submit/modal", json=confirm)
        return self._submitted(status, answer, parent=parent_id, existed=False)

    async def _task(self, vendor_task_id: str) -> dict[str, Any]:
        """The proxy's task object; VendorRejected when it does not know the id."""
        status, body = await self._call("GET", f"/mj/task/{quote(vendor_task_id, safe='')}/fetch")
        if status == 404 or body is None:
            # The proxy keeps tasks in memory or Redis with a time to live: an id it does not
            # know was lost in a restart or has expired, and will never come back. Permanent.
            # (An unknown id is an empty 200 at novicezk, a 204 at trueai.)
            raise VendorRejected(f"midjourney-proxy does not know task {vendor_task_id}")
        if status >= 400:
            raise VendorRejected(f"midjourney-proxy refused the fetch ({status})")
        if not isinstance(body, dict):
            raise VendorUnavailable("unexpected midjourney-proxy task: not a JSON object")
        return body

    async def fetch(
        self, vendor_task_id: str, *, model: str = "", urls: Mapping[str, str] | None = None
    ) -> VendorUpdate:
        body = await self._task(vendor_task_id)
        try:
            update = to_update(body)
        except ValueError as exc:
            raise VendorUnavailable(f"unexpected midjourney-proxy task: {exc}") from exc
        if update.vendor_task_id != vendor_task_id:
            raise VendorUnavailable(
                f"midjourney-proxy answered task {update.vendor_task_id} for {vendor_task_id}"
            )
        return update

    async def cancel(
        self, vendor_task_id: str, *, model: str = "", urls: Mapping[str, str] | None = None
    ) -> None:
        """A no-op: the original proxy has no cancel endpoint, and trueai's
        ``POST /mj/task/{id}/cancel`` needs an admin account and only marks the task FAILURE in
        the proxy (Discord draws on). Our task is canceled and refunded on our side; a late
        SUCCESS callback then finds it terminal and changes nothing."""

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> Delivery:
        """Nothing to verify: the signed token in the callback URL (checked by the receiver)
        authenticates it, and the receiver confirms its content with `fetch`. The delivery id is
        the body's digest, so a resend of the same task state dedupes."""
        digest = hashlib.sha256(body).hexdigest()
        return Delivery(delivery_id=f"mj:{digest[:32]}", timestamp=int(now))

    def parse(self, body: bytes) -> VendorUpdate:
        try:
            return to_update(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadInvalid(f"not a midjourney-proxy task: {exc}") from exc

    # -- answers ------------------------------------------------------------------------------

    def _submitted(
        self, status: int, answer: Any, *, parent: str | None, existed: bool = True
    ) -> VendorUpdate:
        """Map a submit/change/action answer to the new job, or raise what its code means.

        Code 21 is "already exists" at novicezk (`existed`); at trueai it is "waiting for
        window confirm", which `_action` confirms before it gets here: a 21 then is no job."""
        if not isinstance(answer, dict) or isinstance(answer.get("code"), bool):
            if 400 <= status < 500:
                raise VendorRejected(f"midjourney-proxy answered {status}")
            raise VendorUnavailable(f"unexpected midjourney-proxy answer (HTTP {status})")
        code, description = answer.get("code"), str(answer.get("description") or "")
        what = f"midjourney-proxy code {code}: {description}"[:500]
        accepted = _ACCEPTED_CODES if existed else _ACCEPTED_CODES - {CODE_EXISTED}
        if code in accepted and 200 <= status < 300:
            return _accepted(code, answer)
        if code == CODE_QUEUE_REJECTED:
            # The proxy deleted the task before answering: nothing runs, another vendor may.
            raise VendorUnavailable(what, not_accepted=True)
        if code == CODE_VALIDATION_ERROR and parent is not None:
            if any(marker in description for marker in _PARENT_NOT_READY):
                raise VendorParentNotReady(f"task {parent} is not SUCCESS at the proxy: {what}")
        if code == CODE_BANNED_PROMPT:
            properties = answer.get("properties")
            word = properties.get("bannedWord") if isinstance(properties, dict) else None
            raise VendorRejected(f"{what} ({word})" if word else what)
        if code in _REJECTED_CODES:
            raise VendorRejected(what)
        # 9 ("system error") and codes we do not know: transient, and the job may exist.
        raise VendorUnavailable(what)

    async def _call(self, method: str, path: str, *, json: Any = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON or None for an empty or non-JSON error body); raises on
        transport errors, 429, 5xx, refused credentials and a 2xx that is not JSON."""
        response = await send(
            self._client,
            method,
            self._base + path,
            vendor="midjourney-proxy",
            headers=self._headers,
            timeout=self._timeout,
            json=json,
        )
        raise_for_transient(response, vendor="midjourney-proxy", credential=SECRET_HEADER)
        status = response.status_code
        if not response.content.strip():
            return status, None
        try:
            return status, response.json()
        except ValueError as exc:
            if status >= 400:
                return status, None  # an HTML error page: the status says it all
            raise VendorUnavailable("midjourney-proxy answered with a non-JSON body") from exc


def _accepted(code: int, answer: Mapping[str, Any]) -> VendorUpdate:
    result = answer.get("result")
    if isinstance(result, int) and not isinstance(result, bool):
        result = str(result)  # some relays' docs show the id as a number
    if not isinstance(result, str) or not result:
        raise VendorUnavailable(f"midjourney-proxy accepted the job (code {code}) without an id")
    properties = answer.get("properties")
    if code == CODE_EXISTED and isinstance(properties, dict):
        # The same change was submitted before: the answer carries that task's state.
        try:
            return to_update({"id": result, **properties})
        except ValueError:
            pass
    # Just created: queued inside the proxy, which is what a fetch would show now.
    return VendorUpdate(vendor_task_id=result, status=TaskStatus.SUBMITTED, raw_status="NOT_START")


@dataclass(frozen=True, kw_only=True)
class MidjourneySettings:
    api_base: str = setting(
        "MJ_PROXY_BASE", doc="the midjourney-proxy's URL; unset, no midjourney", read=http_url
    )
    api_secret: str | None = setting(
        "MJ_PROXY_SECRET", None, doc="sent as mj-api-secret", read=text, secret=True
    )
    # Which fork's follow-up API: novicezk's /mj/submit/change, trueai's /mj/submit/action
    # (v10 removed change); auto tells them apart by the parent task's `buttons`.
    dialect: str = setting(
        "MJ_PROXY_DIALECT", "auto", doc="which fork's follow-up API", read=one_of(*DIALECTS)
    )


def _build(
    config: MidjourneySettings, http: httpx.AsyncClient, settings: Settings
) -> VendorAdapter:
    return MidjourneyProxyAdapter(
        http,
        api_base=config.api_base,
        api_secret=config.api_secret,
        timeout=settings.registration_timeout,
        dialect=config.dialect,
    )


# Unsigned callbacks: nothing in their headers proves anything worth keeping.
VENDOR = VendorPlugin(
    name=NAME, settings=MidjourneySettings, enabled_by="MJ_PROXY_BASE", build=_build
)
