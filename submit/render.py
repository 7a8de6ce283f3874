"""The task object of API.md, as clients see it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from db.models import Task, format_task_id
from db.states import TaskStatus
from storage.s3 import ResultStore


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def render_result(task: Task, store: ResultStore) -> dict[str, Any] | None:
    if task.status is not TaskStatus.COMPLETED or not task.result:
        return None
    files = [
        {
            "url": store.presigned_url(f["key"]),
            "content_type": f["content_type"],
            "bytes": f["bytes"],
            "sha256": f["sha256"],
        }
        for f in task.result.get("files", [])
    ]
    if not files:
        return None
    result: dict[str, Any] = dict(files[0])
    if len(files) > 1:
        result["files"] = files
    return result


def render_task(task: Task, store: ResultStore) -> dict[str, Any]:
    return {
        "id": task.public_id,
        "status": task.status.value,
        "progress": task.progress,
        "vendor": task.vendor,
        "model": task.model,
        "input": task.input,
        "cost": task.cost,
        "created_at": _time(task.created_at),
        "updated_at": _time(task.updated_at),
        "deadline_at": _time(task.deadline_at),
        "completed_at": _time(task.completed_at),
        "result": render_result(task, store),
        "error": task.error if task.status is TaskStatus.FAILED else None,
        "refunded": task.refunded,
        "parent_id": format_task_id(task.parent_id) if task.parent_id else None,
    }
