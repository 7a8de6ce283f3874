"""Accepting a task: charge and insert in one statement, honour Idempotency-Key, register.

Shared by submit (POST /v1/tasks) and follow-up actions (POST /v1/tasks/{id}/actions) so both
charge, deduplicate and start registration the same way.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from common.errors import (
    ActiveTaskLimit,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
    ParentNotSucceeded,
    Unavailable,
)
from common.ids import format_task_id
from common.states import SUCCEEDED, TaskStatus
from db import queries
from db.models import Task
from db.queries import Conn
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from lifecycle.registration import register_new
from lifecycle.routing import Plan
from lifecycle.runtime import Runtime

log = structlog.get_logger()


async def accept(
    rt: Runtime,
    *,
    user_id: uuid.UUID,
    model: str,
    plan: Plan,
    task_input: dict[str, Any],
    key: str | None,
    request_hash: bytes,
    trace_id: str,
    parent_id: uuid.UUID | None = None,
    webhook: ClientWebhook | None = None,
) -> tuple[Task, bool]:
    """Charge and insert, then start registration in the background: (the task, whether it is
    new). An Idempotency-Key seen before gives back the task it made, not created.

    `request_hash` is of the request as the client sent it: the same key with a different
    request is a conflict, while a replay that would now be routed differently still matches.
    """
    task, created = await _charge_and_insert(
        rt,
        user_id=user_id,
        model=model,
        plan=plan,
        task_input=task_input,
        key=key,
        request_hash=request_hash,
        trace_id=trace_id,
        parent_id=parent_id,
        webhook=webhook,
    )
    if created:
        log.info("task_submitted", task_id=task.public_id, vendor=task.vendor, trace_id=trace_id)
        rt.spawn(register_new(rt, task.id))
    return task, created


async def _charge_and_insert(
    rt: Runtime,
    *,
    user_id: uuid.UUID,
    model: str,
    plan: Plan,
    task_input: dict[str, Any],
    key: str | None,
    request_hash: bytes,
    trace_id: str,
    parent_id: uuid.UUID | None = None,
    webhook: ClientWebhook | None = None,
) -> tuple[Task, bool]:
    """(task, created). Charge and insert commit together; a lost key race rolls back.

    The task is read back in the same transaction: read after the commit, on another
    connection, a database lost in between would answer 503 for a task that was charged.
    """
    for _ in range(3):
        async with rt.pool.acquire() as conn:
            if key is not None:
                existing = await queries.find_idempotent_task(
                    conn, user_id=user_id, idempotency_key=key
                )
                if existing is not None:
                    if existing[1] != request_hash:
                        raise IdempotencyConflict()
                    replayed = await queries.get_task(conn, task_id=existing[0], user_id=user_id)
                    assert replayed is not None
                    return replayed, False
            try:
                async with conn.transaction():
                    if parent_id is not None:
                        await _lock_succeeded_parent(conn, parent_id=parent_id, user_id=user_id)
                    charged, task_id = await queries.create_task(
                        conn,
                        task_id=uuid.uuid4(),
                        user_id=user_id,
                        vendor=plan.vendor,
                        model=model,
                        vendor_model=plan.vendor_model,
                        fallbacks=plan.fallbacks,
                        parent_id=parent_id,
                        input=task_input,
                        cost=plan.price,
                        idempotency_key=key,
                        request_hash=request_hash if key else None,
                        trace_id=trace_id,
                        deadline_seconds=rt.settings.task_deadline,
                        registration_lease_seconds=rt.settings.registration_lease,
                        max_active=rt.settings.max_active_tasks,
                    )
                    if not charged:
                        balance, _ = await queries.user_limits(conn, user_id=user_id)
                        if balance < plan.price:
                            raise InsufficientCredits(price=plan.price, balance=balance)
                        raise ActiveTaskLimit(
                            f"You already have {rt.settings.max_active_tasks} unfinished tasks; "
                            "submit more when some have finished."
                        )
                    if task_id is None:
                        raise _KeyRaceLost()
                    if webhook is not None:  # its events are written by the moves (0017)
                        await client_webhooks.attach(
                            conn, task_id=task_id, user_id=user_id, webhook=webhook
                        )
                    task = await queries.get_task(conn, task_id=task_id, user_id=user_id)
                    assert task is not None
                    return task, True
            except _KeyRaceLost:
                continue
    raise Unavailable("Could not settle a concurrent request with the same Idempotency-Key.")


async def _lock_succeeded_parent(conn: Conn, *, parent_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Lock a follow-up's parent (before the user's row: lock_parent) and check it again under
    the lock: the caller saw it succeeded, but a failure may have come since, and nothing may
    move it until the child is committed."""
    status = await queries.lock_parent(conn, task_id=parent_id, user_id=user_id)
    if status is None:
        raise NotFound("No task with this id belongs to you.")
    if TaskStatus(status) not in SUCCEEDED:
        raise ParentNotSucceeded(f"Task {format_task_id(parent_id)} is {status}.")


class _KeyRaceLost(Exception):
    """A concurrent request inserted the same idempotency key first; roll back and re-read."""
