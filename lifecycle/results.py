"""Copying a finished task's output from the vendor to our S3 bucket, then completing it.

Bounded everywhere a stranger could make it unbounded: at most `max_outputs` files and
`max_output_bytes` in all per task (over either, the task fails with `output_limit_exceeded`
and is refunded: keeping a silent part of it would be a wrong answer), each download by its
own time and rate limits (storage/download.py), and the whole attempt by the task's storing
deadline (`storage_deadline` seconds after it entered storing; past it the task fails with
`storage_failed`, and the reconciler ends any task left storing beyond it).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import botocore.exceptions
import structlog

from common import metrics
from common.backoff import backoff_delay
from common.states import TaskStatus
from common.tracing import task_context
from db import queries
from db.models import Task
from db.transition import Outcome, transition
from lifecycle.runtime import Runtime
from storage.download import DownloadError, OutputLimitExceeded, Pace, download
from storage.s3 import result_key
from vendors.base import RESULT_EXPIRED

log = structlog.get_logger()


async def store_result(
    rt: Runtime,
    *,
    task_id: uuid.UUID,
    attempt: int,
    owner: str,
    time_left: float | None = None,
) -> None:
    """One attempt under the caller's lease, given at most `time_left` seconds (the time to
    the task's storing deadline). Failures back off; too many, or the deadline, fail and
    refund."""
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is None or task.status is not TaskStatus.STORING:
        return
    with task_context(task_id=task.public_id, vendor=task.vendor, trace_id=task.trace_id):
        await _store(rt, task, attempt, owner, time_left)


async def _copy(rt: Runtime, task: Task) -> list[dict[str, Any]]:
    """Every output, downloaded and uploaded in order; raises DownloadError (or S3's)."""
    settings = rt.settings
    outputs = task.outputs or []
    if not outputs:
        raise DownloadError("the vendor reported no output files")
    if len(outputs) > settings.max_outputs:
        raise OutputLimitExceeded(
            f"the vendor reported {len(outputs)} output files, over the cap of "
            f"{settings.max_outputs} (TASKHOOK_MAX_OUTPUTS)"
        )
    pace = Pace(
        seconds=settings.download_timeout,
        min_rate=settings.download_min_rate,
        grace=settings.download_grace,
    )
    files: list[dict[str, Any]] = []
    total = 0
    for index, url in enumerate(outputs):
        left = settings.max_output_bytes - total
        per_file = min(settings.max_download_bytes, left)
        fetched = await download(
            rt.downloads,
            url,
            max_bytes=per_file,
            pace=pace,
            # Over the task's total, not one file's own cap: the task's limit was hit.
            limit_error=OutputLimitExceeded
            if left < settings.max_download_bytes
            else DownloadError,
        )
        total += fetched.size
        with fetched.file:
            key = result_key(task.id.hex, index, fetched.extension)
            await rt.store.upload(key, fetched.file, content_type=fetched.content_type)
        files.append(
            {
                "key": key,
                "content_type": fetched.content_type,
                "bytes": fetched.size,
                "sha256": fetched.sha256,
            }
        )
    return files


async def _store(
    rt: Runtime, task: Task, attempt: int, owner: str, time_left: float | None
) -> None:
    settings = rt.settings
    budget = asyncio.timeout(max(0.0, time_left) if time_left is not None else None)
    try:
        async with budget:
            files = await _copy(rt, task)
    except (
        DownloadError,
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        OSError,  # TimeoutError among them: our budget's, or a socket's
    ) as exc:
        metrics.STORAGE.labels(outcome="error").inc()
        adapter = rt.vendors.get(task.vendor)
        expired = (
            not budget.expired()
            and isinstance(exc, DownloadError)
            and exc.gone
            and adapter is not None
            and adapter.result_retention is not None
        )
        if budget.expired():
            code, detail = "storage_failed", "the result was not stored before its deadline"
            final = True
        else:
            code = exc.code if isinstance(exc, DownloadError) else "storage_failed"
            detail = str(exc) or type(exc).__name__
            final = attempt >= settings.max_storage_attempts or (
                isinstance(exc, DownloadError) and exc.permanent
            )
        async with rt.pool.acquire() as conn:
            if expired:
                # This vendor deletes results on a schedule and has: no retry brings it back.
                result = await transition(
                    conn,
                    task_id=task.id,
                    to=TaskStatus.FAILED,
                    event_key="storage:expired",
                    cause="worker",
                    error={"code": RESULT_EXPIRED, "message": f"the result is gone: {exc}"},
                )
                if result.outcome is Outcome.APPLIED:
                    metrics.RESULTS_EXPIRED.labels(vendor=task.vendor).inc()
                log.warning("result_expired", error=str(exc))
            elif final:
                log.warning("storage_failed", attempts=attempt, code=code, error=detail)
                await transition(
                    conn,
                    task_id=task.id,
                    to=TaskStatus.FAILED,
                    event_key="storage:failed",
                    cause="worker",
                    # The detail is for operators (tasks show, /admin); clients see the code's
                    # sentence (taskhook.errors.TASK_ERRORS).
                    error={"code": code, "message": detail},
                    detail={"error": detail},
                )
            else:
                delay = backoff_delay(attempt, rng=rt.rng, cap=60)
                log.info("storage_retry", attempt=attempt, delay=round(delay, 2), error=detail)
                await queries.release_storing(
                    conn, task_id=task.id, owner=owner, delay_seconds=delay, error=detail
                )
        return
    metrics.STORAGE.labels(outcome="stored").inc()
    async with rt.pool.acquire() as conn:
        result = await transition(
            conn,
            task_id=task.id,
            to=TaskStatus.COMPLETED,
            event_key="storage:stored",
            cause="worker",
            result={"files": files},
        )
    log.info("stored", files=len(files), outcome=result.outcome.value)
