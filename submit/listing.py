"""GET /v1/tasks: a user's tasks, newest first, with a signed keyset cursor.

This is how a client finds its unfinished tasks again after closing the page
(`?status=active`). The cursor is signed so a client cannot forge positions, and keyset (not
OFFSET) so pages stay stable while new tasks arrive.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import ValidationFailed
from common.states import TaskStatus
from db import queries
from db.models import Task
from lifecycle.runtime import Runtime
from submit.auth import current_user
from submit.contracts import DEFAULT_LIMIT, MAX_LIMIT
from submit.render import render_tasks

_FILTERS = {"active", *(s.value for s in TaskStatus)}


def _cursors(rt: Runtime) -> URLSafeSerializer:
    return URLSafeSerializer(rt.settings.secret, salt="taskhook.cursor.v1")


def encode_cursor(rt: Runtime, task: Task, status_filter: str | None) -> str:
    value: str = _cursors(rt).dumps([task.created_at.isoformat(), task.id.hex, status_filter])
    return value


def decode_cursor(
    rt: Runtime, cursor: str, status_filter: str | None
) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, task_hex, made_for = _cursors(rt).loads(cursor)
        position = (datetime.fromisoformat(created_at), uuid.UUID(hex=task_hex))
    except (BadSignature, ValueError, TypeError) as exc:
        raise ValidationFailed(
            details=[{"field": "cursor", "message": "not a cursor this server issued"}]
        ) from exc
    if made_for != status_filter:
        raise ValidationFailed(
            details=[{"field": "cursor", "message": "the cursor belongs to another status filter"}]
        )
    return position


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    # Length first: int() refuses (slowly) thousands of digits, before any range check.
    digits = raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_LIMIT))
    if not digits or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationFailed(
            details=[{"field": "limit", "message": f"an integer from 1 to {MAX_LIMIT}"}]
        )
    return int(raw)


async def list_tasks(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    status_filter = request.query_params.get("status")
    if status_filter is not None and status_filter not in _FILTERS:
        raise ValidationFailed(
            details=[{"field": "status", "message": f"one of {', '.join(sorted(_FILTERS))}"}]
        )
    limit = _limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor")
    after = decode_cursor(rt, cursor, status_filter) if cursor else None
    async with rt.pool.acquire() as conn:
        tasks = await queries.list_user_tasks(
            conn,
            user_id=user.id,
            status=None if status_filter in (None, "active") else status_filter,
            active=status_filter == "active",
            after=after,
            limit=limit + 1,  # one more tells whether another page exists
        )
    page, more = tasks[:limit], len(tasks) > limit
    return JSONResponse(
        {
            "data": await render_tasks(page, rt.store),
            "next_cursor": encode_cursor(rt, page[-1], status_filter) if more else None,
        }
    )
