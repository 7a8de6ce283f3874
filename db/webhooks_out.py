"""Typed wrappers around the named SQL blocks in db/webhooks_out.sql (webhooks to clients).

Only this module knows each statement's `$n` order and columns; callers pass keywords and get
dataclasses.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from asyncpg import Record

from db.queries import Conn, load_queries

QUERIES: Mapping[str, str] = load_queries(
    resources.files("db").joinpath("webhooks_out.sql").read_text(encoding="utf-8")
)


@dataclass(frozen=True, kw_only=True)
class OutboxClaim:
    """One event leased to a sender: where it goes, under which id, signed with which keys."""

    id: int
    task_id: uuid.UUID
    user_id: uuid.UUID
    url: str
    host: str
    event: str
    webhook_id: str
    attempt: int  # this attempt's number, from 1
    created_at: datetime
    keys: tuple[bytes, ...]  # newest first

    @classmethod
    def from_record(cls, r: Record) -> OutboxClaim:
        return cls(
            id=r["id"],
            task_id=r["task_id"],
            user_id=r["user_id"],
            url=r["url"],
            host=r["host"],
            event=r["event"],
            webhook_id=r["webhook_id"],
            attempt=r["attempts"],
            created_at=r["created_at"],
            keys=tuple(bytes(k) for k in r["keys"]),
        )


@dataclass(frozen=True, kw_only=True)
class OutboxEvent:
    """One event as operators see it (CLI, dashboard)."""

    id: int
    task_id: uuid.UUID
    user_id: uuid.UUID
    url: str
    host: str
    event: str
    task_status: str
    webhook_id: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime

    @classmethod
    def from_record(cls, r: Record) -> OutboxEvent:
        return cls(**{name: r[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class FailingDestination:
    host: str
    events: int
    failed: int
    gone: int
    retrying: int
    last_at: datetime
    last_answer: str | None

    @classmethod
    def from_record(cls, r: Record) -> FailingDestination:
        return cls(**{name: r[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class OutboxDepth:
    pending: int
    oldest_due: float  # seconds the oldest due event has waited since it was written


async def set_task_webhook(
    conn: Conn, *, task_id: uuid.UUID, url: str, events: Sequence[str]
) -> None:
    await conn.execute(QUERIES["set_task_webhook"], task_id, url, list(events))


async def ensure_secret(conn: Conn, *, user_id: uuid.UUID, new_key: bytes) -> bytes:
    """The user's current key; `new_key` becomes it when there is none. A concurrent first
    call may commit its key between our insert and read: then read again."""
    for _ in range(3):
        key = await conn.fetchval(QUERIES["ensure_secret"], user_id, new_key)
        if key is not None:
            return bytes(key)
    raise RuntimeError("no current webhook secret after three tries")


async def rotate_secret(
    conn: Conn, *, user_id: uuid.UUID, new_key: bytes, grace_seconds: float
) -> bytes:
    """Retire the current key (it signs for `grace_seconds` more) and make `new_key` current,
    in one transaction; the key that is current afterwards (a concurrent rotation's, if it
    won)."""
    async with conn.transaction():
        await conn.execute(QUERIES["retire_current_secret"], user_id, grace_seconds)
        key = await conn.fetchval(QUERIES["insert_current_secret"], user_id, new_key)
    if key is None:
        return await ensure_secret(conn, user_id=user_id, new_key=new_key)
    return bytes(key)


async def claim_outbox(
    conn: Conn,
    *,
    limit: int,
    owner: str,
    lease_seconds: float,
    busy_hosts: Sequence[str],
    per_host: int = 1000,
) -> list[OutboxClaim]:
    if limit <= 0:
        return []
    records = await conn.fetch(
        QUERIES["claim_outbox"], limit, owner, lease_seconds, list(busy_hosts), per_host
    )
    return [OutboxClaim.from_record(r) for r in records]


async def finish_attempt(
    conn: Conn,
    *,
    event_id: int,
    owner: str,
    attempt: int,
    started_at: datetime,
    duration_ms: int,
    status_code: int | None,
    error: str | None,
    response_body: str | None,
    verdict: str,
    retry_in: float,
) -> str | None:
    """Record the attempt; the event's state afterwards, or None when our lease had lapsed
    (another sender holds the event now)."""
    record = await conn.fetchrow(
        QUERIES["finish_attempt"],
        event_id,
        owner,
        attempt,
        started_at,
        duration_ms,
        status_code,
        error,
        response_body,
        verdict,
        retry_in,
    )
    assert record is not None
    state: str | None = record["state"]
    return state


async def release_outbox(conn: Conn, *, event_ids: Sequence[int], owner: str) -> None:
    await conn.execute(QUERIES["release_outbox"], list(event_ids), owner)


async def task_webhook_attempts(
    conn: Conn, *, task_id: uuid.UUID, user_id: uuid.UUID | None
) -> list[Record]:
    return list(await conn.fetch(QUERIES["task_webhook_attempts"], task_id, user_id))


async def list_outbox(
    conn: Conn, *, failed_only: bool, task_id: uuid.UUID | None, limit: int
) -> list[OutboxEvent]:
    records = await conn.fetch(QUERIES["list_outbox"], failed_only, task_id, limit)
    return [OutboxEvent.from_record(r) for r in records]


async def replay_outbox(conn: Conn, *, event_id: int) -> bool:
    """Whether the event is due again now (False: no such event, or it is in flight)."""
    return await conn.fetchrow(QUERIES["replay_outbox"], event_id) is not None


async def failing_destinations(conn: Conn, *, limit: int) -> list[FailingDestination]:
    records = await conn.fetch(QUERIES["failing_destinations"], limit)
    return [FailingDestination.from_record(r) for r in records]


async def outbox_depth(conn: Conn, *, timeout: float | None = None) -> OutboxDepth:
    record = await conn.fetchrow(QUERIES["outbox_depth"], timeout=timeout)
    assert record is not None
    return OutboxDepth(pending=int(record["pending"]), oldest_due=float(record["oldest_due"]))


async def prune_outbox(conn: Conn, *, older_than_seconds: float, limit: int) -> int:
    """How many finished events (with their attempts) were deleted."""
    n: int = await conn.fetchval(QUERIES["prune_outbox"], older_than_seconds, limit)
    return n
