"""Turning what a vendor said (callback, create response or poll) into one transition.

Receiver, registration and reconciler share this so a vendor's word means the same thing
whichever way it reached us.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from common import metrics
from common.states import REFUNDING, TaskStatus
from db.queries import Conn
from db.transition import Outcome, TransitionResult, transition
from vendors.base import RESULT_EXPIRED, VendorUpdate

log = structlog.get_logger()


@dataclass(frozen=True)
class Move:
    """What a vendor's report asks of the transition, however the report reached us."""

    error: dict[str, str] | None
    next_poll_at: datetime | None
    detail: dict[str, str]


def move_for(update: VendorUpdate, *, vendor: str, poll_after: float) -> Move:
    error = None
    if update.status is TaskStatus.FAILED:
        error = {
            "code": update.error_code or "vendor_failed",
            "message": update.error or "the vendor reported failure",
        }
    next_poll_at = None
    if update.status in (TaskStatus.SUBMITTED, TaskStatus.PROCESSING):
        # Fresh news from the vendor: the reconciler need not ask for a while.
        next_poll_at = datetime.now(UTC) + timedelta(seconds=poll_after)
    return Move(error, next_poll_at, {"vendor": vendor, "vendor_status": update.raw_status})


def note_result(
    result: TransitionResult, *, update: VendorUpdate, task_id: uuid.UUID, vendor: str, cause: str
) -> None:
    if result.outcome is Outcome.APPLIED and update.error_code == RESULT_EXPIRED:
        # A callback lost, a poll too late: the vendor deleted the result (issue 16.4).
        metrics.RESULTS_EXPIRED.labels(vendor=vendor).inc()
        log.warning("result_expired", task_id=str(task_id), vendor=vendor, cause=cause)
    if (
        result.outcome is Outcome.STALE
        and update.status is TaskStatus.STORING
        and result.from_status in REFUNDING
    ):
        # Success after we gave up: recorded in task_events, counted, never reopened.
        metrics.LATE_SUCCESS.inc()
        log.warning("late_success", task_id=str(task_id), vendor=vendor, cause=cause)


async def apply_update(
    conn: Conn,
    *,
    task_id: uuid.UUID,
    vendor: str,
    update: VendorUpdate,
    event_key: str,
    cause: str,
    poll_after: float,
) -> TransitionResult:
    move = move_for(update, vendor=vendor, poll_after=poll_after)
    result = await transition(
        conn,
        task_id=task_id,
        to=update.status,
        event_key=event_key,
        cause=cause,
        progress=update.progress,
        vendor_task_id=update.vendor_task_id,
        outputs=update.outputs,
        error=move.error,
        detail=move.detail,
        next_poll_at=move.next_poll_at,
    )
    note_result(result, update=update, task_id=task_id, vendor=vendor, cause=cause)
    return result
