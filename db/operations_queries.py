"""Typed wrappers around the named SQL blocks in db/operations.sql: one task's whole story for
operators (`taskhook tasks show`, the dashboard's task detail) and the live-task list."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from typing import Any

from db.models import Task
from db.queries import Conn, load_queries

QUERIES: Mapping[str, str] = load_queries(
    resources.files("db").joinpath("operations.sql").read_text(encoding="utf-8")
)


async def task_owner(conn: Conn, *, task_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
    record = await conn.fetchrow(QUERIES["task_owner"], task_id)
    return (record["id"], record["email"]) if record else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def task_timeline(conn: Conn, *, task_id: uuid.UUID) -> list[dict[str, Any]]:
    return [
        {**dict(r), "detail": _json(r["detail"])}
        for r in await conn.fetch(QUERIES["task_timeline"], task_id)
    ]


async def task_ledger(conn: Conn, *, task_id: uuid.UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(QUERIES["task_ledger"], task_id)]


async def task_deliveries(
    conn: Conn, *, task_id: uuid.UUID, since: datetime, limit: int
) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(QUERIES["task_deliveries"], task_id, since, limit)]


async def list_tasks_active(conn: Conn, *, limit: int) -> list[Task]:
    return [Task.from_record(r) for r in await conn.fetch(QUERIES["list_tasks_active"], limit)]


async def search_tasks(
    conn: Conn,
    *,
    task_id: uuid.UUID | None,
    user_id: uuid.UUID | None,
    email: str | None,
    status: str | None,
    limit: int,
) -> list[Task]:
    records = await conn.fetch(QUERIES["search_tasks"], task_id, user_id, email, status, limit)
    return [Task.from_record(r) for r in records]


async def retry_registration_now(
    conn: Conn, *, task_id: uuid.UUID, in_flight_seconds: float
) -> bool:
    return (
        await conn.fetchval(QUERIES["retry_registration_now"], task_id, in_flight_seconds)
        is not None
    )


async def retry_storage_now(conn: Conn, *, task_id: uuid.UUID) -> bool:
    return await conn.fetchval(QUERIES["retry_storage_now"], task_id) is not None


async def pause_vendor(conn: Conn, *, vendor: str, reason: str | None) -> datetime:
    paused_at: datetime = await conn.fetchval(QUERIES["pause_vendor"], vendor, reason)
    return paused_at


async def resume_vendor(conn: Conn, *, vendor: str) -> bool:
    return await conn.fetchval(QUERIES["resume_vendor"], vendor) is not None


async def vendor_controls(conn: Conn) -> dict[str, dict[str, Any]]:
    """Per vendor: paused_at, paused_reason, last_error, last_error_at."""
    return {
        r["vendor"]: {
            k: r[k] for k in ("paused_at", "paused_reason", "last_error", "last_error_at")
        }
        for r in await conn.fetch(QUERIES["paused_vendors"])
    }


async def dead_letters_since(conn: Conn, *, since: datetime, limit: int) -> list[int]:
    return [r["id"] for r in await conn.fetch(QUERIES["dead_letters_since"], since, limit)]
