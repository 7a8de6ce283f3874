"""What an operator does to tasks and vendors from the dashboard (issue 17.3), below HTTP.

Every change of a task's state still goes through the transition (a cancel refunds there);
the rest only moves schedules (a retry "now") or the vendors' shared row (a pause), which
every process reads: circuit_permits refuses a paused vendor as it refuses an open circuit,
so submits route around it, registrations wait and polls stop, on every host.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from common.errors import NotFound, NothingToRetry
from common.states import TaskStatus
from db import operations_queries as ops
from db import queries
from db.models import Task
from lifecycle.cancel import cancel
from lifecycle.replay import ReplayResult, replay_delivery
from lifecycle.runtime import Runtime

MAX_BULK_REPLAY = 500


async def cancel_as_operator(rt: Runtime, *, task_id: uuid.UUID) -> Task:
    """Cancel any user's task with its refund, recorded as the operator's doing."""
    return await cancel(rt, task_id=task_id, user_id=None, by="operator")


class Retried(enum.Enum):
    REGISTRATION = "registration"
    STORAGE = "storage"


async def retry_now(rt: Runtime, *, task_id: uuid.UUID) -> Retried:
    """Make a task waiting out a backoff due now: a pending task's registration, a storing
    task's storage. NothingToRetry when nothing waits (or the work is in flight right now)."""
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
        if task is None:
            raise NotFound("No task with this id.")
        if task.status is TaskStatus.PENDING:
            if await ops.retry_registration_now(
                conn, task_id=task_id, in_flight_seconds=rt.settings.registration_lease
            ):
                return Retried.REGISTRATION
            raise NothingToRetry("Its registration is being tried now or within seconds.")
        if task.status is TaskStatus.STORING:
            if await ops.retry_storage_now(conn, task_id=task_id):
                return Retried.STORAGE
            raise NothingToRetry("A worker is storing its result now.")
    raise NothingToRetry(f"The task is {task.status.value}: nothing waits to be retried.")


async def pause_vendor(rt: Runtime, *, vendor: str, reason: str | None) -> datetime:
    if vendor not in rt.settings.vendors:
        raise NotFound(f"No vendor {vendor!r} is configured.")
    health = rt.health.get(vendor)
    if health is not None:
        await health.ensure()  # its bucket full, so a resume finds the calls it had
    async with rt.pool.acquire() as conn:
        return await ops.pause_vendor(conn, vendor=vendor, reason=reason)


async def resume_vendor(rt: Runtime, *, vendor: str) -> bool:
    """True when it was paused."""
    if vendor not in rt.settings.vendors:
        raise NotFound(f"No vendor {vendor!r} is configured.")
    async with rt.pool.acquire() as conn:
        return await ops.resume_vendor(conn, vendor=vendor)


@dataclass(frozen=True, kw_only=True)
class BulkReplay:
    count: int  # dead letters received since the time (at most MAX_BULK_REPLAY)
    results: list[ReplayResult]  # empty for a preview


async def replay_since(rt: Runtime, *, since: datetime, preview: bool) -> BulkReplay:
    """Replay every dead letter received since `since`, oldest first, each as `taskhook
    deliveries replay` would; a preview only counts them."""
    async with rt.pool.acquire() as conn:
        ids = await ops.dead_letters_since(conn, since=since, limit=MAX_BULK_REPLAY)
    if preview:
        return BulkReplay(count=len(ids), results=[])
    results = []
    for row_id in ids:
        try:
            results.append(await replay_delivery(rt, row_id))
        except NotFound:
            continue  # pruned or replayed by someone else meanwhile
    return BulkReplay(count=len(ids), results=results)
