"""One reconciler pass: ask vendors about tasks whose callbacks never came, end overdue tasks.

Safe to run from cron every minute, in parallel on several hosts: every task is claimed with
SKIP LOCKED under a lease, every effect goes through the idempotent transition, and polls draw
from each vendor's shared rate limit and respect its circuit breaker (lifecycle/vendor_health.py).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from common import metrics
from common.errors import VendorError, VendorRejected, VendorUnavailable
from common.states import TaskStatus
from common.tracing import task_context
from db import queries
from db.models import ClaimedTask
from db.transition import Outcome, TransitionResult, transition
from lifecycle.housekeeping import housekeeping
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import VendorHealth
from lifecycle.vendor_updates import apply_update
from storage.s3 import StorageUnavailable

log = structlog.get_logger()

LIVE = (TaskStatus.PENDING, TaskStatus.SUBMITTED, TaskStatus.PROCESSING)


@dataclass
class PassSummary:
    claimed: int = 0
    polled: int = 0
    advanced: int = 0
    failed: int = 0
    refunded: int = 0
    errors: int = 0
    pruned: int = 0  # webhook deliveries
    pruned_events: int = 0
    pruned_results: int = 0  # completed tasks whose stored files were deleted
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Polls of a quiet task are at most this far apart...
MAX_POLL_GAP = 300.0
# ...and, where the vendor deletes a finished job's result, a third of that window: a job that
# finished just after a poll is seen (and stored first, see claim_storing) well before its
# result is gone, even with the poll's jitter and a busy reconciler (issue 16.4).
RETENTION_SHARE = 1 / 3


def poll_cap(retention: float | None) -> float:
    """The longest wait between two polls of one task at a vendor keeping results this long."""
    return MAX_POLL_GAP if retention is None else min(MAX_POLL_GAP, retention * RETENTION_SHARE)


def next_poll_delay(
    quiet_seconds: float, *, poll_after: float, rng: random.Random, cap: float = MAX_POLL_GAP
) -> float:
    """The longer a task has been quiet, the less often we ask (about half its quiet time),
    never more than `cap` apart, with jitter below it so that tasks submitted together do not
    stay in step."""
    base = min(cap, max(poll_after, quiet_seconds / 2))
    return base * (0.75 + rng.random() / 4)


class _VendorPass:
    """One vendor's share of a pass: claim what the rate limit allows, poll, apply."""

    def __init__(self, rt: Runtime, health: VendorHealth, summary: PassSummary) -> None:
        self.rt = rt
        self.health = health
        self.vendor = health.vendor
        self.adapter = rt.vendors[health.vendor]
        self.summary = summary
        self.throttled = False

    async def poll(self, row: ClaimedTask) -> TaskStatus | None:
        """Ask the vendor and apply its answer; None when we could not ask."""
        if not row.vendor_task_id or self.throttled:
            return None
        with task_context(task_id=f"tsk_{row.id.hex}", vendor=self.vendor, trace_id=row.trace_id):
            return await self._poll(row)

    async def _poll(self, row: ClaimedTask) -> TaskStatus | None:
        job = row.vendor_task_id
        assert job, "poll() asks only about tasks the vendor knows"
        async with self.health.slots:
            started = time.monotonic()
            error: Exception | None = None
            try:
                update = await self.adapter.fetch(job, model=row.vendor_model, urls=row.vendor_urls)
            except VendorError as exc:
                error = exc
            metrics.VENDOR_CALLS.labels(
                vendor=self.vendor, operation="fetch", outcome="error" if error else "ok"
            ).observe(time.monotonic() - started)
        await self.health.record(error)
        if isinstance(error, VendorRejected):
            return await self.lose(row, error)
        if error is not None:
            self.summary.errors += 1
            metrics.POLLS.labels(vendor=self.vendor, outcome="error").inc()
            if isinstance(error, VendorUnavailable) and error.throttled:
                self.throttled = True  # the rest of this batch waits for the next pass
            log.warning(
                "poll_failed", task_id=f"tsk_{row.id.hex}", vendor=self.vendor, error=str(error)
            )
            return None
        self.summary.polled += 1
        metrics.POLLS.labels(vendor=self.vendor, outcome="ok").inc()
        async with self.rt.pool.acquire() as conn:
            result = await apply_update(
                conn,
                task_id=row.id,
                vendor=self.vendor,
                update=update,
                # the same answer twice is one event; a new status or progress is another
                event_key=f"poll:{update.vendor_task_id}:{update.raw_status}:{update.progress}",
                cause="reconciler",
                poll_after=self.rt.settings.poll_after,
            )
        if result.outcome is Outcome.APPLIED:
            self.summary.advanced += 1
            self.count_refund(result.refunded)
        return result.status

    def count_refund(self, refunded: bool) -> None:
        if refunded:
            self.summary.failed += 1
            self.summary.refunded += 1

    async def lose(self, row: ClaimedTask, error: VendorRejected) -> TaskStatus | None:
        """The vendor answered, and no longer knows the job (a 404, an id it expired): the job
        cannot finish, so waiting for the deadline would only delay the refund."""
        self.summary.polled += 1
        metrics.POLLS.labels(vendor=self.vendor, outcome="lost").inc()
        message = f"the vendor lost the job: {error}"
        result = await self.fail(row, "vendor_lost", "vendor_lost", message)
        if result.outcome is Outcome.APPLIED:
            self.summary.advanced += 1
            log.warning("vendor_lost", task_id=f"tsk_{row.id.hex}", error=str(error))
        return result.status

    async def fail(
        self, row: ClaimedTask, event_key: str, code: str, message: str
    ) -> TransitionResult:
        """Fail (and so refund) the task, counted in the pass summary."""
        async with self.rt.pool.acquire() as conn:
            result = await transition(
                conn,
                task_id=row.id,
                to=TaskStatus.FAILED,
                event_key=event_key,
                cause="reconciler",
                error={"code": code, "message": message},
            )
        if result.outcome is Outcome.APPLIED:
            self.count_refund(result.refunded)
        return result

    async def expire(self, row: ClaimedTask, *, last_poll: bool) -> None:
        """One last poll (when the vendor can be asked), then fail and refund: a success that
        beat the deadline must not be thrown away."""
        if last_poll:
            status = await self.poll(row)
            if status is not None and status not in LIVE:
                return
        result = await self.fail(
            row, "deadline", "deadline_exceeded", "the task did not finish before its deadline"
        )
        if result.outcome is Outcome.APPLIED:
            log.info("deadline_exceeded", task_id=f"tsk_{row.id.hex}", vendor=self.vendor)

    async def reschedule(self, row: ClaimedTask, now: datetime) -> None:
        quiet = (now - row.updated_at).total_seconds()
        delay = next_poll_delay(
            quiet,
            poll_after=self.rt.settings.poll_after,
            rng=self.rt.rng,
            cap=poll_cap(self.adapter.result_retention),
        )
        if self.throttled:
            delay = 0.0  # not asked at all: due again right away (the bucket paces it)
        async with self.rt.pool.acquire() as conn:
            await queries.reschedule_poll(conn, task_id=row.id, delay_seconds=delay)

    async def run(self, batch: int, lease: float) -> None:
        state = await self.health.permits()
        want = 0 if state is None else (1 if state == "half-open" else batch)
        granted = await self.health.take(want)
        async with self.rt.pool.acquire() as conn:
            # With the circuit open, overdue tasks fail without a last poll: the vendor is down.
            overdue = await queries.claim_overdue(
                conn,
                vendor=self.vendor,
                limit=batch if state is None else granted,
                lease_seconds=lease,
            )
            claimed = await queries.claim_due_polls(
                conn, vendor=self.vendor, limit=granted - len(overdue), lease_seconds=lease
            )
        # Deferred: news since the date was set asked for a later one; not polled, no token used.
        due = [row for row in claimed if not row.deferred]
        self.summary.claimed += len(overdue) + len(due)
        now = datetime.now(UTC)

        async def guarded(job: Any) -> None:
            try:
                await job
            except (asyncpg.PostgresError, OSError, VendorError):
                self.summary.errors += 1
                log.exception("reconcile_task_crashed", vendor=self.vendor)

        async def poll_due(row: ClaimedTask) -> None:
            status = await self.poll(row)
            if status is None or status in (TaskStatus.SUBMITTED, TaskStatus.PROCESSING):
                await self.reschedule(row, now)

        await asyncio.gather(
            *(guarded(self.expire(row, last_poll=state is not None)) for row in overdue),
            *(guarded(poll_due(row)) for row in due),
        )
        used = len(due) + sum(1 for row in overdue if row.vendor_task_id)
        await self.health.give_back(granted - used)


async def expire_storing(rt: Runtime, summary: PassSummary, *, batch: int) -> None:
    """Fail (and refund) tasks still storing past their storing deadline: the worker's own
    budget ends there too, so only a stuck or dead worker leaves one behind, and no lease it
    keeps renewing may hold a task in storing for ever."""
    async with rt.pool.acquire() as conn:
        rows = await queries.storing_overdue(
            conn, storage_deadline=rt.settings.storage_deadline, limit=batch
        )
    for row in rows:
        summary.claimed += 1
        with task_context(task_id=f"tsk_{row.id.hex}", vendor=row.vendor, trace_id=row.trace_id):
            async with rt.pool.acquire() as conn:
                result = await transition(
                    conn,
                    task_id=row.id,
                    to=TaskStatus.FAILED,
                    event_key="storage:deadline",
                    cause="reconciler",
                    error={
                        "code": "storage_failed",
                        "message": "the result was not stored before its storing deadline",
                    },
                )
            if result.outcome is Outcome.APPLIED:
                summary.advanced += 1
                if result.refunded:
                    summary.failed += 1
                    summary.refunded += 1
                log.warning("storing_deadline_exceeded")


async def reconcile_once(rt: Runtime, *, batch: int = 200, housekeep: bool = True) -> PassSummary:
    """One pass over every configured vendor; one task's error never stops the pass.
    `housekeep`: also one round of retention and counts (lifecycle/housekeeping.py), which
    `run_reconciler` does on its own timer and a cron pass (`--once`) every time."""
    started = time.monotonic()
    summary = PassSummary()
    # A crashed reconciler's claims lapse after this; long enough for any poll to finish.
    lease = rt.settings.registration_timeout * 3
    await asyncio.gather(
        *(_VendorPass(rt, health, summary).run(batch, lease) for health in rt.health.values())
    )
    await expire_storing(rt, summary, batch=batch)
    if housekeep:
        try:
            pruned = await housekeeping(rt)
        except StorageUnavailable as exc:
            # The bucket is down: the files wait for the next round, the pass goes on.
            log.warning("housekeeping_failed", error=str(exc))
        else:
            summary.pruned = pruned.deliveries
            summary.pruned_events = pruned.events
            summary.pruned_results = pruned.results
    summary.duration = round(time.monotonic() - started, 3)
    return summary


async def run_reconciler(rt: Runtime, stop: asyncio.Event, *, interval: float = 5.0) -> None:
    """The Procfile's `reconciler` process: passes back to back while there is due work the
    rate limit allows, otherwise a pause of `interval`, until stopped."""
    housekept = -math.inf
    while not stop.is_set():
        pause = interval
        try:
            housekeep = time.monotonic() - housekept >= rt.settings.prune_interval
            summary = await reconcile_once(rt, housekeep=housekeep)
            if housekeep:
                housekept = time.monotonic()
            # Every pass, idle ones too: a reconciler that stopped passing shows in the logs.
            log.info("reconcile_pass", **summary.as_dict())
            if summary.claimed:
                # more may be due: come back as soon as the bucket has refilled a little
                pause = min(interval, max(0.01, 1 / rt.settings.poll_rate))
        except (
            OSError,
            VendorError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # a connection the database has just dropped
        ) as exc:
            log.warning("reconcile_pass_failed", error=repr(exc))
        try:
            await asyncio.wait_for(stop.wait(), timeout=pause)
        except TimeoutError:
            pass
