"""GET /v1/tasks/{id}/events: Server-Sent Events of one task until it is terminal.

Driven by PostgreSQL NOTIFY (lifecycle/events.py), so it works across any number of web
processes. Event ids are the task's update time in microseconds, which only grows, so
`Last-Event-ID` lets a reconnecting client skip what it has already seen.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from common.errors import NotFound, ValidationFailed
from common.ids import parse_task_id
from common.states import TERMINAL
from db import queries
from db.models import Task
from lifecycle.runtime import Runtime
from submit.auth import current_user
from submit.render import render_task

HEARTBEAT_SECONDS = 15.0
# A NOTIFY is never lost while the listener is up, but a re-read now and then is cheap insurance.
RECHECK_SECONDS = 30.0
MAX_EVENT_ID_DIGITS = 19  # a bigint; microseconds since 1970 have 16


def sequence(task: Task) -> int:
    return int(task.updated_at.timestamp() * 1_000_000)


async def _event(rt: Runtime, task: Task) -> str:
    data = json.dumps(await render_task(task, rt.store), separators=(",", ":"))
    return f"id: {sequence(task)}\nevent: task\ndata: {data}\n\n"


def _last_event_id(raw: str) -> int:
    """-1 when absent; our own ids only (microseconds: up to 19 digits), since one that is
    not can only skip events the client has not seen."""
    if not raw:
        return -1
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_EVENT_ID_DIGITS):
        raise ValidationFailed(
            details=[
                {
                    "field": "Last-Event-ID",
                    "message": f"an event id this stream sent: 1-{MAX_EVENT_ID_DIGITS} digits",
                }
            ]
        )
    return int(raw)


async def task_events(request: Request) -> StreamingResponse:
    rt: Runtime = request.app.state.runtime
    # EventSource cannot send headers, so browsers may pass the key as ?key=
    user = await current_user(request, allow_query_key=True)
    task_id = parse_task_id(request.path_params["task_id"])
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=user.id) if task_id else None
    if task is None:
        raise NotFound("No task with this id belongs to you.")
    last_seen = _last_event_id(request.headers.get("last-event-id", ""))

    async def stream() -> AsyncIterator[str]:
        nonlocal last_seen
        async with rt.events.subscribe(task.id) as changes:
            current: Task | None = task
            while current is not None:
                async with rt.pool.acquire() as conn:
                    current = await queries.get_task(conn, task_id=task.id, user_id=user.id)
                if current is None:
                    return
                if sequence(current) > last_seen:
                    last_seen = sequence(current)
                    yield await _event(rt, current)
                if current.status in TERMINAL:
                    return
                try:
                    await asyncio.wait_for(changes.get(), timeout=HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
