"""GET /v1/me/usage: a user's ledger, newest first, a page at a time (issue 17.2).

Every charge, refund, grant and operator adjustment with its task (id, model, status) and the
operator's reason, so a user can reconcile their bill against their tasks. The cursor is
signed, as the task list's is, so positions cannot be forged.
"""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import ValidationFailed
from common.ids import format_task_id
from common.times import iso_time
from db import accounts_queries
from db.accounts_queries import LedgerRow
from lifecycle.runtime import Runtime
from submit.auth import current_user
from submit.listing import DEFAULT_LIMIT, MAX_LIMIT, _limit


def _cursors(rt: Runtime) -> URLSafeSerializer:
    return URLSafeSerializer(rt.settings.secret, salt="taskhook.usage.v1")


def render_entry(row: LedgerRow) -> dict[str, Any]:
    task = None
    if row.task_id is not None:
        task = {"id": format_task_id(row.task_id), "model": row.model, "status": row.task_status}
    return {
        "kind": row.kind,  # grant | charge | refund | adjust
        "amount": row.amount,  # credits: negative for a charge (and a negative adjustment)
        "reason": row.note,
        "task": task,
        "created_at": iso_time(row.created_at),
    }


async def usage(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    limit = _limit(request.query_params.get("limit"))
    before: int | None = None
    if cursor := request.query_params.get("cursor"):
        try:
            before = int(_cursors(rt).loads(cursor))
        except (BadSignature, ValueError, TypeError) as exc:
            raise ValidationFailed(
                details=[{"field": "cursor", "message": "not a cursor this server issued"}]
            ) from exc
    async with rt.pool.acquire() as conn:
        rows = await accounts_queries.list_ledger(
            conn, user_id=user.id, before_id=before, limit=limit + 1
        )
    page, more = rows[:limit], len(rows) > limit
    return JSONResponse(
        {
            "data": [render_entry(r) for r in page],
            "credits": user.balance,
            "next_cursor": _cursors(rt).dumps(page[-1].id) if more else None,
        }
    )


__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "usage"]
