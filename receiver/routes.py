"""POST /hooks/{vendor}/{token}: verify, dedupe, apply; answer fast, never download here.

Order of checks: vendor (404), size (413), token (401), signature (401), timestamp (400),
payload (400, kept as a dead letter), then the delivery row and the transition in one
transaction, so a delivery is stored exactly when its effect is.
"""

from __future__ import annotations

import uuid

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from db import queries
from db.transition import Outcome
from receiver.signature import Delivery
from taskhook import metrics
from taskhook.errors import NotFound, PayloadInvalid, TaskhookError, TokenInvalid
from taskhook.http import read_body
from taskhook.runtime import Runtime
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


async def _receive(rt: Runtime, adapter: VendorAdapter, request: Request) -> str:
    body = await read_body(request, limit=rt.settings.max_body_bytes)
    task_id = rt.tokens.read(request.path_params["token"], vendor=adapter.name)
    if task_id is None:
        raise TokenInvalid()
    delivery = adapter.verify(body, request.headers, now=rt.clock())
    headers = {k: v for k, v in request.headers.items() if k in _KEPT_HEADERS}
    bound = log.bind(
        task_id=f"tsk_{task_id.hex}", vendor=adapter.name, delivery_id=delivery.delivery_id
    )
    try:
        update = adapter.parse(body)
    except PayloadInvalid as exc:
        async with rt.pool.acquire() as conn:
            await queries.record_delivery(
                conn,
                vendor=adapter.name,
                delivery_id=delivery.delivery_id,
                task_id=task_id,
                status="rejected",
                outcome=None,
                error=exc.message,
                headers=headers,
                body=body,
            )
        bound.warning("webhook_rejected", error=exc.message)
        raise
    return await _apply(rt, adapter, task_id, delivery, update, headers, body, bound)


async def _apply(
    rt: Runtime,
    adapter: VendorAdapter,
    task_id: uuid.UUID,
    delivery: Delivery,
    update: VendorUpdate,
    headers: dict[str, str],
    body: bytes,
    bound: structlog.typing.FilteringBoundLogger,
) -> str:
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            task = await queries.get_task(conn, task_id=task_id, user_id=None)
            if task is None:
                raise TokenInvalid("The callback token names no task.")
            mismatch = bool(task.vendor_task_id) and task.vendor_task_id != update.vendor_task_id
            if not mismatch:
                row_id = await queries.record_delivery(
                    conn,
                    vendor=adapter.name,
                    delivery_id=delivery.delivery_id,
                    task_id=task_id,
                    status="accepted",
                    outcome=None,
                    error=None,
                    headers=headers,
                    body=body,
                )
                if row_id is None:
                    bound.info("webhook_duplicate")
                    return "duplicate"
                result = await apply_update(
                    conn,
                    task_id=task_id,
                    vendor=adapter.name,
                    update=update,
                    event_key=f"webhook:{delivery.delivery_id}",
                    cause="webhook",
                    poll_after=rt.settings.poll_after,
                )
                await queries.set_delivery_outcome(
                    conn, delivery_row_id=row_id, outcome=result.outcome.value
                )
                bound.info(
                    "webhook_applied",
                    outcome=result.outcome.value,
                    to=update.status.value,
                    trace_id=task.trace_id,
                )
                return "applied" if result.outcome is Outcome.APPLIED else "duplicate"
        # Signed by the vendor but about another job: keep it as a dead letter, change nothing.
        message = "The payload's job id does not match this callback's task."
        await queries.record_delivery(
            conn,
            vendor=adapter.name,
            delivery_id=delivery.delivery_id,
            task_id=task_id,
            status="rejected",
            outcome=None,
            error=message,
            headers=headers,
            body=body,
        )
        bound.warning("webhook_rejected", error=message)
        raise PayloadInvalid(message)


routes = [Route("/hooks/{vendor}/{token}", receive, methods=["POST"])]

__all__ = ["routes"]
