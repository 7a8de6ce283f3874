"""The task state machine: ranks, terminal states and which moves are allowed.

This is the one table of rules; `db.transition` enforces it inside PostgreSQL's row lock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class TaskStatus(enum.StrEnum):
    """Mirrors the SQL enum `task_status`."""

    PENDING = "pending"  # charged, not yet accepted by the vendor
    SUBMITTED = "submitted"  # the vendor holds it and gave us its id
    PROCESSING = "processing"  # the vendor says it is running
    STORING = "storing"  # the vendor finished; we are copying the output to S3
    COMPLETED = "completed"  # output stored; terminal
    FAILED = "failed"  # terminal, refunded (unless a follow-up builds on it: 0021)
    CANCELED = "canceled"  # terminal, refunded


TERMINAL: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELED}
)
ACTIVE: frozenset[TaskStatus] = frozenset(TaskStatus) - TERMINAL
REFUNDING: frozenset[TaskStatus] = frozenset({TaskStatus.FAILED, TaskStatus.CANCELED})
# The vendor reported success: its work is done (and paid for there), a follow-up action may
# already build on it. Such a task can still fail (its output cannot be stored), but no
# client can cancel it.
SUCCEEDED: frozenset[TaskStatus] = frozenset({TaskStatus.STORING, TaskStatus.COMPLETED})
CANCELABLE: frozenset[TaskStatus] = ACTIVE - SUCCEEDED

_RANK: Mapping[TaskStatus, int] = {
    TaskStatus.PENDING: 0,
    TaskStatus.SUBMITTED: 1,
    TaskStatus.PROCESSING: 2,
    TaskStatus.STORING: 3,
    TaskStatus.COMPLETED: 4,
    TaskStatus.FAILED: 4,
    TaskStatus.CANCELED: 4,
}


def rank(status: TaskStatus) -> int:
    """Forward-only order: a move to an equal or lower rank is never applied."""
    return _RANK[status]


def _allowed_from(target: TaskStatus) -> frozenset[TaskStatus]:
    if target is TaskStatus.CANCELED:
        return CANCELABLE
    if target in TERMINAL:
        return ACTIVE
    return frozenset(s for s in ACTIVE if rank(s) < rank(target))


# Which states a task may be in for a move to the key state to apply. Events may skip ahead
# (a vendor's `succeeded` before its `processing`); terminal states appear in no set.
ALLOWED_FROM: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    target: _allowed_from(target) for target in TaskStatus if target is not TaskStatus.PENDING
}

# Progress reports repeat the state they are in; they apply only when progress grows.
PROGRESS_STATES: frozenset[TaskStatus] = frozenset({TaskStatus.PROCESSING})


def can_move(current: TaskStatus, target: TaskStatus) -> bool:
    """Whether a move would change the state (progress-only updates aside)."""
    return current in ALLOWED_FROM.get(target, frozenset())
