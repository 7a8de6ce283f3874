"""One reconciler pass: ask vendors about tasks whose callbacks never came, end overdue tasks.

Safe to run from cron every minute, in parallel on several hosts: every task is claimed with
SKIP LOCKED under a lease, and every effect goes through the idempotent transition.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from db import queries
from db.states import TaskStatus
from db.transition import Outcome, transition
from taskhook.errors import VendorError
from taskhook.runtime import Runtime
from taskhook.vendor_updates import apply_update

log = structlog.get_logger()


@dataclass
class PassSummary:
    claimed: int = 0
    polled: int = 0
    advanced: int = 0
    failed: int = 0
    refunded: int = 0
    errors: int = 0
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_poll_delay(quiet_seconds: float, *, poll_after: float, cap: float = 300.0) -> float:
    """The longer a task has been quiet, the less often we ask (half its quiet time)."""
    return max(poll_after, min(cap, quiet_seconds / 2))


async def _poll(rt: Runtime, row: Any, summary: PassSummary) -> TaskStatus | None:
    adapter = rt.vendors.get(row["vendor"])
    if adapter is None or not row["vendor_task_id"]:
        return None
    try:
        update = await adapter.fetch(row["vendor_task_id"])
    except VendorError as exc:
        summary.errors += 1
        log.warning(
            "poll_failed", task_id=f"tsk_{row['id'].hex}", vendor=row["vendor"], error=str(exc)
        )
        return None
    summary.polled += 1
    async with rt.pool.acquire() as conn:
        result = await apply_update(
            conn,
            task_id=row["id"],
            vendor=row["vendor"],
            update=update,
            # the same answer twice is one event; a new status or progress is another
            event_key=f"poll:{update.vendor_task_id}:{update.raw_status}:{update.progress}",
            cause="reconciler",
            poll_after=rt.settings.poll_after,
        )
    if result.outcome is Outcome.APPLIED:
        summary.advanced += 1
        if result.refunded:
            summary.failed += 1
            summary.refunded += 1
    return result.status


async def _expire(rt: Runtime, row: Any, summary: PassSummary) -> None:
    """One last poll, then fail and refund: a late success must not be thrown away."""
    status = await _poll(rt, row, summary)
    if status is not None and status not in (
        TaskStatus.PENDING,
        TaskStatus.SUBMITTED,
        TaskStatus.PROCESSING,
    ):
        return
    async with rt.pool.acquire() as conn:
        result = await transition(
            conn,
            task_id=row["id"],
            to=TaskStatus.FAILED,
            event_key="deadline",
            cause="reconciler",
            error={
                "code": "deadline_exceeded",
                "message": "the task did not finish before its deadline",
            },
        )
    if result.outcome is Outcome.APPLIED:
        summary.failed += 1
        summary.refunded += int(result.refunded)
        log.info("deadline_exceeded", task_id=f"tsk_{row['id'].hex}", vendor=row["vendor"])


async def reconcile_once(rt: Runtime, *, batch: int = 200, concurrency: int = 8) -> PassSummary:
    started = time.monotonic()
    summary = PassSummary()
    lease = max(30.0, rt.settings.registration_timeout * 3)
    async with rt.pool.acquire() as conn:
        overdue = await queries.claim_overdue(conn, limit=batch, lease_seconds=lease)
        due = await queries.claim_due_polls(conn, limit=batch, lease_seconds=lease)
    summary.claimed = len(overdue) + len(due)
    gate = asyncio.Semaphore(concurrency)
    now = datetime.now(UTC)

    async def guarded(job: Any) -> None:
        async with gate:
            try:
                await job
            except Exception:
                summary.errors += 1
                log.exception("reconcile_task_crashed")

    async def poll_and_reschedule(row: Any) -> None:
        status = await _poll(rt, row, summary)
        if status in (TaskStatus.SUBMITTED, TaskStatus.PROCESSING) or status is None:
            quiet = (now - row["updated_at"]).total_seconds()
            delay = next_poll_delay(quiet, poll_after=rt.settings.poll_after)
            async with rt.pool.acquire() as conn:
                await queries.reschedule_poll(conn, task_id=row["id"], delay_seconds=delay)

    await asyncio.gather(
        *(guarded(_expire(rt, row, summary)) for row in overdue),
        *(guarded(poll_and_reschedule(row)) for row in due if row["deadline_at"] > now),
        *(guarded(_expire(rt, row, summary)) for row in due if row["deadline_at"] <= now),
    )
    summary.duration = round(time.monotonic() - started, 3)
    return summary


async def run_reconciler(rt: Runtime, stop: asyncio.Event, *, interval: float = 5.0) -> None:
    """The Procfile's `reconciler` process: a pass, a pause, until stopped."""
    while not stop.is_set():
        try:
            summary = await reconcile_once(rt)
            if summary.claimed:
                log.info("reconcile_pass", **summary.as_dict())
        except (OSError, VendorError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("reconcile_pass_failed", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
