"""Replaying a dead letter: a delivery that was validly signed but could not be applied.

The signature was checked when it arrived (and the timestamp window is about replays by
strangers, not by our operators), so a replay parses the stored body again with today's
adapter and applies it exactly as the receiver would have, in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import NotFound, PayloadInvalid
from db import queries
from db.models import Task
from db.transition import Outcome
from lifecycle.confirm import refresh_from_vendor
from lifecycle.runtime import Runtime
from lifecycle.vendor_updates import apply_update


@dataclass(frozen=True)
class ReplayResult:
    delivery_row_id: int
    status: str  # "applied" | "duplicate" | "rejected"
    message: str


# Delivery rows are numbered by a bigserial: anything outside is no delivery, not a database
# error (asyncpg refuses to send it).
MAX_DELIVERY_ROW_ID = 2**63 - 1


async def replay_delivery(rt: Runtime, delivery_row_id: int) -> ReplayResult:
    if not 1 <= delivery_row_id <= MAX_DELIVERY_ROW_ID:
        raise NotFound(f"no delivery {delivery_row_id}")
    async with rt.pool.acquire() as conn:
        row = await queries.get_delivery(conn, delivery_row_id=delivery_row_id)
    if row is None:
        raise NotFound(f"no delivery {delivery_row_id}")
    if row.status != "rejected":
        return ReplayResult(delivery_row_id, "duplicate", f"delivery is {row.status}")
    adapter = rt.vendors.get(row.vendor)
    if adapter is None:
        raise NotFound(f"vendor {row.vendor!r} is not configured")
    task = None
    if row.task_id is not None:  # a dead letter keeps whatever task id its token named, if any
        async with rt.pool.acquire() as conn:
            task = await queries.get_task(conn, task_id=row.task_id, user_id=None)
    # The receiver's checks (taskhook_receive_many) again: an operator may replay too early.
    if task is None:
        return ReplayResult(delivery_row_id, "rejected", "its task no longer exists")
    if task.vendor != adapter.name:
        return ReplayResult(delivery_row_id, "rejected", f"the task is served by {task.vendor} now")
    if not adapter.signed_callbacks:
        # An unsigned body proves nothing about the job (and is kept truncated): ask the
        # vendor about the task's own job, as the receiver does.
        return await _confirm(rt, task, delivery_row_id)
    try:
        update = adapter.parse(bytes(row.body))
    except PayloadInvalid as exc:
        return ReplayResult(delivery_row_id, "rejected", exc.message)
    if task.vendor_task_id and task.vendor_task_id != update.vendor_task_id:
        return ReplayResult(delivery_row_id, "rejected", "the job id still does not match")
    if update.confirm:
        # A hint (fal's payload_error) carries no result: ask the vendor, as the receiver does.
        return await _confirm(rt, task, delivery_row_id)
    async with rt.pool.acquire() as conn, conn.transaction():
        result = await apply_update(
            conn,
            task_id=task.id,
            vendor=adapter.name,
            update=update,
            event_key=f"webhook:{row.delivery_id}",
            cause="replay",
            poll_after=rt.settings.poll_after,
        )
        await queries.mark_delivery_replayed(
            conn, delivery_row_id=delivery_row_id, outcome=result.outcome.value
        )
    status = "applied" if result.outcome is Outcome.APPLIED else "duplicate"
    return ReplayResult(delivery_row_id, status, f"task {task.public_id}: {result.outcome.value}")


async def _confirm(rt: Runtime, task: Task, delivery_row_id: int) -> ReplayResult:
    fresh = await refresh_from_vendor(rt, task)
    async with rt.pool.acquire() as conn:
        await queries.mark_delivery_replayed(
            conn, delivery_row_id=delivery_row_id, outcome="confirming"
        )
    return ReplayResult(
        delivery_row_id, "applied", f"task {task.public_id}: asked the vendor, now {fresh.status}"
    )
