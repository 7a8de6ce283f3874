"""Registering a charged task with its vendor, with a callback URL and a short time budget.

Runs right after submit (without making the client wait) and again from the worker for tasks
whose registration failed transiently. A permanent rejection fails and refunds the task.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import structlog

from common import metrics
from common.backoff import backoff_delay
from common.errors import VendorError, VendorParentNotReady, VendorRejected, VendorUnavailable
from common.states import TaskStatus
from common.tracing import task_context
from db import queries
from db.models import Task
from db.transition import transition
from lifecycle.confirm import refresh_task
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import VendorHealth
from lifecycle.vendor_updates import apply_update
from vendors.base import VendorAdapter, VendorUpdate

log = structlog.get_logger()

# Seconds a registration waits when the vendor's create budget is spent (jittered).
BUDGET_WAIT = 1.0


async def register(rt: Runtime, *, task_id: uuid.UUID, attempt: int) -> None:
    while True:
        async with rt.pool.acquire() as conn:
            task = await queries.get_task(conn, task_id=task_id, user_id=None)
        if task is None or task.status is not TaskStatus.PENDING:
            return
        with task_context(task_id=task.public_id, vendor=task.vendor, trace_id=task.trace_id):
            if not await _register(rt, task, attempt):
                return
        attempt = 1  # moved to its next vendor: a fresh start there


async def _failover(rt: Runtime, task: Task, reason: str) -> bool:
    """Move a task that certainly reached no vendor to its next route; True when moved.

    Only failures that prove the vendor did not take the job qualify (no connection, 429, 503,
    an open circuit): after an ambiguous one (a timeout, a 500) the job may exist there, and
    registering it elsewhere too could run it twice. Those retry the same vendor, whose
    idempotency key (where it has one) turns the retry into the same job.
    """
    if not task.fallbacks:
        return False
    async with rt.pool.acquire() as conn:
        # We go on to register it at once, so hold the registration lease as begin_registration
        # does: due now, a worker would register it at the new vendor in parallel with us.
        moved_to = await queries.reroute_task(
            conn,
            task_id=task.id,
            from_vendor=task.vendor,
            delay_seconds=rt.settings.registration_lease,
            error=reason,
        )
    if moved_to is None:
        return False
    metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="failover").inc()
    log.warning("registration_failover", to=moved_to, error=reason)
    return True


async def _register(rt: Runtime, task: Task, attempt: int) -> bool:
    """One attempt at the task's current vendor; True when it moved to another vendor."""
    settings = rt.settings
    adapter = rt.vendors.get(task.vendor)
    health = rt.health.get(task.vendor)
    if health is not None and await health.permits() is None:
        if await _failover(rt, task, "the vendor takes no calls now (circuit open or paused)"):
            return True
        # The circuit is open: the task waits (it is not failed, and the attempt is not spent).
        log.info("registration_deferred", reason="circuit open")
        async with rt.pool.acquire() as conn:
            await queries.schedule_registration_retry(
                conn,
                task_id=task.id,
                delay_seconds=health.limits.breaker_cooldown,
                error="the vendor takes no calls now (circuit open or paused)",
                not_called=True,
            )
        return False
    if adapter is not None and health is not None and await health.take(1, budget="create") == 0:
        # The vendor's create budget (its own where it limits creates apart, else the one
        # shared with polls) is spent, or a 429 asked every creator to wait: not called,
        # so the attempt is not spent either.
        async with rt.pool.acquire() as conn:
            await queries.schedule_registration_retry(
                conn,
                task_id=task.id,
                delay_seconds=BUDGET_WAIT * (0.5 + rt.rng.random()),
                error="the vendor's rate limit for creates is reached",
                not_called=True,
            )
        metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="deferred").inc()
        return False
    sent_at = datetime.now(UTC)
    found = False
    try:
        if adapter is None:
            raise VendorUnavailable(
                f"vendor {task.vendor!r} is not configured in this process", not_accepted=True
            )
        # Wait for a slot first, outside the timeout: only the vendor's own time may count
        # against it (and towards opening its circuit), never our local queue.
        async with rt.registration_slots:
            sent_at = datetime.now(UTC)
            update, found = await asyncio.wait_for(
                _submit(rt, adapter, task), timeout=settings.registration_timeout
            )
    except VendorParentNotReady as exc:
        # The vendor has not caught up with the parent's success yet: ask it, then retry later.
        await _record(health, None)
        if task.parent_id is not None:
            await refresh_task(rt, task.parent_id)
        return await _retry_or_give_up(rt, task, attempt, exc)
    except VendorRejected as exc:
        await _record(health, None)  # the vendor answered: it is up
        metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="rejected").inc()
        log.info("registration_rejected", error=str(exc))
        await _fail(rt, task.id, "vendor_rejected", str(exc))
        return False
    except (VendorUnavailable, TimeoutError) as exc:
        await _record(health, exc)
        metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="unavailable").inc()
        message = str(exc) or "the vendor did not answer in time"
        if isinstance(exc, VendorUnavailable) and exc.not_accepted:
            if await _failover(rt, task, message):
                return True
            return await _retry_or_give_up(rt, task, attempt, exc)
        # No answer, or one that does not say nothing was made (a timeout, a 500): the job
        # may exist. No vendor has an idempotency key, so the next attempt first asks the
        # vendor whether it does (`find_created`), and the task no longer fails over.
        return await _retry_or_give_up(rt, task, attempt, exc, ambiguous_since=sent_at)
    await _record(health, None)
    metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="found" if found else "ok").inc()
    async with rt.pool.acquire() as conn:
        result = await apply_update(
            conn,
            task_id=task.id,
            vendor=task.vendor,
            update=update,
            event_key=f"register:{update.vendor_task_id}",
            cause="registration",
            poll_after=settings.poll_after,
        )
        if update.urls:
            await queries.set_vendor_urls(conn, task_id=task.id, urls=update.urls)
        recorded = await queries.get_task(conn, task_id=task.id, user_id=None)
    log.info(
        "registered",
        vendor_task_id=update.vendor_task_id,
        outcome=result.outcome.value,
        found=found,
    )
    if recorded is not None and recorded.vendor_task_id not in (None, update.vendor_task_id):
        # An earlier create's job reached us first (its webhook came before this answer):
        # the task keeps that one, and this second job must not run on, billed, for nothing.
        await cancel_stray(rt, adapter, task=recorded, vendor_task_id=update.vendor_task_id)
    return False


async def cancel_stray(
    rt: Runtime, adapter: VendorAdapter, *, task: Task, vendor_task_id: str
) -> None:
    """Cancel a job at `adapter`'s vendor made for `task` that is not the job it recorded: a
    second job of one create sent twice, or one left at a vendor the task failed over from."""
    model = task.vendor_model
    if adapter.name != task.vendor:
        # The model id that vendor knows: the task's own vendor_model is its new vendor's.
        routes = rt.settings.routes.get(task.model, ())
        model = next((r.model for r in routes if r.vendor == adapter.name), task.model)
    try:
        await adapter.cancel(vendor_task_id, model=model)
    except VendorError as exc:
        metrics.STRAY_JOBS.labels(vendor=adapter.name, outcome="cancel_failed").inc()
        log.warning("stray_cancel_failed", stray=vendor_task_id, error=str(exc))
        return
    metrics.STRAY_JOBS.labels(vendor=adapter.name, outcome="canceled").inc()
    log.warning("stray_job_canceled", stray=vendor_task_id, recorded=task.vendor_task_id)


async def _submit(rt: Runtime, adapter: VendorAdapter, task: Task) -> tuple[VendorUpdate, bool]:
    """A new job, or, for a follow-up action, a job on the parent's finished vendor job; True
    with the job an earlier, ambiguous create turned out to have made."""
    callback_url = rt.callback_url(task_id=task.id, vendor=task.vendor)
    if task.parent_id is None:
        if task.create_ambiguous_at is not None and adapter.finds_created:
            found = await _find_created(rt, adapter, task, since=task.create_ambiguous_at)
            if found is not None:
                return found, True
        update = await adapter.submit(
            task_id=task.id, model=task.vendor_model, input=task.input, callback_url=callback_url
        )
        return update, False
    async with rt.pool.acquire() as conn:
        parent = await queries.get_task(conn, task_id=task.parent_id, user_id=None)
    if parent is None or not parent.vendor_task_id:
        raise VendorRejected("the parent task has no job at the vendor")
    update = await adapter.submit_action(
        task_id=task.id,
        parent_vendor_task_id=parent.vendor_task_id,
        action=str(task.input["action"]),
        index=int(task.input.get("index") or 0),
        callback_url=callback_url,
    )
    return update, False


async def _find_created(
    rt: Runtime, adapter: VendorAdapter, task: Task, *, since: datetime
) -> VendorUpdate | None:
    """The job an earlier create for this task made, if the vendor shows one no task has
    claimed (the oldest: the first create's); None when the vendor shows none. Raises
    VendorUnavailable while the vendor cannot tell: then nothing is sent."""
    candidates = await adapter.find_created(model=task.vendor_model, input=task.input, since=since)
    if not candidates:
        log.info("ambiguous_create_absent", since=since.isoformat())
        return None
    async with rt.pool.acquire() as conn:
        free = await queries.unclaimed_vendor_jobs(
            conn, vendor=task.vendor, job_ids=[c.vendor_task_id for c in candidates]
        )
    adoptable = [c for c in candidates if c.vendor_task_id in free]
    if not adoptable:
        return None
    log.info("ambiguous_create_found", vendor_task_id=adoptable[-1].vendor_task_id)
    return adoptable[-1]


async def _retry_or_give_up(
    rt: Runtime,
    task: Task,
    attempt: int,
    exc: Exception,
    *,
    ambiguous_since: datetime | None = None,
) -> bool:
    """Try the same vendor again later, or fail and refund after the last attempt."""
    message = str(exc) or "the vendor did not answer in time"
    if attempt >= rt.settings.max_registration_attempts:
        log.warning("registration_gave_up", attempts=attempt, error=message)
        await _fail(
            rt,
            task.id,
            "vendor_unavailable",
            f"the vendor could not be reached after {attempt} attempts: {message}",
        )
        return False
    async with rt.pool.acquire() as conn:
        retry_after = exc.retry_after if isinstance(exc, VendorUnavailable) else None
        delay = backoff_delay(attempt, rng=rt.rng, at_least=retry_after)
        log.info("registration_retry", attempt=attempt, delay=round(delay, 2), error=message)
        await queries.schedule_registration_retry(
            conn,
            task_id=task.id,
            delay_seconds=delay,
            error=message,
            ambiguous_since=ambiguous_since,
        )
    return False


async def _record(health: VendorHealth | None, error: Exception | None) -> None:
    """A create's outcome: a 429 blocks the vendor's create budget, anything else counts for
    its circuit breaker like any call."""
    if health is not None:
        await health.record(error, budget="create")


async def _fail(rt: Runtime, task_id: uuid.UUID, code: str, message: str) -> None:
    """Registration is over for good: fail the task (the transition refunds it)."""
    async with rt.pool.acquire() as conn:
        await transition(
            conn,
            task_id=task_id,
            to=TaskStatus.FAILED,
            event_key=f"register:{code}",
            cause="registration",
            error={"code": code, "message": message},
        )


async def register_new(rt: Runtime, task_id: uuid.UUID) -> None:
    """First attempt, right after the 202; the worker owns every later one."""
    try:
        async with rt.pool.acquire() as conn:
            attempt = await queries.begin_registration(
                conn, task_id=task_id, lease_seconds=rt.settings.registration_lease
            )
        if attempt is not None:
            await register(rt, task_id=task_id, attempt=attempt)
    except Exception:
        # The task stays pending with next_attempt_at set; the worker retries it.
        log.exception("registration_crashed", task_id=str(task_id))
