"""Copying a finished task's output from the vendor to our S3 bucket, then completing it."""

from __future__ import annotations

import uuid
from typing import Any

import botocore.exceptions
import structlog

from db import queries
from db.models import Task
from db.states import TaskStatus
from db.transition import Outcome, transition
from storage.download import DownloadError, download
from storage.s3 import result_key
from taskhook import metrics
from taskhook.backoff import backoff_delay
from taskhook.runtime import Runtime
from taskhook.tracing import task_context
from vendors.base import RESULT_EXPIRED

log = structlog.get_logger()


async def store_result(rt: Runtime, *, task_id: uuid.UUID, attempt: int, owner: str) -> None:
    """One attempt under the caller's lease. Failures back off; too many fail and refund."""
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is None or task.status is not TaskStatus.STORING:
        return
    with task_context(task_id=task.public_id, vendor=task.vendor, trace_id=task.trace_id):
        await _store(rt, task, attempt, owner)


async def _store(rt: Runtime, task: Task, attempt: int, owner: str) -> None:
    settings = rt.settings
    files: list[dict[str, Any]] = []
    try:
        if not task.outputs:
            raise DownloadError("the vendor reported no output files")
        for index, url in enumerate(task.outputs):
            fetched = await download(
                rt.http,
                url,
                max_bytes=settings.max_download_bytes,
                allow_private=settings.allow_private_urls,
            )
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
    except (
        DownloadError,
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        OSError,
    ) as exc:
        metrics.STORAGE.labels(outcome="error").inc()
        adapter = rt.vendors.get(task.vendor)
        expired = (
            isinstance(exc, DownloadError)
            and exc.gone
            and adapter is not None
            and adapter.result_retention is not None
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
            elif attempt >= settings.max_storage_attempts:
                log.warning("storage_failed", attempts=attempt, error=str(exc))
                await transition(
                    conn,
                    task_id=task.id,
                    to=TaskStatus.FAILED,
                    event_key="storage:failed",
                    cause="worker",
                    error={"code": "storage_failed", "message": str(exc)},
                )
            else:
                delay = backoff_delay(attempt, rng=rt.rng, cap=60)
                log.info("storage_retry", attempt=attempt, delay=round(delay, 2), error=str(exc))
                await queries.release_storing(
                    conn, task_id=task.id, owner=owner, delay_seconds=delay, error=str(exc)
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
