"""The task object of API.md, as clients see it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from common.errors import task_error_for_client
from common.ids import format_task_id
from common.states import TaskStatus
from db.models import Task
from storage.s3 import ResultStore
from submit.contracts import Task as TaskObject

# The task object's fields, in the order they are written (submit/contracts.py declares them).
TASK_FIELDS = tuple(TaskObject.model_fields)


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _files(task: Task) -> list[dict[str, Any]]:
    if task.status is not TaskStatus.COMPLETED or not task.result:
        return []
    files: list[dict[str, Any]] = task.result.get("files", [])
    return files


def _result(files: list[dict[str, Any]], urls: list[str]) -> dict[str, Any] | None:
    rendered = [
        {
            "url": url,
            "content_type": f["content_type"],
            "bytes": f["bytes"],
            "sha256": f["sha256"],
        }
        for f, url in zip(files, urls, strict=True)
    ]
    if not rendered:
        return None
    result: dict[str, Any] = dict(rendered[0])
    if len(rendered) > 1:
        result["files"] = rendered
    return result


async def render_tasks(tasks: Sequence[Task], store: ResultStore) -> list[dict[str, Any]]:
    """Task objects, their result URLs signed together off the event loop (storage/s3.py)."""
    files = [_files(task) for task in tasks]
    urls = await store.presigned_urls([f["key"] for each in files for f in each])
    rendered = []
    for task, own in zip(tasks, files, strict=True):
        mine, urls = urls[: len(own)], urls[len(own) :]
        rendered.append(_render(task, _result(own, mine)))
    return rendered


async def render_task(task: Task, store: ResultStore) -> dict[str, Any]:
    (rendered,) = await render_tasks([task], store)
    return rendered


def _render(task: Task, result: dict[str, Any] | None) -> dict[str, Any]:
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
        "result": result,
        "error": task_error_for_client(task.error) if task.status is TaskStatus.FAILED else None,
        "refunded": task.refunded,
        "parent_id": format_task_id(task.parent_id) if task.parent_id else None,
    }
