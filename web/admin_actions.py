"""The dashboard acts (issue 17.3): find and open tasks, cancel or retry one, pause and resume
a vendor, replay many dead letters at once. Behind the admin key like the overview; each
handler parses, calls lifecycle (operations, task_detail) and renders.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.errors import NotFound, ValidationFailed
from common.http import read_json
from common.ids import format_task_id, parse_task_id, parse_user_id
from common.states import TaskStatus
from common.times import iso_time
from db import operations_queries
from lifecycle import operations
from lifecycle.task_detail import task_detail, task_summary
from web.admin import NO_STORE, require_admin

SEARCH_LIMIT = 50
MAX_REASON = 500
_STATUSES = {"active", *(s.value for s in TaskStatus)}


def _problem(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(details=[{"field": field, "message": message}])


async def search(request: Request) -> JSONResponse:
    """GET /admin/api/tasks?q=&status=: by task id, user (usr_ id or email) and status."""
    rt = require_admin(request)
    q = request.query_params.get("q", "").strip()
    status = request.query_params.get("status") or None
    if status is not None and status not in _STATUSES:
        raise _problem("status", f"one of {', '.join(sorted(_STATUSES))}")
    task_id = user_id = email = None
    if q.startswith("tsk_"):
        task_id = parse_task_id(q)
        if task_id is None:
            raise _problem("q", "a task id is tsk_ and 32 lower-case hex digits")
    elif q.startswith("usr_"):
        user_id = parse_user_id(q)
        if user_id is None:
            raise _problem("q", "a user id is usr_ and 32 hex digits")
    elif q:
        email = q
    async with rt.pool.acquire() as conn:
        found = await operations_queries.search_tasks(
            conn,
            task_id=task_id,
            user_id=user_id,
            email=email,
            status=status,
            limit=SEARCH_LIMIT,
        )
    return JSONResponse({"data": [task_summary(t) for t in found]}, headers=NO_STORE)


def _task_id(request: Request) -> Any:
    task_id = parse_task_id(request.path_params["task_id"])
    if task_id is None:
        raise NotFound("No task with this id.")
    return task_id


async def detail(request: Request) -> JSONResponse:
    rt = require_admin(request)
    task_id = _task_id(request)
    async with rt.pool.acquire() as conn:
        found = await task_detail(conn, task_id=task_id)
    if found is None:
        raise NotFound("No task with this id.")
    return JSONResponse(found, headers=NO_STORE)


async def cancel(request: Request) -> JSONResponse:
    """Cancel with refund, whoever owns the task (409 once the vendor finished it)."""
    rt = require_admin(request)
    task = await operations.cancel_as_operator(rt, task_id=_task_id(request))
    return JSONResponse(
        {"id": task.public_id, "status": task.status.value, "refunded": task.refunded},
        headers=NO_STORE,
    )


async def retry(request: Request) -> JSONResponse:
    """A pending task's registration or a storing task's storage, now instead of after its
    backoff (409 not_retryable when nothing waits)."""
    rt = require_admin(request)
    task_id = _task_id(request)
    what = await operations.retry_now(rt, task_id=task_id)
    return JSONResponse({"id": format_task_id(task_id), "retrying": what.value}, headers=NO_STORE)


async def _reason(request: Request) -> str | None:
    if not (await request.body()).strip():
        return None
    body = await read_json(request, limit=rt_limit(request))
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise _problem("reason", f"a text of at most {MAX_REASON} characters")
    return (reason.strip() or None) if reason is not None else None


def rt_limit(request: Request) -> int:
    limit: int = request.app.state.runtime.settings.max_body_bytes
    return limit


async def pause(request: Request) -> JSONResponse:
    """Pause a vendor for every process: no calls until resumed (submits go to the next route
    or wait, polls stop). Body (optional): {"reason": "..."}."""
    rt = require_admin(request)
    vendor = request.path_params["vendor"]
    reason = await _reason(request)
    paused_at = await operations.pause_vendor(rt, vendor=vendor, reason=reason)
    return JSONResponse(
        {"vendor": vendor, "paused": True, "paused_at": iso_time(paused_at), "reason": reason},
        headers=NO_STORE,
    )


async def resume(request: Request) -> JSONResponse:
    rt = require_admin(request)
    vendor = request.path_params["vendor"]
    was_paused = await operations.resume_vendor(rt, vendor=vendor)
    return JSONResponse(
        {"vendor": vendor, "paused": False, "was_paused": was_paused}, headers=NO_STORE
    )


async def replay_many(request: Request) -> JSONResponse:
    """POST /admin/api/deliveries/replay {"since": ISO 8601, "preview": bool}: how many dead
    letters arrived since then (preview), or replay them all, oldest first."""
    rt = require_admin(request)
    body = await read_json(request, limit=rt_limit(request))
    if not isinstance(body, dict):
        raise _problem("", "the body must be a JSON object")
    since = _since(body.get("since"))
    preview = body.get("preview", False)
    if not isinstance(preview, bool):
        raise _problem("preview", "true or false")
    done = await operations.replay_since(rt, since=since, preview=preview)
    answer: dict[str, Any] = {"since": iso_time(since), "count": done.count, "preview": preview}
    if not preview:
        statuses = [r.status for r in done.results]
        answer["replayed"] = len(done.results)
        answer["outcomes"] = {s: statuses.count(s) for s in sorted(set(statuses))}
    return JSONResponse(answer, headers=NO_STORE)


def _since(value: Any) -> datetime:
    problem = _problem("since", "an ISO 8601 time, such as 2026-01-31T12:00:00Z")
    if not isinstance(value, str) or len(value) > 40:
        raise problem
    try:
        since = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise problem from None
    return since if since.tzinfo else since.replace(tzinfo=UTC)


routes = [
    Route("/admin/api/tasks", search, methods=["GET"]),
    Route("/admin/api/tasks/{task_id}", detail, methods=["GET"]),
    Route("/admin/api/tasks/{task_id}/cancel", cancel, methods=["POST"]),
    Route("/admin/api/tasks/{task_id}/retry", retry, methods=["POST"]),
    Route("/admin/api/vendors/{vendor}/pause", pause, methods=["POST"]),
    Route("/admin/api/vendors/{vendor}/resume", resume, methods=["POST"]),
    Route("/admin/api/deliveries/replay", replay_many, methods=["POST"]),
]

__all__ = ["routes"]
