"""Asking the vendor before saying no: the midjourney-proxy `task_status_not_success` problem.

A callback said 100% (or nothing said anything yet) while the vendor has in fact finished: a
follow-up action or a cancel checked against our lagging local state would be refused wrongly.
Callers that are about to refuse because a task is not where they need it call
`refresh_from_vendor` first; it polls once and applies the answer through the transition.
"""

from __future__ import annotations

import uuid

from db import queries
from db.models import Task
from db.states import TaskStatus
from taskhook.errors import VendorError
from taskhook.runtime import Runtime
from taskhook.tracing import task_context
from taskhook.vendor_updates import apply_update

_ASKABLE = (TaskStatus.SUBMITTED, TaskStatus.PROCESSING)


async def refresh_from_vendor(rt: Runtime, task: Task) -> Task:
    """The task after one poll of its vendor; unchanged when the vendor cannot be asked."""
    adapter = rt.vendors.get(task.vendor)
    health = rt.health.get(task.vendor)
    if adapter is None or task.status not in _ASKABLE or not task.vendor_task_id:
        return task
    if health is not None and await health.permits() is None:
        return task
    try:
        update = await adapter.fetch(
            task.vendor_task_id, model=task.vendor_model, urls=task.vendor_urls
        )
    except VendorError as exc:
        if health is not None:
            await health.record(exc)
        return task
    if health is not None:
        await health.record(None)
    async with rt.pool.acquire() as conn:
        await apply_update(
            conn,
            task_id=task.id,
            vendor=task.vendor,
            update=update,
            event_key=f"poll:{update.vendor_task_id}:{update.raw_status}:{update.progress}",
            cause="confirm",
            poll_after=rt.settings.poll_after,
        )
        fresh = await queries.get_task(conn, task_id=task.id, user_id=None)
    return fresh or task


async def refresh_task(rt: Runtime, task_id: uuid.UUID) -> None:
    """`refresh_from_vendor` for a task known only by id, in that task's log context."""
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is not None:
        with task_context(task_id=task.public_id, vendor=task.vendor, trace_id=task.trace_id):
            await refresh_from_vendor(rt, task)
