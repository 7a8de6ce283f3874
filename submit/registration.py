"""Registering a charged task with its vendor, with a callback URL and a short time budget.

Runs right after submit (without making the client wait) and again from the worker for tasks
whose registration failed transiently. A permanent rejection fails and refunds the task.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog

from db import queries
from db.models import Task
from db.states import TaskStatus
from db.transition import transition
from taskhook import metrics
from taskhook.backoff import backoff_delay
from taskhook.errors import VendorRejected, VendorUnavailable
from taskhook.runtime import Runtime
from taskhook.tracing import task_context
from taskhook.vendor_updates import apply_update
from vendors.health import VendorHealth

log = structlog.get_logger()


async def register(rt: Runtime, *, task_id: uuid.UUID, attempt: int) -> None:
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is None or task.status is not TaskStatus.PENDING:
        return
    with task_context(task_id=task.public_id, vendor=task.vendor, trace_id=task.trace_id):
        await _register(rt, task, attempt)


async def _register(rt: Runtime, task: Task, attempt: int) -> None:
    settings = rt.settings
    adapter = rt.vendors.get(task.vendor)
    health = rt.health.get(task.vendor)
    if health is not None and await health.permits() is None:
        # The circuit is open: the task waits (it is not failed, and the attempt is not spent).
        log.info("registration_deferred", reason="circuit open")
        async with rt.pool.acquire() as conn:
            await queries.schedule_registration_retry(
                conn,
                task_id=task.id,
                delay_seconds=health.limits.breaker_cooldown,
                error="the vendor's circuit breaker is open",
                not_called=True,
            )
        return
    try:
        if adapter is None:
            raise VendorUnavailable(f"vendor {task.vendor!r} is not configured in this process")
        update = await asyncio.wait_for(
            adapter.submit(
                task_id=task.id,
                model=task.model,
                input=task.input,
                callback_url=rt.callback_url(task_id=task.id, vendor=task.vendor),
            ),
            timeout=settings.registration_timeout,
        )
    except VendorRejected as exc:
        await _record(health, None)  # the vendor answered: it is up
        metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="rejected").inc()
        log.info("registration_rejected", error=str(exc))
        await _fail(rt, task.id, "vendor_rejected", str(exc))
        return
    except (VendorUnavailable, TimeoutError) as exc:
        await _record(health, exc)
        message = str(exc) or "the vendor did not answer in time"
        metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="unavailable").inc()
        if attempt >= settings.max_registration_attempts:
            log.warning("registration_gave_up", attempts=attempt, error=message)
            await _fail(
                rt,
                task.id,
                "vendor_unavailable",
                f"the vendor could not be reached after {attempt} attempts: {message}",
            )
            return
        async with rt.pool.acquire() as conn:
            retry_after = exc.retry_after if isinstance(exc, VendorUnavailable) else None
            delay = backoff_delay(attempt, rng=rt.rng, at_least=retry_after)
            log.info("registration_retry", attempt=attempt, delay=round(delay, 2), error=message)
            await queries.schedule_registration_retry(
                conn, task_id=task.id, delay_seconds=delay, error=message
            )
        return
    await _record(health, None)
    metrics.REGISTRATIONS.labels(vendor=task.vendor, outcome="ok").inc()
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
    log.info("registered", vendor_task_id=update.vendor_task_id, outcome=result.outcome.value)


async def _record(health: VendorHealth | None, error: Exception | None) -> None:
    if health is not None:
        await health.record(error)


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
                conn, task_id=task_id, lease_seconds=rt.settings.registration_timeout + 5
            )
        if attempt is not None:
            await register(rt, task_id=task_id, attempt=attempt)
    except Exception:
        # The task stays pending with next_attempt_at set; the worker retries it.
        log.exception("registration_crashed", task_id=str(task_id))
