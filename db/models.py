"""Rows as frozen dataclasses, so callers never index records by string."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncpg import Record

from common.ids import format_task_id
from common.states import TaskStatus


@dataclass(frozen=True, kw_only=True)
class User:
    id: uuid.UUID
    email: str
    balance: int
    created_at: datetime

    @classmethod
    def from_record(cls, record: Record) -> User:
        return cls(
            id=record["id"],
            email=record["email"],
            balance=record["balance"],
            created_at=record["created_at"],
        )


@dataclass(frozen=True, kw_only=True)
class Task:
    id: uuid.UUID
    user_id: uuid.UUID
    vendor: str
    model: str  # the name the client asked for
    vendor_model: str  # the id the current vendor knows it by
    fallbacks: list[dict[str, Any]]  # routes still to try while pending: {vendor, model}
    parent_id: uuid.UUID | None  # the finished task a follow-up action acts on
    input: dict[str, Any]
    cost: int
    status: TaskStatus
    progress: int
    vendor_task_id: str | None
    outputs: list[str] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    trace_id: str
    attempts: int
    storage_attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    completed_at: datetime | None
    next_attempt_at: datetime | None
    next_poll_at: datetime | None
    refunded: bool
    # Where the vendor said to ask about the job (fal's status/response/cancel URLs); None for
    # vendors without them and tasks registered before they were kept.
    vendor_urls: dict[str, str] | None = None
    # When a create whose answer never came was sent (see 0013_vendor_reality.sql).
    create_ambiguous_at: datetime | None = None

    @classmethod
    def from_record(cls, record: Record) -> Task:
        values = dict(record)
        values["status"] = TaskStatus(values["status"])
        return cls(**values)

    @property
    def public_id(self) -> str:
        return format_task_id(self.id)
