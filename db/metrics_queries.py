"""Typed wrappers around the named SQL blocks in db/metrics.sql (queue depths for /metrics).

Only this module knows each statement's columns; callers get a dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from common.states import ACTIVE, TaskStatus
from db.queries import Conn, load_queries

QUERIES: Mapping[str, str] = load_queries(
    resources.files("db").joinpath("metrics.sql").read_text(encoding="utf-8")
)

# The live states, in life order: the columns of queue_depths named after them.
LIVE_STATES: tuple[TaskStatus, ...] = tuple(s for s in TaskStatus if s in ACTIVE)


@dataclass(frozen=True, kw_only=True)
class QueueDepths:
    """How much work is waiting, counted in one statement (one snapshot)."""

    by_status: Mapping[TaskStatus, int]  # every live state, zero included
    overdue: int  # live tasks past their deadline
    due_polls: int  # submitted/processing tasks the reconciler may poll now
    dead_letters: int  # rejected webhook deliveries not yet replayed


async def queue_depths(conn: Conn, *, timeout: float | None = None) -> QueueDepths:
    record = await conn.fetchrow(QUERIES["queue_depths"], timeout=timeout)
    assert record is not None  # a SELECT without FROM yields exactly one row
    return QueueDepths(
        by_status={status: int(record[status.value]) for status in LIVE_STATES},
        overdue=int(record["overdue"]),
        due_polls=int(record["due_polls"]),
        dead_letters=int(record["dead_letters"]),
    )
