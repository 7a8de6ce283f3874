"""midjourney-proxy's dialect of the simulator: ``/mj/submit/imagine``, ``/mj/submit/change``
and ``/mj/task/{id}/fetch`` over the shared job lifecycle.

What it reproduces of novicezk/midjourney-proxy (see ``vendors/midjourney_proxy.py`` for the
sources): numeric task ids (epoch milliseconds + 3 random digits), submit answers that are HTTP
200 with a ``code`` whatever happened, 403 with an empty body for a wrong ``mj-api-secret``, an
empty 200 for an unknown task, and the task JSON POSTed unsigned to ``notifyHook`` on every
change: SUBMITTED at start, IN_PROGRESS with ``"25%"`` … ``"100%"`` per step (so a 100% callback
comes before the SUCCESS one, as with the real proxy), then SUCCESS with ``imageUrl`` or FAILURE
with ``failReason``. A change on a parent that is not SUCCESS gets the proxy's code 4
``关联任务状态错误``. ``mj_lag`` makes a finished job look IN_PROGRESS to fetch and change for a
while after its final notify, as a relay's lagging copy does (the ``task_status_not_success``
race of background note 003).

The fault knobs apply as on the Replicate routes: ``error_rate`` (503/429, no effect) here, the
webhook faults in the shared courier. There is no signature, so a ``bad_signature`` copy is
just one more identical POST. Neither proxy retries a notify.

``mj_dialect="trueai"`` is trueai-org/midjourney-proxy since v10 (SubmitController.cs,
TaskService.cs, TaskController.cs): no ``/mj/submit/change`` (404); a finished grid carries
``buttons`` (U1-U4, the reroll, V1-V4, each a Discord ``customId`` with the message's hash) and a
follow-up presses one with ``POST /mj/submit/action {taskId, customId}``; a variation or reroll
is created ``MODAL`` and answered code 21 "Waiting for window confirm" (remix on, no auto
submit) and runs only after ``POST /mj/submit/modal {taskId, prompt}`` (a window never confirmed
closes after 10 minutes, scaled, and the task is ``CANCEL``); an unknown task's fetch is an
empty 204.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.guard import guard
from simulator.predictions import ALL_EVENTS, EventKind, Prediction
from simulator.validation import REJECT_WORD, CreateRequest

if TYPE_CHECKING:
    from simulator.lifecycle import Simulator


MODEL = "midjourney"
SECRET_HEADER = "mj-api-secret"  # noqa: S105 - a header name, not a secret
CHANGE_ACTIONS = ("UPSCALE", "VARIATION", "REROLL")
# Jobs whose result is a 4-image grid, the only ones a change can act on.
_CHANGEABLE = frozenset({"IMAGINE", "VARIATION", "REROLL"})
_INDEXED = frozenset({"UPSCALE", "VARIATION"})

_STATUS = {
    "starting": "SUBMITTED",
    "processing": "IN_PROGRESS",
    "succeeded": "SUCCESS",
    "failed": "FAILURE",
    "canceled": "FAILURE",  # trueai's cancel fails the task with this reason
}
CANCELED_REASON = "取消任务"
DIALECTS = ("novicezk", "trueai")
MODAL_WINDOW = 600.0
"""Seconds a trueai task waits in MODAL for its confirmation (the simulator's choice)."""
WAITING_FOR_CONFIRM = "Waiting for window confirm"
UNKNOWN_ACTION = "未知的 Action 类型"
_GRID_ACTIONS = frozenset({"IMAGINE", "VARIATION", "REROLL"})

# The proxy's own descriptions (SubmitController, TaskQueueHelper).
SUBMITTED = "提交成功"
PROMPT_EMPTY = "prompt不能为空"
BANNED = "可能包含敏感词"
TASK_ID_EMPTY = "taskId不能为空"
BAD_ACTION = "action参数错误"
PARENT_NOT_FOUND = "关联任务不存在或已失效"
PARENT_NOT_SUCCESS = "关联任务状态错误"
PARENT_NOT_CHANGEABLE = "关联任务不允许执行变化"


class MjError(Exception):
    """A submit answer with a failure code; HTTP 200, as the proxy sends it (trueai answers an
    unknown task with 404)."""

    def __init__(
        self, code: int, description: str, *, http_status: int = 200, **properties: Any
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.http_status = http_status
        self.properties = properties

    def response(self) -> JSONResponse:
        body = {
            "code": self.code,
            "description": self.description,
            "result": None,
            "properties": self.properties,
        }
        return JSONResponse(body, status_code=self.http_status)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _submit_ms(prediction: Prediction) -> int:
    created = datetime.strptime(prediction.created_at, "%Y-%m-%dT%H:%M:%S.%fZ")
    return int(created.replace(tzinfo=UTC).timestamp() * 1000)


def description(job: dict[str, Any]) -> str:
    """The proxy's task description: the Discord command it stands for."""
    action = job.get("action", "IMAGINE")
    if action == "IMAGINE":
        return f"/imagine {job['prompt']}"
    if action == "REROLL":
        return f"/up {job['parent']} R"
    return f"/up {job['parent']} {action[0]}{job['index']}"


def message_hash(prediction: Prediction) -> str:
    """The Discord message hash a finished task's buttons carry (stable per task)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mj-sim/{prediction.id}"))


def buttons(prediction: Prediction) -> list[dict[str, Any]]:
    """trueai: the Discord components of a finished task's message, as it stores them."""
    h = message_hash(prediction)
    if prediction.input.get("action", "IMAGINE") in _GRID_ACTIONS:
        return [
            *(_button(f"MJ::JOB::upsample::{i}::{h}", f"U{i}") for i in range(1, 5)),
            _button(f"MJ::JOB::reroll::0::{h}::SOLO", "", emoji="🔄"),
            *(_button(f"MJ::JOB::variation::{i}::{h}", f"V{i}") for i in range(1, 5)),
        ]
    return [  # an upscaled image (a subset of upscale_buttons.json)
        _button(f"MJ::JOB::low_variation::1::{h}::SOLO", "Vary (Subtle)", emoji="🪄"),
        _button(f"MJ::JOB::high_variation::1::{h}::SOLO", "Vary (Strong)", emoji="🪄"),
        _button(f"MJ::Outpaint::50::1::{h}::SOLO", "Zoom Out 2x", emoji="🔍"),
    ]


def _button(custom_id: str, label: str, *, emoji: str = "") -> dict[str, Any]:
    return {"customId": custom_id, "emoji": emoji, "label": label, "style": 2, "type": 2}


def task_json(
    prediction: Prediction, *, lagging: bool = False, fork: str = "novicezk"
) -> dict[str, Any]:
    """The proxy's task object; ``lagging`` shows a finished job as still running."""
    job = prediction.input
    status = "IN_PROGRESS" if lagging else _STATUS[prediction.status]
    if fork == "trueai" and prediction.held:
        status = "MODAL"
    elif fork == "trueai" and prediction.status == "canceled" and not lagging:
        status = "CANCEL"
    succeeded = status == "SUCCESS"
    fail_reason = None
    if status == "FAILURE":
        fail_reason = prediction.error or CANCELED_REASON
    return {
        "id": prediction.id,
        "action": job.get("action", "IMAGINE"),
        "prompt": prediction.prompt,
        "promptEn": prediction.prompt,
        "description": description(job),
        "state": job.get("state"),
        "submitTime": _submit_ms(prediction),
        "startTime": _ms(prediction.started_ts),
        "finishTime": None if lagging else _ms(prediction.completed_ts),
        "imageUrl": prediction.output[0] if succeeded and prediction.output else None,
        "status": status,
        "progress": "100%" if succeeded else f"{prediction.progress}%",
        "failReason": fail_reason,
        "properties": {"finalPrompt": prediction.prompt, "notifyHook": prediction.webhook},
    } | ({"buttons": buttons(prediction) if succeeded else []} if fork == "trueai" else {})


class MidjourneyDialect:
    """midjourney-proxy: the task JSON on every change, unsigned."""

    name = "midjourney"

    def __init__(self, fork: str = "novicezk") -> None:
        if fork not in DIALECTS:
            raise ValueError(f"mj_dialect must be one of {DIALECTS}, got {fork!r}")
        self.fork = fork
        self._last_ms = 0

    def new_id(self) -> str:
        """``System.currentTimeMillis() + 3 random digits``; the milliseconds never repeat here,
        so ids stay unique however fast jobs are created."""
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = ms
        return f"{ms}{secrets.randbelow(1000):03d}"

    def webhook_body(self, prediction: Prediction, event: EventKind) -> bytes | None:
        if event == "output":
            return None  # the completion carries the image; the proxy sends nothing extra
        body = task_json(prediction, fork=self.fork)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def webhook_headers(self, message_id: str, body: bytes, *, forged: bool) -> dict[str, str]:
        return {"content-type": "application/json"}

    def retry_delays(self, event: EventKind) -> tuple[float, ...]:
        """None: both proxies POST a notify once and only log a refusal (NotifyServiceImpl.java,
        NotifyService.cs)."""
        return ()


def _fault(status: int) -> Response:
    """What a gateway in front of an overloaded proxy answers."""
    if status == 429:
        return Response("Too Many Requests", status_code=429)
    return Response("Service Unavailable", status_code=503)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    if not isinstance(body, dict):
        raise MjError(4, "参数错误")
    return body


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def routes(sim: Simulator, dialect: MidjourneyDialect | None = None) -> list[Route]:
    """The ``/mj`` routes over the shared simulator, in the configured fork's dialect."""
    config = sim.config
    mj = dialect or MidjourneyDialect(config.mj_dialect)
    trueai = mj.fork == "trueai"

    def authorized(request: Request) -> bool:
        if config.mj_secret is None:
            return True
        given = request.headers.get(SECRET_HEADER, "")
        return hmac.compare_digest(given.encode(), config.mj_secret.encode())

    # The secret first (403, empty body), then the ``error_rate`` dice (no effect).
    api = guard(
        sim,
        authorized=authorized,
        refused=lambda: Response(status_code=403),
        fault=_fault,
        error=MjError,
        render=MjError.response,
    )

    def lagging(prediction: Prediction) -> bool:
        done = prediction.completed_ts
        return prediction.terminal and done is not None and time.time() - done < config.mj_lag

    async def create(
        request: Request, job: dict[str, Any], webhook: Any, *, modal: bool = False
    ) -> Response:
        create = CreateRequest(
            model=MODEL,
            version="",
            input=job,
            webhook=_text(webhook),
            events_filter=ALL_EVENTS,
            num_outputs=1,
        )
        base = config.public_url.rstrip("/") or str(request.base_url).rstrip("/")
        prediction = await sim.create(
            create, base_url=base, dialect=mj, hold_for=MODAL_WINDOW if modal else None
        )
        if modal:
            return JSONResponse(
                {
                    "code": 21,
                    "description": WAITING_FOR_CONFIRM,
                    "result": prediction.id,
                    "properties": {"finalPrompt": prediction.prompt, "remix": True},
                }
            )
        return JSONResponse(
            {"code": 1, "description": SUBMITTED, "result": prediction.id, "properties": {}}
        )

    def parent_of(parent_id: str | None) -> Prediction:
        """The task a follow-up acts on, if it may be acted on (both forks' checks)."""
        if parent_id is None:
            raise MjError(4, TASK_ID_EMPTY)
        parent = sim.get(parent_id)
        if parent is None or parent.dialect is not mj:
            raise MjError(3, PARENT_NOT_FOUND, http_status=404 if trueai else 200)
        if parent.status != "succeeded" or lagging(parent):
            raise MjError(4, PARENT_NOT_SUCCESS)
        return parent

    @api
    async def action(request: Request) -> Response:
        """trueai: press one of the parent's buttons."""
        body = await _body(request)
        parent_id, custom_id = _text(body.get("taskId")), _text(body.get("customId"))
        if parent_id is None or custom_id is None:
            raise MjError(4, "参数错误")
        parent = parent_of(parent_id)
        if custom_id not in {b["customId"] for b in buttons(parent)}:
            raise MjError(4, UNKNOWN_ACTION)
        kind, _, rest = custom_id.removeprefix("MJ::JOB::").partition("::")
        if kind not in ("upsample", "variation", "reroll"):
            raise MjError(4, UNKNOWN_ACTION)  # pan, zoom, vary (region): not simulated
        proxy_action = {"upsample": "UPSCALE", "variation": "VARIATION", "reroll": "REROLL"}[kind]
        job = {
            "prompt": parent.prompt,
            "action": proxy_action,
            "state": body.get("state"),
            "parent": parent.id,
            "index": int(rest.split("::")[0]) if proxy_action in _INDEXED else None,
            "customId": custom_id,
        }
        # Remix on, no auto submit: a variation or reroll waits for its window.
        modal = proxy_action != "UPSCALE"
        return await create(request, job, body.get("notifyHook"), modal=modal)

    @api
    async def modal(request: Request) -> Response:
        """trueai: confirm a MODAL task's window; it runs from now on."""
        body = await _body(request)
        task_id = _text(body.get("taskId"))
        if task_id is None:
            raise MjError(4, "参数错误")
        prediction = sim.get(task_id)
        if prediction is None or prediction.dialect is not mj:
            raise MjError(3, PARENT_NOT_FOUND, http_status=404)
        prompt = _text(body.get("prompt"))
        if prompt is not None:
            prediction.input["prompt"] = prompt
        if not await sim.release(prediction):
            raise MjError(4, PARENT_NOT_SUCCESS)
        return JSONResponse(
            {"code": 1, "description": SUBMITTED, "result": prediction.id, "properties": {}}
        )

    @api
    async def imagine(request: Request) -> Response:
        body = await _body(request)
        prompt = _text(body.get("prompt"))
        if prompt is None:
            raise MjError(4, PROMPT_EMPTY)
        if REJECT_WORD in prompt:
            raise MjError(24, BANNED, promptEn=prompt, bannedWord=REJECT_WORD)
        if not isinstance(body.get("base64Array", []), list):
            raise MjError(4, "base64格式错误")
        job = {"prompt": prompt, "action": "IMAGINE", "state": body.get("state")}
        return await create(request, job, body.get("notifyHook"))

    @api
    async def change(request: Request) -> Response:
        body = await _body(request)
        parent_id, action, index = _text(body.get("taskId")), body.get("action"), body.get("index")
        if parent_id is None:
            raise MjError(4, TASK_ID_EMPTY)
        if action not in CHANGE_ACTIONS:
            raise MjError(4, BAD_ACTION)
        if action in _INDEXED and (type(index) is not int or not 1 <= index <= 4):
            raise MjError(4, "index参数错误")
        parent = sim.get(parent_id)
        if parent is None or parent.dialect is not mj:
            raise MjError(3, PARENT_NOT_FOUND)
        if parent.status != "succeeded" or lagging(parent):
            raise MjError(4, PARENT_NOT_SUCCESS)
        if parent.input.get("action") not in _CHANGEABLE:
            raise MjError(4, PARENT_NOT_CHANGEABLE)
        job = {
            "prompt": parent.prompt,
            "action": action,
            "state": body.get("state"),
            "parent": parent.id,
            "index": index if action in _INDEXED else None,
        }
        return await create(request, job, body.get("notifyHook"))

    @api
    async def fetch(request: Request) -> Response:
        prediction = sim.get(request.path_params["task_id"])
        if prediction is None or prediction.dialect is not mj:
            # A null task: Spring answers an empty 200, ASP.NET Core an empty 204.
            return Response(status_code=204 if trueai else 200)
        sim.stats.fetches[prediction.id] += 1
        return JSONResponse(task_json(prediction, lagging=lagging(prediction), fork=mj.fork))

    @api
    async def list_by_condition(request: Request) -> Response:
        """The tasks of the given ids that the proxy knows ([] for none): TaskController's
        ``listByIds`` in both forks, a cheap call that still needs the secret
        (``taskhook check``)."""
        try:
            body = json.loads(await request.body() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            return JSONResponse([])
        found = [sim.get(i) for i in ids if isinstance(i, str)]
        return JSONResponse(
            [
                task_json(p, lagging=lagging(p), fork=mj.fork)
                for p in found
                if p is not None and p.dialect is mj
            ]
        )

    common = [
        Route("/mj/submit/imagine", imagine, methods=["POST"]),
        Route("/mj/task/list-by-condition", list_by_condition, methods=["POST"]),
        Route("/mj/task/{task_id}/fetch", fetch, methods=["GET"]),
    ]
    if trueai:
        return [
            *common,
            Route("/mj/submit/action", action, methods=["POST"]),
            Route("/mj/submit/modal", modal, methods=["POST"]),
        ]
    return [*common, Route("/mj/submit/change", change, methods=["POST"])]
