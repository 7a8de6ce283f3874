"""Typed wrappers around the named SQL blocks in web/admin.sql (the operator dashboard's reads).

Only this module knows the `$n` order of each statement; callers pass keywords.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from asyncpg import Record

from db.queries import Conn, load_queries

QUERIES: Mapping[str, str] = load_queries(
    resources.files("web").joinpath("admin.sql").read_text(encoding="utf-8")
)


@dataclass(frozen=True, kw_only=True)
class StuckTask:
    id: uuid.UUID
    email: str
    status: str
    progress: int
    vendor: str
    model: str
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    overdue: bool  # past its deadline; otherwise merely silent for too long
    retrying: bool  # pending, its registration retried after a failed attempt (last_error)

    @classmethod
    def from_record(cls, record: Record) -> StuckTask:
        return cls(**dict(record))


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    id: int
    vendor: str
    delivery_id: str
    task_id: uuid.UUID | None
    error: str | None
    received_at: datetime
    bytes: int

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        return cls(**dict(record))


@dataclass(frozen=True, kw_only=True)
class VendorHealthRow:
    vendor: str
    circuit: str  # closed | open | half-open
    failures: int
    open_until: datetime | None
    blocked_until: datetime | None
    updated_at: datetime
    creates_blocked_until: datetime | None  # a 429 on a create (its own budget) blocks them

    @classmethod
    def from_record(cls, record: Record) -> VendorHealthRow:
        return cls(**dict(record))


@dataclass(frozen=True, kw_only=True)
class Refund:
    id: int
    task_id: uuid.UUID
    email: str
    amount: int
    created_at: datetime
    task_status: str
    error_code: str | None
    error_detail: str | None

    @classmethod
    def from_record(cls, record: Record) -> Refund:
        return cls(**dict(record))


@dataclass(frozen=True, kw_only=True)
class UserCredits:
    id: uuid.UUID
    email: str
    balance: int
    active_tasks: int

    @classmethod
    def from_record(cls, record: Record) -> UserCredits:
        return cls(**dict(record))


async def count_by_state(conn: Conn) -> dict[str, int]:
    """Tasks per state. The counts' mark is read first and handed over as values, planned
    for them (a custom plan: from its sixth run a generic one would scan every task)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        mark = await conn.fetchrow(QUERIES["counts_mark"])
        assert mark is not None  # made by 0014_live_paths.sql
        rows = await conn.fetch(QUERIES["count_by_state"], mark["at"], mark["task_id"])
    return {r["status"]: r["n"] for r in rows}


async def stuck_tasks(conn: Conn, *, silent_seconds: float, limit: int) -> list[StuckTask]:
    records = await conn.fetch(QUERIES["stuck_tasks"], silent_seconds, limit)
    return [StuckTask.from_record(r) for r in records]


async def dead_letters(conn: Conn, *, limit: int) -> list[DeadLetter]:
    return [DeadLetter.from_record(r) for r in await conn.fetch(QUERIES["dead_letters"], limit)]


async def results_expired(conn: Conn) -> dict[str, tuple[int, int]]:
    """Vendor -> (results lost to its retention ever, in the last day)."""
    return {
        r["vendor"]: (r["total"], r["last_day"])
        for r in await conn.fetch(QUERIES["results_expired"])
    }


async def vendor_health(conn: Conn) -> list[VendorHealthRow]:
    return [VendorHealthRow.from_record(r) for r in await conn.fetch(QUERIES["vendor_health"])]


async def recent_refunds(conn: Conn, *, limit: int) -> list[Refund]:
    return [Refund.from_record(r) for r in await conn.fetch(QUERIES["recent_refunds"], limit)]


async def user_credits(conn: Conn, *, limit: int) -> list[UserCredits]:
    return [UserCredits.from_record(r) for r in await conn.fetch(QUERIES["user_credits"], limit)]
