"""Canceling a task (POST /v1/tasks/{id}/cancel): stop it, refund it once, tell the vendor.

The refund is part of the transition, so a cancel racing a vendor's failure or success still
ends with exactly one outcome and at most one refund. The vendor is told afterwards, best
effort: its own `canceled` callback then arrives as a stale event and changes nothing.

Only a task the vendor has not finished can be canceled (common/states.py CANCELABLE): once it
reported success the job exists and was paid for, and a follow-up action may already act on
it, so a refund then would give away a job (two, with the action) for one credit.
"""

from __future__ import annotations

import uuid

import structlog

from common.errors import AlreadyFinished, AlreadyTerminal, NotFound, VendorError
from common.states import SUCCEEDED, TERMINAL, TaskStatus
from db import queries
from db.models import Task
from db.transition import transition
from lifecycle.runtime import Runtime

log = structlog.get_logger()


async def _tell_vendor(rt: Runtime, task: Task) -> None:
    adapter = rt.vendors.get(task.vendor)
    if adapter is None or not task.vendor_task_id:
        return
    try:
        await adapter.cancel(task.vendor_task_id, model=task.vendor_model, urls=task.vendor_urls)
    except VendorError as exc:
        log.warning(
            "vendor_cancel_failed",
            vendor=task.vendor,
            vendor_task_id=task.vendor_task_id,
            error=str(exc),
        )


def _refuse_unless_cancelable(status: TaskStatus) -> None:
    if status in SUCCEEDED:
        raise AlreadyFinished(
            f"The vendor has already finished this task (it is {status.value}); "
            "it can no longer be canceled."
        )
    if status in TERMINAL:
        raise AlreadyTerminal(f"The task is already {status.value}.")


async def cancel(
    rt: Runtime, *, task_id: uuid.UUID | None, user_id: uuid.UUID | None, by: str = "client"
) -> Task:
    """Cancel one of the user's tasks (`user_id` None: an operator's, any user's) and tell its
    vendor in the background: the task, now canceled. NotFound, AlreadyFinished or
    AlreadyTerminal when it cannot be canceled."""
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=user_id) if task_id else None
        if task is None:
            raise NotFound("No task with this id belongs to you.")
        _refuse_unless_cancelable(task.status)
        await transition(
            conn,
            task_id=task.id,
            to=TaskStatus.CANCELED,
            event_key="cancel",
            cause=by,
            detail={"by": by},
        )
        task = await queries.get_task(conn, task_id=task.id, user_id=user_id)
    assert task is not None
    if task.status is not TaskStatus.CANCELED:
        # Something else (a vendor failure, the vendor's success) got there first.
        _refuse_unless_cancelable(task.status)
        raise AlreadyTerminal(f"The task is already {task.status.value}.")
    if task.vendor_task_id:
        rt.spawn(_tell_vendor(rt, task))
    log.info("task_canceled", task_id=task.public_id, vendor=task.vendor, trace_id=task.trace_id)
    return task
