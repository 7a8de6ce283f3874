"""The operator dashboard's JSON API under /admin/api, behind the admin key.

The key travels as `Authorization: Bearer <admin key>` and is compared in constant time. The
overview is read-only; replaying a dead letter goes through receiver.replay, the same code as
`taskhook deliveries replay`.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import NotFound, Unauthorized
from common.ids import format_task_id, format_user_id
from common.settings import Settings
from common.states import TaskStatus
from db import operations_queries
from lifecycle.replay import MAX_DELIVERY_ROW_ID, replay_delivery
from lifecycle.runtime import Runtime
from web import admin_queries, admin_webhooks

NO_STORE = {"Cache-Control": "no-store"}

STUCK_LIMIT = 100
DEAD_LETTER_LIMIT = 100
REFUND_LIMIT = 20
USER_LIMIT = 200


def silent_after(settings: Settings) -> float:
    """Seconds without any change after which an open task counts as stuck: ten minutes, or a
    third of the deadline when deadlines are shorter (a task silent that long will miss it)."""
    return max(1.0, min(600.0, settings.task_deadline / 3))


def require_admin(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    if rt.settings.admin_key is None:
        raise NotFound("The admin API is turned off on this deployment (TASKHOOK_ADMIN_KEY=off).")
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    expected = rt.settings.admin_key.encode()
    given = key.strip().encode()
    # Compare even when the scheme is wrong, so timing says nothing about which part failed.
    matches = hmac.compare_digest(given, expected)
    if scheme.lower() != "bearer" or not given or not matches:
        raise Unauthorized("A valid admin key is required: send `Authorization: Bearer <key>`.")
    return rt


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _controls(row: dict[str, Any]) -> dict[str, Any]:
    """An operator's pause, and the last failed call (why a circuit opened)."""
    return {
        "paused": row.get("paused_at") is not None,
        "paused_at": _time(row.get("paused_at")),
        "paused_reason": row.get("paused_reason"),
        "last_error": row.get("last_error"),
        "last_error_at": _time(row.get("last_error_at")),
    }


async def overview(request: Request) -> JSONResponse:
    rt = require_admin(request)
    silent = silent_after(rt.settings)
    async with rt.pool.acquire() as conn:
        counts = await admin_queries.count_by_state(conn)
        stuck = await admin_queries.stuck_tasks(conn, silent_seconds=silent, limit=STUCK_LIMIT)
        dead = await admin_queries.dead_letters(conn, limit=DEAD_LETTER_LIMIT)
        health = await admin_queries.vendor_health(conn)
        expired = await admin_queries.results_expired(conn)
        refunds = await admin_queries.recent_refunds(conn, limit=REFUND_LIMIT)
        users = await admin_queries.user_credits(conn, limit=USER_LIMIT)
        controls = await operations_queries.vendor_controls(conn)
        client_webhooks = await admin_webhooks.panel(conn)

    rows = {v.vendor: v for v in health}
    vendors: list[dict[str, Any]] = []
    for name in sorted(set(rt.vendors) | set(rows) | set(expired)):
        row = rows.get(name)
        readiness = rt.readiness.get(name)
        lost, lost_today = expired.get(name, (0, 0))
        vendors.append(
            {
                "vendor": name,
                "configured": name in rt.vendors,
                # This process's preparation (webhook secrets, keys), retried until it works.
                "ready": readiness.ready if readiness else None,
                "prepare_error": readiness.error if readiness else None,
                "circuit": row.circuit if row else "closed",
                "failures": row.failures if row else 0,
                "open_until": _time(row.open_until) if row else None,
                "blocked_until": _time(row.blocked_until) if row else None,
                "creates_blocked_until": _time(row.creates_blocked_until) if row else None,
                "updated_at": _time(row.updated_at) if row else None,
                "results_expired": lost,
                "results_expired_last_day": lost_today,
                **_controls(controls.get(name, {})),
            }
        )

    body: dict[str, Any] = {
        "counts": {status.value: counts.get(status.value, 0) for status in TaskStatus},
        "stuck": [
            {
                "id": format_task_id(t.id),
                "email": t.email,
                "status": t.status,
                "progress": t.progress,
                "vendor": t.vendor,
                "model": t.model,
                "attempts": t.attempts,
                "last_error": t.last_error,
                "reason": "overdue" if t.overdue else "retrying" if t.retrying else "silent",
                "created_at": _time(t.created_at),
                "updated_at": _time(t.updated_at),
                "deadline_at": _time(t.deadline_at),
            }
            for t in stuck
        ],
        "dead_letters": [
            {
                "id": d.id,
                "vendor": d.vendor,
                "delivery_id": d.delivery_id,
                "task_id": format_task_id(d.task_id) if d.task_id else None,
                "error": d.error,
                "bytes": d.bytes,
                "received_at": _time(d.received_at),
            }
            for d in dead
        ],
        "vendors": vendors,
        "results_expired": sum(total for total, _ in expired.values()),
        "refunds": [
            {
                "task_id": format_task_id(r.task_id),
                "email": r.email,
                "amount": r.amount,
                "task_status": r.task_status,
                "error_code": r.error_code,
                "error_detail": r.error_detail,
                "created_at": _time(r.created_at),
            }
            for r in refunds
        ],
        "users": [
            {
                "id": format_user_id(u.id),
                "email": u.email,
                "balance": u.balance,
                "active_tasks": u.active_tasks,
            }
            for u in users
        ],
        "silent_after_seconds": silent,
        "client_webhooks": client_webhooks,
    }
    return JSONResponse(body, headers=NO_STORE)


async def replay(request: Request) -> JSONResponse:
    rt = require_admin(request)
    # Parsed here, after the key check: the router's int converter ran before it, on any
    # number of digits (int() refuses more than 4300). A bigserial has at most 19.
    raw = request.path_params["delivery_id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_DELIVERY_ROW_ID))):
        raise NotFound("No delivery with this id.")
    result = await replay_delivery(rt, int(raw))
    return JSONResponse(
        {"id": result.delivery_row_id, "status": result.status, "message": result.message},
        headers=NO_STORE,
    )


async def replay_webhook(request: Request) -> JSONResponse:
    """Send a client's webhook event again (the dashboard's panel of webhooks to clients)."""
    rt = require_admin(request)
    async with rt.pool.acquire() as conn:
        body = await admin_webhooks.replay(conn, request.path_params["event_id"])
    return JSONResponse(body, headers=NO_STORE)
