"""Clients' webhooks over HTTP: the signing secret and what was sent (issue 18)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import NotFound
from common.ids import parse_task_id
from db import queries
from lifecycle import client_webhooks
from lifecycle.runtime import Runtime
from submit.auth import current_user


async def get_secret(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    async with rt.pool.acquire() as conn:
        key = await client_webhooks.current_secret(conn, user_id=user.id)
    return JSONResponse({"key": key})


async def rotate_secret(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    async with rt.pool.acquire() as conn:
        key = await client_webhooks.rotate_secret(conn, user_id=user.id)
    return JSONResponse({"key": key})


async def webhook_attempts(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    task_id = parse_task_id(request.path_params["task_id"])
    task = None
    if task_id is not None:
        async with rt.pool.acquire() as conn:
            task = await queries.get_task(conn, task_id=task_id, user_id=user.id)
            if task is not None:
                events = await client_webhooks.task_attempts(conn, task_id=task.id, user_id=user.id)
    if task is None:
        raise NotFound("No task with this id belongs to you.")
    return JSONResponse({"task_id": task.public_id, "events": events})
