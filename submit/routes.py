"""Client API: submit a task, read it back, see your credits."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.errors import NotFound, Unavailable, ValidationFailed
from common.http import read_json
from common.ids import format_user_id, parse_task_id
from common.settings import VendorRoute
from db import queries
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from lifecycle.routing import choose, plan
from lifecycle.runtime import Runtime
from submit import webhooks
from submit.accept import accept, webhook_key
from submit.actions import create_action
from submit.auth import current_user
from submit.cancel import cancel_task
from submit.keys import routes as key_routes
from submit.listing import list_tasks
from submit.models import list_models
from submit.render import render_task
from submit.streaming import task_events
from submit.usage import usage

log = structlog.get_logger()

_FIELDS = {"model", "input", "vendor", *client_webhooks.FIELDS}


def _validate(
    body: Any, rt: Runtime
) -> tuple[str | None, str, dict[str, Any], list[VendorRoute], ClientWebhook | None]:
    """(pinned vendor, model, input, routes, webhook), or ValidationFailed listing every
    problem."""
    if not isinstance(body, dict):
        raise ValidationFailed(details=[{"field": "", "message": "the body must be a JSON object"}])
    problems: list[dict[str, str]] = []
    for name in sorted(set(body) - _FIELDS):
        problems.append({"field": name, "message": "unknown field"})
    vendors = rt.settings.vendors
    # Only an absent vendor means "route it"; an explicit null is a mistake like any other.
    vendor = body.get("vendor")
    if "vendor" in body and (not isinstance(vendor, str) or vendor not in rt.vendors):
        problems.append(
            {"field": "vendor", "message": f"must be one of: {', '.join(vendors) or 'none'}"}
        )
        vendor = None
    model = body.get("model")
    routes: list[VendorRoute] = []
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        problems.append({"field": "model", "message": "required: a model name of 1-200 characters"})
    elif "vendor" not in body or vendor is not None:
        choice = choose(rt, model, vendor)
        routes = choice.routes
        if choice.problem is not None:
            field, message = choice.problem
            problems.append({"field": field, "message": message})
    task_input = body.get("input")
    if not isinstance(task_input, dict):
        problems.append({"field": "input", "message": "required: an object of model inputs"})
    webhook, webhook_problems = client_webhooks.read_webhook(
        body, allow_private=rt.settings.allow_private_urls
    )
    problems.extend(webhook_problems)
    if problems:
        raise ValidationFailed(details=problems)
    if not routes:
        raise Unavailable("No vendor that can serve this model is configured on this server.")
    assert isinstance(model, str) and isinstance(task_input, dict)
    return vendor, model, task_input, routes, webhook


async def create_task(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    body = await read_json(request, limit=rt.settings.max_body_bytes)
    vendor, model, task_input, routes, webhook = _validate(body, rt)
    return await accept(
        request,
        user_id=user.id,
        model=model,
        plan=await plan(rt, routes),
        task_input=task_input,
        request_key=[vendor or "", model, task_input, *webhook_key(webhook)],
        webhook=webhook,
    )


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
    return JSONResponse(await render_task(task, rt.store))


async def me(request: Request) -> JSONResponse:
    user = await current_user(request)
    return JSONResponse(
        {"id": format_user_id(user.id), "email": user.email, "credits": user.balance}
    )


routes = [
    Route("/v1/tasks", create_task, methods=["POST"]),
    Route("/v1/tasks", list_tasks, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/actions", create_action, methods=["POST"]),
    Route("/v1/tasks/{task_id}/events", task_events, methods=["GET"]),
    Route("/v1/tasks/{task_id}/webhook_attempts", webhooks.webhook_attempts, methods=["GET"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/webhooks/secret", webhooks.get_secret, methods=["GET"]),
    Route("/v1/webhooks/secret/rotate", webhooks.rotate_secret, methods=["POST"]),
    Route("/v1/me", me, methods=["GET"]),
    Route("/v1/me/usage", usage, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    *key_routes,
]

__all__ = ["routes"]
