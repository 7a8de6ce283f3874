"""A vendor's callback, applied: the step below the receiver's HTTP handler.

The handler (receiver/routes.py) reads, verifies and parses; this module stores what it
verified and answers with a typed verdict. One round trip, shared with the deliveries arriving
meanwhile (db/group_commit.py): the inbox row, the task's checks (still at this vendor, the
same job) and the transition commit together in `taskhook_receive_many` (its current text in
db/schema.sql), so a delivery is stored exactly when its effect is. Unsigned vendors'
callbacks, and signed hints that carry no result, stop short of the transition: the vendor's
API is asked first (lifecycle/confirm.py).
"""

from __future__ import annotations

import enum
import uuid

import asyncpg
import structlog

from common.errors import PayloadInvalid, TokenInvalid, Unavailable
from common.ids import format_task_id
from common.tracing import task_context
from db import queries
from db.transition import Outcome, allowed_from, result_of
from lifecycle.confirm import refresh_task
from lifecycle.registration import cancel_stray
from lifecycle.runtime import Runtime
from lifecycle.vendor_updates import move_for, note_result
from vendors.base import VendorAdapter, VendorUpdate
from vendors.signature import Delivery

log = structlog.get_logger()


class Verdict(enum.StrEnum):
    """What became of an authentic, readable callback (the `status` of the 200 answer)."""

    APPLIED = "applied"  # the task moved
    DUPLICATE = "duplicate"  # seen before, or news the task is already past: nothing changed
    CONFIRMING = "confirming"  # a hint: the vendor's API is asked before anything is applied


async def keep_dead_letter(
    rt: Runtime,
    *,
    vendor: str,
    delivery: Delivery,
    task_id: uuid.UUID,
    headers: dict[str, str],
    body: bytes,
    problem: PayloadInvalid,
) -> None:
    """Keep an authentic but unreadable delivery as a dead letter (replayable, see
    lifecycle/replay.py); nothing else changes."""
    async with rt.pool.acquire() as conn:
        await queries.record_delivery(
            conn,
            vendor=vendor,
            delivery_id=delivery.delivery_id,
            task_id=task_id,
            status="rejected",
            outcome=None,
            error=problem.message,
            headers=headers,
            body=body,
        )
    bound = log.bind(
        task_id=format_task_id(task_id), vendor=vendor, delivery_id=delivery.delivery_id
    )
    bound.warning("webhook_rejected", error=problem.message)


async def apply_callback(
    rt: Runtime,
    adapter: VendorAdapter,
    *,
    task_id: uuid.UUID,
    delivery: Delivery,
    update: VendorUpdate,
    headers: dict[str, str],
    body: bytes,
) -> Verdict:
    """Store a verified, parsed callback and apply it to its task in one commit.

    Raises TokenInvalid (no such task), PayloadInvalid (a job that is not the task's: kept,
    and stopped at the vendor when the vendor signed it) or Unavailable (the task stayed
    locked; nothing was written and the vendor retries)."""
    bound = log.bind(
        task_id=format_task_id(task_id), vendor=adapter.name, delivery_id=delivery.delivery_id
    )
    move = move_for(update, vendor=adapter.name, poll_after=rt.settings.poll_after)
    progress = None if update.progress is None else max(0, min(100, update.progress))
    webhook = queries.InboundWebhook(
        vendor=adapter.name,
        delivery_id=delivery.delivery_id,
        task_id=task_id,
        headers=headers,
        body=body,
        # A hint (unsigned, or a signed one that carries no result) is confirmed with the
        # vendor's API before anything is applied.
        signed=adapter.signed_callbacks and not update.confirm,
        vendor_task_id=update.vendor_task_id,
        to=update.status.value,
        allowed_from=allowed_from(update.status),
        progress=progress,
        outputs=update.outputs,
        error=move.error,
        detail=move.detail,
        next_poll_at=move.next_poll_at,
    )
    try:
        row = await rt.webhooks.submit(webhook)
    except asyncpg.UniqueViolationError:
        # The same delivery id committed for another task a moment ago; this copy's
        # transition was rolled back with its inbox row (taskhook_receive_many).
        bound.info("webhook_duplicate")
        return Verdict.DUPLICATE
    except asyncpg.LockNotAvailableError:
        # The task's row stayed locked for over a second (taskhook_receive_many): nothing was
        # written; the vendor retries.
        bound.warning("webhook_task_busy")
        raise Unavailable("The task is busy; retry this delivery.") from None
    verdict = row.verdict
    bound = bound.bind(trace_id=row.trace_id)
    if verdict == "no_task":
        raise TokenInvalid("The callback token names no task.")
    if verdict in ("rejected", "moved"):
        if verdict == "moved" or adapter.signed_callbacks:
            # A job this vendor holds for our task that is not the one the task recorded: left
            # behind by a failover ("moved"), or a second job of a create that went through
            # twice (no vendor has an idempotency key). The vendor signed this callback and
            # sent it to this task's own URL, so the job is ours: stop it, it is billed.
            # (An unsigned callback's job id proves nothing: it is never acted on.)
            rt.spawn(_cancel_stray(rt, adapter, task_id, update.vendor_task_id))
        bound.warning("webhook_rejected", error=row.message)
        raise PayloadInvalid(row.message)
    if verdict == "duplicate":
        bound.info("webhook_duplicate")
        return Verdict.DUPLICATE
    if verdict == "confirming":
        rt.spawn(refresh_task(rt, task_id))  # what the hint hinted at, from the vendor
        bound.info("webhook_hint")
        return Verdict.CONFIRMING
    result = result_of(row, update.status)
    note_result(result, update=update, task_id=task_id, vendor=adapter.name, cause="webhook")
    bound.info("webhook_applied", outcome=result.outcome.value, to=update.status.value)
    return Verdict.APPLIED if result.outcome is Outcome.APPLIED else Verdict.DUPLICATE


async def _cancel_stray(
    rt: Runtime, adapter: VendorAdapter, task_id: uuid.UUID, vendor_task_id: str
) -> None:
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is not None:
        with task_context(task_id=task.public_id, vendor=adapter.name, trace_id=task.trace_id):
            await cancel_stray(rt, adapter, task=task, vendor_task_id=vendor_task_id)
