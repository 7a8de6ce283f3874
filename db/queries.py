"""Typed wrappers around the named SQL blocks in queries.sql.

Only this module knows the `$n` order of each statement; callers pass keywords.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from asyncpg import Connection
from asyncpg.pool import PoolConnectionProxy

from common.states import ACTIVE, TaskStatus
from db.models import (
    ActiveCountMismatch,
    BalanceMismatch,
    CircuitState,
    ClaimedTask,
    Delivery,
    DeliverySummary,
    OrphanLogRows,
    OverdueTask,
    ReceiveRow,
    RefundMismatch,
    StoringTask,
    Task,
    TransitionRow,
    User,
)

Conn = Connection | PoolConnectionProxy

_BLOCK = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def load_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name --` blocks into {name: sql}."""
    parts = _BLOCK.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


QUERIES: Mapping[str, str] = load_queries(
    resources.files("db").joinpath("queries.sql").read_text(encoding="utf-8")
)


async def transition_row(
    conn: Conn,
    *,
    task_id: uuid.UUID,
    event_key: str,
    to: str,
    allowed_from: Sequence[str],
    cause: str,
    progress: int | None,
    vendor_task_id: str | None,
    outputs: list[str] | None,
    result: Mapping[str, Any] | None,
    error: Mapping[str, Any] | None,
    detail: Mapping[str, Any] | None,
    next_poll_at: datetime | None,
) -> TransitionRow:
    record = await conn.fetchrow(
        QUERIES["transition"],
        task_id,
        event_key,
        to,
        ",".join(allowed_from),
        cause,
        progress,
        vendor_task_id,
        _json_text(outputs),
        _json_text(result),
        _json_text(error),
        _json_text(detail),
        next_poll_at,
    )
    assert record is not None  # the final SELECT always yields one row
    return TransitionRow.from_record(record)


@dataclass(frozen=True)
class InboundWebhook:
    """One verified delivery, as taskhook_receive_many takes it: the inbox row's fields and the
    move the vendor's payload asks for."""

    vendor: str
    delivery_id: str
    task_id: uuid.UUID
    headers: Mapping[str, str]
    body: bytes
    signed: bool
    vendor_task_id: str
    to: str
    allowed_from: Sequence[str]
    progress: int | None
    outputs: list[str] | None
    error: Mapping[str, Any] | None
    detail: Mapping[str, Any] | None
    next_poll_at: datetime | None


async def receive_webhooks(conn: Conn, webhooks: Sequence[InboundWebhook]) -> list[ReceiveRow]:
    """Several deliveries' whole database work in one round trip and one commit
    (taskhook_receive_many); the answers come back in the order of `webhooks`.

    Each answer's verdict: no_task | rejected or moved (with message) | duplicate |
    confirming | transition (with the transition's answer)."""
    rows = await conn.fetch(
        QUERIES["receive_webhooks"],
        [w.vendor for w in webhooks],
        [w.delivery_id for w in webhooks],
        [w.task_id for w in webhooks],
        [_json_text(w.headers) for w in webhooks],
        [w.body for w in webhooks],
        [w.signed for w in webhooks],
        [w.vendor_task_id for w in webhooks],
        [w.to for w in webhooks],
        [",".join(w.allowed_from) for w in webhooks],
        [w.progress for w in webhooks],
        [_json_text(w.outputs) for w in webhooks],
        [_json_text(w.error) for w in webhooks],
        [_json_text(w.detail) for w in webhooks],
        [w.next_poll_at for w in webhooks],
    )
    assert len(rows) == len(webhooks)  # the function answers every delivery once
    return sorted((ReceiveRow.from_record(r) for r in rows), key=lambda row: row.ord)


def _json_text(value: Any) -> str | None:
    """JSON as text for the functions' text arguments; any Mapping encodes as an object."""
    if value is None:
        return None
    return json.dumps(dict(value) if isinstance(value, Mapping) else value)


async def create_user(
    conn: Conn, *, user_id: uuid.UUID, email: str, key_id: uuid.UUID, key_hash: bytes, prefix: str
) -> None:
    await conn.execute(QUERIES["create_user"], user_id, email, key_id, key_hash, prefix)


async def get_user_by_email(conn: Conn, *, email: str) -> User | None:
    record = await conn.fetchrow(QUERIES["get_user_by_email"], email)
    return User.from_record(record) if record else None


async def get_user(conn: Conn, *, user_id: uuid.UUID) -> User | None:
    record = await conn.fetchrow(QUERIES["get_user"], user_id)
    return User.from_record(record) if record else None


async def authenticate(
    conn: Conn, *, key_hash: bytes, rate_limit: int
) -> tuple[User, int | None, float | None] | None:
    """(user, requests this minute, seconds left in the minute); counting is off at limit 0."""
    record = await conn.fetchrow(QUERIES["authenticate"], key_hash, rate_limit)
    if record is None:
        return None
    left = record["window_left"]
    return User.from_record(record), record["hits"], float(left) if left is not None else None


async def user_limits(conn: Conn, *, user_id: uuid.UUID) -> tuple[int, int]:
    """(balance, active tasks)."""
    record = await conn.fetchrow(QUERIES["user_limits"], user_id)
    assert record is not None
    return record["balance"], record["active_tasks"]


async def prune_rate_windows(conn: Conn) -> None:
    await conn.execute(QUERIES["prune_rate_windows"])


async def audit_active_counts(conn: Conn) -> list[ActiveCountMismatch]:
    return [
        ActiveCountMismatch.from_record(r) for r in await conn.fetch(QUERIES["audit_active_counts"])
    ]


async def audit_orphans(conn: Conn) -> list[OrphanLogRows]:
    return [OrphanLogRows.from_record(r) for r in await conn.fetch(QUERIES["audit_orphans"])]


async def grant_credits(conn: Conn, *, user_id: uuid.UUID, amount: int, note: str | None) -> int:
    balance: int = await conn.fetchval(QUERIES["grant_credits"], user_id, amount, note)
    return balance


async def find_idempotent_task(
    conn: Conn, *, user_id: uuid.UUID, idempotency_key: str
) -> tuple[uuid.UUID, bytes | None] | None:
    record = await conn.fetchrow(QUERIES["find_idempotent_task"], user_id, idempotency_key)
    return (record["id"], record["request_hash"]) if record else None


async def lock_parent(conn: Conn, *, task_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    """The parent's status, its row share-locked until the transaction ends; None if it is
    not this user's task."""
    status: str | None = await conn.fetchval(QUERIES["lock_parent"], task_id, user_id)
    return status


async def create_task(
    conn: Conn,
    *,
    task_id: uuid.UUID,
    user_id: uuid.UUID,
    vendor: str,
    model: str,
    input: Mapping[str, Any],
    cost: int,
    idempotency_key: str | None,
    request_hash: bytes | None,
    trace_id: str,
    deadline_seconds: float,
    registration_lease_seconds: float,
    max_active: int = 0,
    vendor_model: str | None = None,
    fallbacks: Sequence[Mapping[str, Any]] = (),
    parent_id: uuid.UUID | None = None,
) -> tuple[bool, uuid.UUID | None]:
    """(charged, task_id): not charged = balance short or at the active cap; charged without
    an id = the idempotency-key race was lost."""
    record = await conn.fetchrow(
        QUERIES["create_task"],
        task_id,
        user_id,
        vendor,
        model,
        input,
        cost,
        idempotency_key,
        request_hash,
        trace_id,
        deadline_seconds,
        registration_lease_seconds,
        max_active,
        vendor_model or model,
        [dict(f) for f in fallbacks],
        parent_id,
    )
    if record is None:
        return False, None
    return True, record["task_id"]


async def reroute_task(
    conn: Conn, *, task_id: uuid.UUID, from_vendor: str, delay_seconds: float, error: str
) -> str | None:
    """The vendor the task moved to, or None when it was not (no longer) movable."""
    value: str | None = await conn.fetchval(
        QUERIES["reroute_task"], task_id, from_vendor, delay_seconds, error
    )
    return value


async def claim_confirmation(conn: Conn, *, task_id: uuid.UUID, interval: float) -> bool:
    return await conn.fetchval(QUERIES["claim_confirmation"], task_id, interval) is not None


async def poll_now(conn: Conn, *, task_id: uuid.UUID) -> None:
    await conn.execute(QUERIES["poll_now"], task_id)


async def open_circuits(conn: Conn) -> set[str]:
    return {r["vendor"] for r in await conn.fetch(QUERIES["open_circuits"])}


async def get_task(conn: Conn, *, task_id: uuid.UUID, user_id: uuid.UUID | None) -> Task | None:
    record = await conn.fetchrow(QUERIES["get_task"], task_id, user_id)
    return Task.from_record(record) if record else None


async def list_tasks(conn: Conn, *, status: str | None, limit: int) -> list[Task]:
    """Every user's tasks, newest first; one statement per kind of filter, each on its index."""
    if status is None:
        records = await conn.fetch(QUERIES["list_tasks"], limit)
    elif TaskStatus(status) in ACTIVE:
        records = await conn.fetch(QUERIES["list_tasks_live"], status, limit)
    elif TaskStatus(status) is TaskStatus.COMPLETED:
        records = await conn.fetch(QUERIES["list_tasks_completed"], limit)
    else:
        records = await conn.fetch(QUERIES["list_tasks_refunded"], status, limit)
    return [Task.from_record(r) for r in records]


async def renew_storing(
    conn: Conn, *, task_ids: Sequence[uuid.UUID], owner: str, lease_seconds: float
) -> None:
    await conn.execute(QUERIES["renew_storing"], list(task_ids), owner, lease_seconds)


async def claim_pending_registrations(
    conn: Conn, *, limit: int, lease_seconds: float
) -> list[tuple[uuid.UUID, int]]:
    records = await conn.fetch(QUERIES["claim_pending_registrations"], limit, lease_seconds)
    return [(r["id"], r["attempts"]) for r in records]


async def begin_registration(conn: Conn, *, task_id: uuid.UUID, lease_seconds: float) -> int | None:
    attempts: int | None = await conn.fetchval(
        QUERIES["begin_registration"], task_id, lease_seconds
    )
    return attempts


async def schedule_registration_retry(
    conn: Conn,
    *,
    task_id: uuid.UUID,
    delay_seconds: float,
    error: str,
    not_called: bool = False,
    ambiguous_since: datetime | None = None,
) -> None:
    await conn.execute(
        QUERIES["schedule_registration_retry"],
        task_id,
        delay_seconds,
        error,
        not_called,
        ambiguous_since,
    )


async def unclaimed_vendor_jobs(conn: Conn, *, vendor: str, job_ids: list[str]) -> list[str]:
    """The jobs (in the given order) that no task has recorded at this vendor."""
    return [r["id"] for r in await conn.fetch(QUERIES["unclaimed_vendor_jobs"], vendor, job_ids)]


async def set_vendor_urls(conn: Conn, *, task_id: uuid.UUID, urls: Mapping[str, str]) -> None:
    await conn.execute(QUERIES["set_vendor_urls"], task_id, dict(urls))


@dataclass(frozen=True)
class StoringClaim:
    task_id: uuid.UUID
    attempt: int
    time_left: float  # seconds to the task's storing deadline (negative: passed)


async def claim_storing(
    conn: Conn,
    *,
    limit: int,
    owner: str,
    lease_seconds: float,
    storage_deadline: float,
    retention: Mapping[str, float] | None = None,
) -> list[StoringClaim]:
    """`retention`: seconds each vendor keeps a finished job's result (the soonest first)."""
    records = await conn.fetch(
        QUERIES["claim_storing"],
        limit,
        owner,
        lease_seconds,
        dict(retention or {}),
        storage_deadline,
    )
    return [StoringClaim(r["id"], r["storage_attempts"], r["time_left"]) for r in records]


async def storing_overdue(conn: Conn, *, storage_deadline: float, limit: int) -> list[StoringTask]:
    return [
        StoringTask.from_record(r)
        for r in await conn.fetch(QUERIES["storing_overdue"], storage_deadline, limit)
    ]


async def release_storing(
    conn: Conn, *, task_id: uuid.UUID, owner: str, delay_seconds: float, error: str
) -> None:
    await conn.execute(QUERIES["release_storing"], task_id, owner, delay_seconds, error)


async def record_delivery(
    conn: Conn,
    *,
    vendor: str,
    delivery_id: str,
    task_id: uuid.UUID | None,
    status: str,
    outcome: str | None,
    error: str | None,
    headers: Mapping[str, str],
    body: bytes,
) -> int | None:
    """The delivery's row id, or None when this (vendor, delivery_id) was already stored."""
    row_id: int | None = await conn.fetchval(
        QUERIES["record_delivery"],
        vendor,
        delivery_id,
        task_id,
        status,
        outcome,
        error,
        dict(headers),
        body,
    )
    return row_id


async def set_delivery_outcome(conn: Conn, *, delivery_row_id: int, outcome: str) -> None:
    await conn.execute(QUERIES["set_delivery_outcome"], delivery_row_id, outcome)


async def list_deliveries(conn: Conn, *, status: str | None, limit: int) -> list[DeliverySummary]:
    """The inbox newest first; one statement per filter, each along its own index."""
    if status is None:
        return [
            DeliverySummary.from_record(r)
            for r in await conn.fetch(QUERIES["list_deliveries"], limit)
        ]
    if status == "rejected":
        return [
            DeliverySummary.from_record(r)
            for r in await conn.fetch(QUERIES["list_dead_letters"], limit)
        ]
    return [
        DeliverySummary.from_record(r)
        for r in await conn.fetch(QUERIES["list_deliveries_status"], status, limit)
    ]


async def audit_balances(conn: Conn) -> list[BalanceMismatch]:
    return [BalanceMismatch.from_record(r) for r in await conn.fetch(QUERIES["audit_balances"])]


async def audit_refunds(conn: Conn) -> list[RefundMismatch]:
    return [RefundMismatch.from_record(r) for r in await conn.fetch(QUERIES["audit_refunds"])]


async def audit_overdue(
    conn: Conn, *, grace_seconds: float, storage_deadline: float
) -> list[OverdueTask]:
    return [
        OverdueTask.from_record(r)
        for r in await conn.fetch(QUERIES["audit_overdue"], grace_seconds, storage_deadline)
    ]


async def count_by_status(conn: Conn) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await conn.fetch(QUERIES["count_by_status"])}


async def claim_due_polls(
    conn: Conn, *, vendor: str, limit: int, lease_seconds: float
) -> list[ClaimedTask]:
    if limit <= 0:
        return []
    return [
        ClaimedTask.from_record(r)
        for r in await conn.fetch(QUERIES["claim_due_polls"], limit, lease_seconds, vendor)
    ]


async def claim_overdue(
    conn: Conn, *, vendor: str, limit: int, lease_seconds: float
) -> list[ClaimedTask]:
    if limit <= 0:
        return []
    return [
        ClaimedTask.from_record(r)
        for r in await conn.fetch(QUERIES["claim_overdue"], limit, lease_seconds, vendor)
    ]


async def reschedule_poll(conn: Conn, *, task_id: uuid.UUID, delay_seconds: float) -> None:
    await conn.execute(QUERIES["reschedule_poll"], task_id, delay_seconds)


async def ensure_vendor(conn: Conn, *, vendor: str, burst: float) -> None:
    await conn.execute(QUERIES["ensure_vendor"], vendor, burst)


async def take_tokens(conn: Conn, *, vendor: str, want: int, rate: float, burst: float) -> int:
    granted: int | None = await conn.fetchval(QUERIES["take_tokens"], vendor, want, rate, burst)
    return granted or 0


async def return_tokens(conn: Conn, *, vendor: str, count: int, burst: float) -> None:
    await conn.execute(QUERIES["return_tokens"], vendor, count, burst)


async def circuit_permits(conn: Conn, *, vendor: str, cooldown: float) -> str | None:
    """The circuit state if a call may go out now ('closed' or 'half-open'), else None."""
    state: str | None = await conn.fetchval(QUERIES["circuit_permits"], vendor, cooldown)
    return state


async def record_vendor_result(
    conn: Conn,
    *,
    vendor: str,
    ok: bool,
    threshold: int,
    cooldown: float,
    retry_after: float | None,
    error: str | None = None,
) -> CircuitState | None:
    """The breaker as this result left it; None: a success that changed nothing."""
    record = await conn.fetchrow(
        QUERIES["record_vendor_result"], vendor, ok, threshold, cooldown, retry_after, error
    )
    return CircuitState.from_record(record) if record else None


async def vendor_account(conn: Conn, *, vendor: str) -> str | None:
    value: str | None = await conn.fetchval(QUERIES["vendor_account"], vendor)
    return value


async def pin_vendor_account(conn: Conn, *, vendor: str, account_id: str) -> str:
    """The pinned account: this one, unless another was pinned first."""
    value: str = await conn.fetchval(QUERIES["pin_vendor_account"], vendor, account_id)
    return value


async def task_job(conn: Conn, *, task_id: uuid.UUID, vendor: str) -> str | None:
    value: str | None = await conn.fetchval(QUERIES["task_job"], task_id, vendor)
    return value


async def get_delivery(conn: Conn, *, delivery_row_id: int) -> Delivery | None:
    record = await conn.fetchrow(QUERIES["get_delivery"], delivery_row_id)
    return Delivery.from_record(record) if record else None


async def mark_delivery_replayed(conn: Conn, *, delivery_row_id: int, outcome: str) -> None:
    await conn.execute(QUERIES["mark_delivery_replayed"], delivery_row_id, outcome)


async def prune_deliveries(
    conn: Conn, *, older_than_seconds: float, limit: int, unsigned_vendors: Sequence[str] = ()
) -> int:
    pruned: int = await conn.fetchval(
        QUERIES["prune_deliveries"], older_than_seconds, limit, list(unsigned_vendors)
    )
    return pruned


# A keyset position before every task: where a listing without a cursor starts.
_LIST_START = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))


async def list_user_tasks(
    conn: Conn,
    *,
    user_id: uuid.UUID,
    status: str | None,
    active: bool,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Task]:
    """A user's tasks newest first, after the cursor's position. One statement per kind of
    filter, so each keeps its index in generic plans (list_user_tasks in queries.sql)."""
    before_at, before_id = after or _LIST_START
    if active:
        records = await conn.fetch(
            QUERIES["list_user_tasks_live"], user_id, before_at, before_id, limit
        )
    elif status is not None and TaskStatus(status) in ACTIVE:
        records = await conn.fetch(
            QUERIES["list_user_tasks_live_status"], user_id, before_at, before_id, status, limit
        )
    elif status is not None and TaskStatus(status) is TaskStatus.COMPLETED:
        records = await conn.fetch(
            QUERIES["list_user_tasks_completed"], user_id, before_at, before_id, limit
        )
    elif status is not None:
        records = await conn.fetch(
            QUERIES["list_user_tasks_refunded"], user_id, before_at, before_id, status, limit
        )
    else:
        records = await conn.fetch(QUERIES["list_user_tasks"], user_id, before_at, before_id, limit)
    return [Task.from_record(r) for r in records]


async def audit_mark(conn: Conn) -> datetime | None:
    """When the last incremental audit that found nothing wrong started."""
    at: datetime | None = await conn.fetchval(QUERIES["audit_mark"])
    return at


async def set_audit_mark(conn: Conn, *, at: datetime) -> None:
    await conn.execute(QUERIES["set_audit_mark"], at)


async def audit_balances_since(conn: Conn, *, since: datetime) -> list[BalanceMismatch]:
    return [
        BalanceMismatch.from_record(r)
        for r in await conn.fetch(QUERIES["audit_balances_since"], since)
    ]


async def audit_refunds_since(conn: Conn, *, since: datetime) -> list[RefundMismatch]:
    return [
        RefundMismatch.from_record(r)
        for r in await conn.fetch(QUERIES["audit_refunds_since"], since)
    ]


async def audit_active_counts_since(conn: Conn, *, since: datetime) -> list[ActiveCountMismatch]:
    return [
        ActiveCountMismatch.from_record(r)
        for r in await conn.fetch(QUERIES["audit_active_counts_since"], since)
    ]


async def audit_orphans_since(conn: Conn, *, since: datetime) -> list[OrphanLogRows]:
    return [
        OrphanLogRows.from_record(r)
        for r in await conn.fetch(QUERIES["audit_orphans_since"], since)
    ]


async def _mark(conn: Conn, name: str) -> tuple[datetime, uuid.UUID]:
    """Where step `name` stands (progress_marks), locked until the caller's transaction ends."""
    row = await conn.fetchrow(QUERIES["progress_mark"], name)
    assert row is not None  # every step's row is made by its migration
    return row["at"], row["task_id"]


async def fold_state_counts(conn: Conn, *, settled_seconds: float, limit: int) -> int:
    at, task_id = await _mark(conn, "counts")
    folded: int = await conn.fetchval(
        QUERIES["fold_state_counts"], settled_seconds, limit, at, task_id
    )
    return folded


async def prune_events(conn: Conn, *, older_than_seconds: float, limit: int) -> tuple[int, int]:
    """(tasks whose events were pruned, events deleted)."""
    at, task_id = await _mark(conn, "events")
    row = await conn.fetchrow(QUERIES["prune_events"], older_than_seconds, limit, at, task_id)
    assert row is not None
    return int(row["tasks"]), int(row["events"])


@dataclass(frozen=True)
class EndedTask:
    task_id: uuid.UUID
    completed_at: datetime
    status: str
    result: dict[str, Any] | None


async def results_due(conn: Conn, *, older_than_seconds: float, limit: int) -> list[EndedTask]:
    at, task_id = await _mark(conn, "results")
    records = await conn.fetch(QUERIES["results_due"], older_than_seconds, limit, at, task_id)
    return [EndedTask(r["id"], r["completed_at"], r["status"], r["result"]) for r in records]


async def forget_results(
    conn: Conn, *, task_ids: Sequence[uuid.UUID], through: tuple[datetime, uuid.UUID]
) -> int:
    forgot: int = await conn.fetchval(
        QUERIES["forget_results"], list(task_ids), through[0], through[1]
    )
    return forgot
