"""Client API: submit a task, read it back, see your credits."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from db import queries
from db.models import format_user_id, parse_task_id
from submit.auth import current_user
from submit.cancel import cancel_task
from submit.listing import list_tasks
from submit.registration import register_new
from submit.render import render_task
from submit.streaming import task_events
from taskhook.errors import (
    ActiveTaskLimit,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
    Unavailable,
    ValidationFailed,
)
from taskhook.http import read_json
from taskhook.runtime import Runtime
from taskhook.tracing import trace_id_from

log = structlog.get_logger()

_FIELDS = {"model", "input", "vendor"}
MAX_IDEMPOTENCY_KEY = 255


def _validate(body: Any, rt: Runtime) -> tuple[str, str, dict[str, Any]]:
    """(vendor, model, input), or ValidationFailed listing every problem at once."""
    if not isinstance(body, dict):
        raise ValidationFailed(details=[{"field": "", "message": "the body must be a JSON object"}])
    problems: list[dict[str, str]] = []
    for name in sorted(set(body) - _FIELDS):
        problems.append({"field": name, "message": "unknown field"})
    vendors = rt.settings.vendors
    # Only an absent vendor means "the default"; an explicit null is a mistake like any other.
    vendor = body["vendor"] if "vendor" in body else (vendors[0] if vendors else None)
    if "vendor" in body and (not isinstance(vendor, str) or vendor not in rt.vendors):
        problems.append(
            {"field": "vendor", "message": f"must be one of: {', '.join(vendors) or 'none'}"}
        )
        vendor = None
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        problems.append({"field": "model", "message": "required: a model name of 1-200 characters"})
    elif vendor is not None:
        error = rt.vendors[vendor].model_error(model)
        if error:
            problems.append({"field": "model", "message": error})
    task_input = body.get("input")
    if not isinstance(task_input, dict):
        problems.append({"field": "input", "message": "required: an object of model inputs"})
    if problems:
        raise ValidationFailed(details=problems)
    if vendor is None:
        raise Unavailable("No vendor is configured on this server.")
    assert isinstance(model, str) and isinstance(task_input, dict)
    return vendor, model, task_input


def _request_hash(vendor: str, model: str, task_input: dict[str, Any]) -> bytes:
    canonical = json.dumps([vendor, model, task_input], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


async def create_task(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    body = await read_json(request, limit=rt.settings.max_body_bytes)
    vendor, model, task_input = _validate(body, rt)
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise ValidationFailed(
            details=[{"field": "Idempotency-Key", "message": "must be 1-255 characters"}]
        )
    request_hash = _request_hash(vendor, model, task_input)
    trace_id = trace_id_from(
        request.headers.get("traceparent"), request.headers.get("x-request-id")
    )
    task_id, created = await _charge_and_insert(
        rt,
        user_id=user.id,
        vendor=vendor,
        model=model,
        task_input=task_input,
        key=key,
        request_hash=request_hash,
        trace_id=trace_id,
    )
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=user.id)
    assert task is not None
    if created:
        log.info("task_submitted", task_id=task.public_id, vendor=vendor, trace_id=trace_id)
        rt.spawn(register_new(rt, task.id))
    headers = {"Location": f"/v1/tasks/{task.public_id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(render_task(task, rt.store), status_code=202, headers=headers)


async def _charge_and_insert(
    rt: Runtime,
    *,
    user_id: uuid.UUID,
    vendor: str,
    model: str,
    task_input: dict[str, Any],
    key: str | None,
    request_hash: bytes,
    trace_id: str,
) -> tuple[uuid.UUID, bool]:
    """(task id, created). Charge and insert commit together; a lost key race rolls back."""
    for _ in range(3):
        async with rt.pool.acquire() as conn:
            if key is not None:
                existing = await queries.find_idempotent_task(
                    conn, user_id=user_id, idempotency_key=key
                )
                if existing is not None:
                    if existing[1] != request_hash:
                        raise IdempotencyConflict()
                    return existing[0], False
            try:
                async with conn.transaction():
                    charged, task_id = await queries.create_task(
                        conn,
                        task_id=uuid.uuid4(),
                        user_id=user_id,
                        vendor=vendor,
                        model=model,
                        input=task_input,
                        cost=rt.settings.task_cost,
                        idempotency_key=key,
                        request_hash=request_hash if key else None,
                        trace_id=trace_id,
                        deadline_seconds=rt.settings.task_deadline,
                        registration_lease_seconds=rt.settings.registration_timeout + 5,
                        max_active=rt.settings.max_active_tasks,
                    )
                    if not charged:
                        balance, _ = await queries.user_limits(conn, user_id=user_id)
                        if balance < rt.settings.task_cost:
                            raise InsufficientCredits(
                                f"This task costs {rt.settings.task_cost} credit(s)."
                            )
                        raise ActiveTaskLimit(
                            f"You already have {rt.settings.max_active_tasks} unfinished tasks; "
                            "submit more when some have finished."
                        )
                    if task_id is None:
                        raise _KeyRaceLost()
                    return task_id, True
            except _KeyRaceLost:
                continue
    raise Unavailable("Could not settle a concurrent request with the same Idempotency-Key.")


class _KeyRaceLost(Exception):
    """A concurrent request inserted the same idempotency key first; roll back and re-read."""


async def get_task(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    task_id = parse_task_id(request.path_params["task_id"])
    task = None
    if task_id is not None:
        async with rt.pool.acquire() as conn:
            task = await queries.get_task(conn, task_id=task_id, user_id=user.id)
    if task is None:
        raise NotFound("No task with this id belongs to you.")
    return JSONResponse(render_task(task, rt.store))


async def me(request: Request) -> JSONResponse:
    user = await current_user(request)
    return JSONResponse(
        {"id": format_user_id(user.id), "email": user.email, "credits": user.balance}
    )


routes = [
    Route("/v1/tasks", create_task, methods=["POST"]),
    Route("/v1/tasks", list_tasks, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/events", task_events, methods=["GET"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/me", me, methods=["GET"]),
]

__all__ = ["routes"]
