"""Typed wrappers around the named SQL blocks in db/accounts.sql: API keys, credit
adjustments, the users list and a user's ledger (issue 17.2).

Only this module knows each statement's `$n` order and columns; callers pass keywords and get
dataclasses.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from asyncpg import Record

from db.queries import Conn, load_queries

QUERIES: Mapping[str, str] = load_queries(
    resources.files("db").joinpath("accounts.sql").read_text(encoding="utf-8")
)

KEY_ID_PREFIX = "key_"
_KEY_ID = re.compile(rf"{KEY_ID_PREFIX}([0-9a-f]{{32}})")


def format_key_id(key_id: uuid.UUID) -> str:
    return f"{KEY_ID_PREFIX}{key_id.hex}"


def parse_key_id(text: str) -> uuid.UUID | None:
    """The uuid behind a public key id (`key_` + 32 lower-case hex digits), else None."""
    found = _KEY_ID.fullmatch(text)
    return uuid.UUID(hex=found.group(1)) if found else None


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """A key as it may be shown after its creation: its prefix, never the key or its hash."""

    id: uuid.UUID
    user_id: uuid.UUID
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_record(cls, record: Record) -> ApiKey:
        return cls(
            id=record["id"],
            user_id=record["user_id"],
            prefix=record["prefix"],
            created_at=record["created_at"],
            revoked_at=record["revoked_at"],
        )

    @property
    def public_id(self) -> str:
        return format_key_id(self.id)


@dataclass(frozen=True, kw_only=True)
class UserSummary:
    id: uuid.UUID
    email: str
    balance: int
    active_tasks: int
    keys: int  # unrevoked
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class LedgerRow:
    id: int
    kind: str  # grant | charge | refund | adjust
    amount: int
    note: str | None
    created_at: datetime
    task_id: uuid.UUID | None
    model: str | None
    vendor: str | None
    task_status: str | None


async def create_api_key(
    conn: Conn,
    *,
    key_id: uuid.UUID,
    user_id: uuid.UUID,
    key_hash: bytes,
    prefix: str,
    max_keys: int,
) -> ApiKey | None:
    """None when the user does not exist or already holds `max_keys` unrevoked keys."""
    record = await conn.fetchrow(
        QUERIES["create_api_key"], key_id, user_id, key_hash, prefix, max_keys
    )
    return ApiKey.from_record(record) if record else None


async def list_api_keys(conn: Conn, *, user_id: uuid.UUID) -> list[ApiKey]:
    return [ApiKey.from_record(r) for r in await conn.fetch(QUERIES["list_api_keys"], user_id)]


async def revoke_api_key(
    conn: Conn, *, key_id: uuid.UUID, user_id: uuid.UUID | None
) -> ApiKey | None:
    """The revoked key; None when there is no such key (of this user, when one is given)."""
    record = await conn.fetchrow(QUERIES["revoke_api_key"], key_id, user_id)
    return ApiKey.from_record(record) if record else None


async def key_of_hash(conn: Conn, *, key_hash: bytes) -> uuid.UUID | None:
    key_id: uuid.UUID | None = await conn.fetchval(QUERIES["key_of_hash"], key_hash)
    return key_id


async def adjust_credits(conn: Conn, *, user_id: uuid.UUID, amount: int, reason: str) -> int | None:
    """The new balance, or None when the adjustment would take it below zero (nothing
    written)."""
    balance: int | None = await conn.fetchval(QUERIES["adjust_credits"], user_id, amount, reason)
    return balance


async def list_users(conn: Conn, *, after_email: str | None, limit: int) -> list[UserSummary]:
    records = await conn.fetch(QUERIES["list_users"], after_email, limit)
    return [
        UserSummary(
            id=r["id"],
            email=r["email"],
            balance=r["balance"],
            active_tasks=r["active_tasks"],
            keys=r["keys"],
            created_at=r["created_at"],
        )
        for r in records
    ]


async def list_ledger(
    conn: Conn, *, user_id: uuid.UUID, before_id: int | None, limit: int
) -> list[LedgerRow]:
    records = await conn.fetch(QUERIES["list_ledger"], user_id, before_id, limit)
    return [
        LedgerRow(
            id=r["id"],
            kind=r["kind"],
            amount=r["amount"],
            note=r["note"],
            created_at=r["created_at"],
            task_id=r["task_id"],
            model=r["model"],
            vendor=r["vendor"],
            task_status=r["task_status"],
        )
        for r in records
    ]
