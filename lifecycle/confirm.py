"""Asking the vendor before saying no: the midjourney-proxy `task_status_not_success` problem.

A callback said 100% (or nothing said anything yet) while the vendor has in fact finished: a
follow-up action or a cancel checked against our lagging local state would be refused wrongly.
Callers that are about to refuse because a task is not where they need it call
`refresh_from_vendor` first; it polls once and applies the answer through the transition.

These asks come from outside (actions, unsigned callbacks' hints, replays), so they are bounded
like the reconciler's own polls (issue 14.7): each draws a token from the vendor's shared rate
limit and respects its circuit; callers asking about one task at once share one fetch in this
process; and across processes at most one goes out per task every CONFIRM_INTERVAL seconds
(`tasks.confirmed_at`). A caller that may not ask gets the task as we know it.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog

from common import metrics
from common.errors import VendorError
from common.states import TaskStatus
from common.tracing import task_context
from db import queries
from db.models import Task
from lifecycle.runtime import Runtime
from lifecycle.vendor_updates import apply_update

log = structlog.get_logger()

_ASKABLE = (TaskStatus.SUBMITTED, TaskStatus.PROCESSING)
# At most one confirmation per task this often, all processes together.
CONFIRM_INTERVAL = 1.0


async def refresh_from_vendor(rt: Runtime, task: Task) -> Task:
    """The task after one poll of its vendor; unchanged when the vendor may not be asked."""
    if rt.vendors.get(task.vendor) is None or task.status not in _ASKABLE:
        return task
    if not task.vendor_task_id:
        return task
    running = rt.confirming.get(task.id)
    if running is None:
        running = asyncio.ensure_future(_confirm(rt, task))
        rt.confirming[task.id] = running
        running.add_done_callback(lambda _: rt.confirming.pop(task.id, None))
    # Shielded: one caller going away (a client hung up) does not cancel the others' answer.
    fresh: Task = await asyncio.shield(running)
    return fresh


async def _confirm(rt: Runtime, task: Task) -> Task:
    adapter = rt.vendors[task.vendor]
    health = rt.health.get(task.vendor)
    assert task.vendor_task_id is not None
    if health is not None:
        if await health.permits() is None:
            return task
        if await health.take(1) < 1:
            log.info("confirm_throttled", task_id=task.public_id, vendor=task.vendor)
            return task
    async with rt.pool.acquire() as conn:
        claimed = await queries.claim_confirmation(conn, task_id=task.id, interval=CONFIRM_INTERVAL)
        if not claimed:
            # Asked a moment ago (another process) or no longer askable: what we know now.
            if health is not None:
                await health.give_back(1)
            fresh = await queries.get_task(conn, task_id=task.id, user_id=None)
            return fresh or task
    started = time.monotonic()
    error: VendorError | None = None
    try:
        if health is not None:
            async with health.slots:
                update = await adapter.fetch(
                    task.vendor_task_id, model=task.vendor_model, urls=task.vendor_urls
                )
        else:
            update = await adapter.fetch(
                task.vendor_task_id, model=task.vendor_model, urls=task.vendor_urls
            )
    except VendorError as exc:
        error = exc
    metrics.VENDOR_CALLS.labels(
        vendor=task.vendor, operation="confirm", outcome="error" if error else "ok"
    ).observe(time.monotonic() - started)
    if health is not None:
        await health.record(error)
    if error is not None:
        return task
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
