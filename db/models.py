"""Rows as frozen dataclasses, so callers never index records by string."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

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


class _Row:
    """A row whose columns are its fields, by name: the query's select list is the type."""

    @classmethod
    def from_record(cls, record: Record) -> Self:
        return cls(**dict(record))


@dataclass(frozen=True, kw_only=True)
class BalanceMismatch(_Row):
    """A user whose balance is not the sum of their ledger (audit_balances)."""

    id: uuid.UUID
    email: str
    balance: int
    ledger: int


@dataclass(frozen=True, kw_only=True)
class RefundMismatch(_Row):
    """A task without exactly one charge, or with a refund it should not have or lacking one
    it should (audit_refunds)."""

    id: uuid.UUID
    status: str
    refunds: int
    charges: int


@dataclass(frozen=True, kw_only=True)
class OverdueTask(_Row):
    """An open task past its deadline and the grace (audit_overdue)."""

    id: uuid.UUID
    status: str
    deadline_at: datetime


@dataclass(frozen=True, kw_only=True)
class ActiveCountMismatch(_Row):
    """A user whose live-task count differs from their live tasks (audit_active_counts)."""

    id: uuid.UUID
    email: str
    active_tasks: int
    actual: int


@dataclass(frozen=True, kw_only=True)
class OrphanLogRows(_Row):
    """Log rows (task_events or accepted webhook_deliveries) naming a missing task."""

    log: str
    task_id: uuid.UUID | None
    rows: int


@dataclass(frozen=True, kw_only=True)
class ClaimedTask(_Row):
    """A task the reconciler claimed to poll or to end (claim_due_polls, claim_overdue)."""

    id: uuid.UUID
    vendor: str
    vendor_task_id: str | None
    vendor_model: str
    deadline_at: datetime
    updated_at: datetime
    trace_id: str
    vendor_urls: dict[str, str] | None
    # News since the poll date was set asked for a later one: not polled now.
    deferred: bool = False


@dataclass(frozen=True, kw_only=True)
class StoringTask(_Row):
    """A task storing past its storing deadline (storing_overdue)."""

    id: uuid.UUID
    vendor: str
    trace_id: str


@dataclass(frozen=True, kw_only=True)
class CircuitState(_Row):
    """A vendor's breaker after a recorded result (record_vendor_result)."""

    circuit: str
    failures: int


@dataclass(frozen=True, kw_only=True)
class Delivery(_Row):
    """One row of the webhook inbox, body and headers included (get_delivery)."""

    id: int
    vendor: str
    delivery_id: str
    task_id: uuid.UUID | None
    status: str
    outcome: str | None
    error: str | None
    headers: Any
    body: bytes
    received_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliverySummary(_Row):
    """One row of `taskhook deliveries list`: a delivery without its body (list_deliveries)."""

    id: int
    vendor: str
    delivery_id: str
    task_id: uuid.UUID | None
    status: str
    outcome: str | None
    error: str | None
    received_at: datetime
    bytes: int


@dataclass(frozen=True, kw_only=True)
class TransitionRow(_Row):
    """taskhook_transition_many's answer for one task (queries.sql: transition)."""

    from_status: str | None  # None: no such task
    applied: bool | None  # None: the event key was seen before
    status: str | None
    progress: int | None
    refunds: int
    ended: int
    notified: int
    age: float | None  # seconds since submit, when this move ended the task


@dataclass(frozen=True, kw_only=True)
class ReceiveRow(_Row):
    """taskhook_receive_many's answer for one delivery (queries.sql: receive_webhooks); the
    transition's answer with it when the verdict is `transition`."""

    ord: int  # which delivery of the batch, from 1
    verdict: str  # no_task | rejected | moved | duplicate | confirming | transition
    message: str | None
    trace_id: str | None
    from_status: str | None
    applied: bool | None
    status: str | None
    refunds: int
    age: float | None
