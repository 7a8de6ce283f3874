"""One task's whole story, as an operator reads it (issue 17.3, 17.5): who owns it, what was
asked, what it cost, every transition, ledger row and webhook, the vendor's job id and the
last error in full (details its client never sees: taskhook.errors.TASK_ERRORS).

Shared by `taskhook tasks show` and the dashboard's task detail, so both tell the same story
in the same words: public ids (`tsk_`, `usr_`) and the API's ISO 8601 `Z` timestamps.
"""

from __future__ import annotations

import uuid
from typing import Any

from common.ids import format_task_id, format_user_id
from common.times import iso_time
from db import operations_queries as ops
from db import queries
from db.models import Task
from db.queries import Conn

MAX_DELIVERIES = 100


def task_summary(task: Task) -> dict[str, Any]:
    """The row of a task in operators' lists."""
    return {
        "id": task.public_id,
        "status": task.status.value,
        "progress": task.progress,
        "vendor": task.vendor,
        "vendor_task_id": task.vendor_task_id,
        "model": task.model,
        "cost": task.cost,
        "refunded": task.refunded,
        "created_at": iso_time(task.created_at),
        "updated_at": iso_time(task.updated_at),
        "deadline_at": iso_time(task.deadline_at),
        "attempts": task.attempts,
        "last_error": task.last_error,
        "error": task.error,
    }


async def task_detail(conn: Conn, *, task_id: uuid.UUID) -> dict[str, Any] | None:
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is None:
        return None
    owner = await ops.task_owner(conn, task_id=task_id)
    events = await ops.task_timeline(conn, task_id=task_id)
    ledger = await ops.task_ledger(conn, task_id=task_id)
    deliveries = await ops.task_deliveries(
        conn, task_id=task_id, since=task.created_at, limit=MAX_DELIVERIES
    )
    return {
        **task_summary(task),
        "owner": {"id": format_user_id(owner[0]), "email": owner[1]} if owner else None,
        "vendor_model": task.vendor_model,
        "parent_id": format_task_id(task.parent_id) if task.parent_id else None,
        "input": task.input,
        "completed_at": iso_time(task.completed_at),
        "next_attempt_at": iso_time(task.next_attempt_at),
        "next_poll_at": iso_time(task.next_poll_at),
        "trace_id": task.trace_id,
        "outputs": task.outputs,
        "result": task.result,
        "ledger": [{**r, "created_at": iso_time(r["created_at"])} for r in ledger],
        "events": [{**e, "created_at": iso_time(e["created_at"])} for e in events],
        "deliveries": [{**d, "received_at": iso_time(d["received_at"])} for d in deliveries],
    }
