"""The one door through which a task changes state.

Its callers all live in lifecycle/ (registration, confirm, reconcile, results, cancel, vendor
updates; the receiver's batched form is the SQL function `taskhook_receive_many`); nothing else
writes `tasks.status`. Late, repeated and out-of-order events are normal, so they are outcomes, not
errors.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common import metrics
from common.states import ALLOWED_FROM, PROGRESS_STATES, TaskStatus
from db import queries
from db.models import ReceiveRow, TransitionRow
from db.queries import Conn


class Outcome(enum.StrEnum):
    APPLIED = "applied"  # the task moved (or its progress grew)
    DUPLICATE = "duplicate"  # this event_key was applied or seen before
    STALE = "stale"  # recorded, but the task is already at or past this state
    NOT_FOUND = "not_found"  # no such task


@dataclass(frozen=True, kw_only=True)
class TransitionResult:
    outcome: Outcome
    from_status: TaskStatus | None
    status: TaskStatus | None
    refunded: bool

    @property
    def applied(self) -> bool:
        return self.outcome is Outcome.APPLIED


async def transition(
    conn: Conn,
    *,
    task_id: uuid.UUID,
    to: TaskStatus,
    event_key: str,
    cause: str,
    progress: int | None = None,
    vendor_task_id: str | None = None,
    outputs: list[str] | None = None,
    result: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    detail: Mapping[str, Any] | None = None,
    next_poll_at: datetime | None = None,
) -> TransitionResult:
    """Apply one event at most once, in one statement (see `transition` in queries.sql).

    The refund of a failed or canceled task and the NOTIFY that wakes workers and streams
    commit with the move or not at all. `vendor_task_id` is kept even when the move itself is
    stale, so that a callback that overtook registration cannot make us lose the vendor's id.
    """
    if progress is not None:
        progress = max(0, min(100, progress))
    row = await queries.transition_row(
        conn,
        task_id=task_id,
        event_key=event_key,
        to=to.value,
        allowed_from=allowed_from(to),
        cause=cause,
        progress=progress,
        vendor_task_id=vendor_task_id,
        outputs=outputs,
        result=result,
        error=error,
        detail=detail,
        next_poll_at=next_poll_at,
    )
    return result_of(row, to)


@functools.cache
def allowed_from(to: TaskStatus) -> tuple[str, ...]:
    """The states a move to `to` may start from, as the SQL function takes them (computed
    once per state: the receiver asks for every webhook)."""
    allowed = set(ALLOWED_FROM[to])
    if to in PROGRESS_STATES:
        allowed.add(to)
    return tuple(sorted(s.value for s in allowed))


def result_of(row: TransitionRow | ReceiveRow, to: TaskStatus) -> TransitionResult:
    """Read taskhook_transition_many's answer (also relayed by taskhook_receive_many) and
    count it."""
    from_status = TaskStatus(row.from_status) if row.from_status else None
    if from_status is None:
        outcome = Outcome.NOT_FOUND
    elif row.applied is None:
        outcome = Outcome.DUPLICATE
    elif row.applied:
        outcome = Outcome.APPLIED
    else:
        outcome = Outcome.STALE
    status = TaskStatus(row.status) if row.status else from_status
    metrics.TRANSITIONS.labels(to.value, outcome.value).inc()
    if row.refunds:
        metrics.REFUNDS.inc()
    if row.age is not None and status is not None:  # this move ended the task
        metrics.TASK_DURATION.labels(status.value).observe(row.age)
    return TransitionResult(
        outcome=outcome, from_status=from_status, status=status, refunded=row.refunds > 0
    )
