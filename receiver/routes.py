"""POST /hooks/{vendor}/{token}: verify, dedupe, apply; answer fast, never download here.

Order of checks: vendor (404), size (413), token (401), signature (401), timestamp (400),
payload (400, kept as a dead letter), then the delivery row and the transition in one
transaction, so a delivery is stored exactly when its effect is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from db import queries
from db.models import Task
from db.queries import Conn
from db.transition import Outcome
from reconciler.confirm import refresh_from_vendor
from taskhook import metrics
from taskhook.errors import NotFound, PayloadInvalid, TaskhookError, TokenInvalid, VendorError
from taskhook.http import read_body
from taskhook.runtime import Runtime
from taskhook.tracing import task_context
from taskhook.vendor_updates import apply_update
from vendors.base import VendorAdapter, VendorUpdate

log = structlog.get_logger()

# Headers worth keeping with a delivery for replay and forensics; never Authorization.
_KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)


async def receive(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    vendor = request.path_params["vendor"]
    adapter = rt.vendors.get(vendor)
    if adapter is None:
        raise NotFound(f"No vendor named {vendor!r} is configured.")
    try:
        status = await _receive(rt, adapter, request)
    except TaskhookError as exc:
        metrics.WEBHOOKS.labels(vendor=vendor, outcome=exc.code).inc()
        raise
    metrics.WEBHOOKS.labels(vendor=vendor, outcome=status).inc()
    return JSONResponse({"status": status})


@dataclass(frozen=True)
class _Inbound:
    """One verified delivery, as stored in the webhook inbox."""

    vendor: str
    delivery_id: str
    task_id: uuid.UUID
    headers: dict[str, str]
    body: bytes

    async def record(self, conn: Conn, *, status: str, error: str | None = None) -> int | None:
        """Its inbox row id, or None when this delivery was stored before (a duplicate)."""
        return await queries.record_delivery(
            conn,
            vendor=self.vendor,
            delivery_id=self.delivery_id,
            task_id=self.task_id,
            status=status,
            outcome=None,
            error=error,
            headers=self.headers,
            body=self.body,
        )

    async def reject(self, conn: Conn, message: str, bound: Any) -> PayloadInvalid:
        """Keep a signed but unusable delivery as a dead letter; nothing else changes."""
        await self.record(conn, status="rejected", error=message)
        bound.warning("webhook_rejected", error=message)
        return PayloadInvalid(message)


async def _receive(rt: Runtime, adapter: VendorAdapter, request: Request) -> str:
    body = await read_body(request, limit=rt.settings.max_body_bytes)
    task_id = rt.tokens.read(request.path_params["token"], vendor=adapter.name)
    if task_id is None:
        raise TokenInvalid()
    delivery = adapter.verify(body, request.headers, now=rt.clock())
    inbound = _Inbound(
        vendor=adapter.name,
        delivery_id=delivery.delivery_id,
        task_id=task_id,
        headers={k: v for k, v in request.headers.items() if k in _KEPT_HEADERS},
        body=body,
    )
    bound = log.bind(
        task_id=f"tsk_{task_id.hex}", vendor=adapter.name, delivery_id=delivery.delivery_id
    )
    try:
        update = adapter.parse(body)
    except PayloadInvalid as exc:
        async with rt.pool.acquire() as conn:
            raise await inbound.reject(conn, exc.message, bound) from exc
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            task = await queries.get_task(conn, task_id=task_id, user_id=None)
            if task is None:
                raise TokenInvalid("The callback token names no task.")
            bound = bound.bind(trace_id=task.trace_id)
            problem = _mismatch(task, inbound.vendor, update)
            if problem is None:
                if not adapter.signed_callbacks:
                    return await _hint(rt, conn, inbound, task, bound)
                return await _apply(rt, conn, inbound, update, bound)
        # Authentic but about another job (outside the rolled-back transaction).
        if task.vendor != inbound.vendor:
            # A job this vendor holds for a task that failed over elsewhere: stop it there.
            rt.spawn(_cancel_stray(adapter, update.vendor_task_id, task.vendor_model))
        raise await inbound.reject(conn, problem, bound)


def _mismatch(task: Task, vendor: str, update: VendorUpdate) -> str | None:
    """Why an authentic callback must not touch this task, or None."""
    if task.vendor != vendor:
        return f"The task is served by {task.vendor} now, not {vendor}."
    if task.vendor_task_id and task.vendor_task_id != update.vendor_task_id:
        return "The payload's job id does not match this callback's task."
    return None


async def _cancel_stray(adapter: VendorAdapter, vendor_task_id: str, model: str) -> None:
    try:
        await adapter.cancel(vendor_task_id, model=model)
    except VendorError as exc:
        log.warning("stray_cancel_failed", vendor=adapter.name, error=str(exc))


async def _hint(rt: Runtime, conn: Conn, inbound: _Inbound, task: Task, bound: Any) -> str:
    """An unsigned callback proves nothing about the job, only that the vendor has news: store
    it, make the task due for a poll now (the reconciler's fallback, should this process die),
    and confirm with the vendor's API right after answering."""
    row_id = await inbound.record(conn, status="accepted")
    if row_id is None:
        bound.info("webhook_duplicate")
        return "duplicate"
    await queries.set_delivery_outcome(conn, delivery_row_id=row_id, outcome="confirming")
    await queries.poll_now(conn, task_id=task.id)
    rt.spawn(_confirm(rt, task.id))
    bound.info("webhook_hint")
    return "confirming"


async def _confirm(rt: Runtime, task_id: uuid.UUID) -> None:
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is not None:
        with task_context(task_id=task.public_id, vendor=task.vendor, trace_id=task.trace_id):
            await refresh_from_vendor(rt, task)


async def _apply(
    rt: Runtime, conn: Conn, inbound: _Inbound, update: VendorUpdate, bound: Any
) -> str:
    """Store the delivery and apply it, in the caller's transaction: both or neither."""
    row_id = await inbound.record(conn, status="accepted")
    if row_id is None:
        bound.info("webhook_duplicate")
        return "duplicate"
    result = await apply_update(
        conn,
        task_id=inbound.task_id,
        vendor=inbound.vendor,
        update=update,
        event_key=f"webhook:{inbound.delivery_id}",
        cause="webhook",
        poll_after=rt.settings.poll_after,
    )
    await queries.set_delivery_outcome(conn, delivery_row_id=row_id, outcome=result.outcome.value)
    bound.info("webhook_applied", outcome=result.outcome.value, to=update.status.value)
    return "applied" if result.outcome is Outcome.APPLIED else "duplicate"


routes = [Route("/hooks/{vendor}/{token}", receive, methods=["POST"])]

__all__ = ["routes"]
