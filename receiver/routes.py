"""POST /hooks/{vendor}/{token}: verify, dedupe, apply; answer fast, never download here.

Order of checks: vendor (404), size (413), token (401), signature (401), timestamp (400),
payload (400, kept as a dead letter), then the server-side function taskhook_receive_many, in a
commit shared with the deliveries arriving meanwhile (db/group_commit.py): the inbox row, the
task's checks (still at this vendor, the same job) and the transition commit together, so a
delivery is stored exactly when its effect is. Unsigned vendors' callbacks stop short of the
transition: the vendor's API is asked first.
"""

from __future__ import annotations

import uuid

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common import metrics
from common.errors import (
    NotFound,
    PayloadInvalid,
    TaskhookError,
    TokenInvalid,
    Unavailable,
    VerificationUnavailable,
)
from common.http import read_body
from common.tracing import task_context
from db import queries
from db.transition import Outcome, allowed_from, result_of
from lifecycle.accounts import check_account
from lifecycle.confirm import refresh_task
from lifecycle.registration import cancel_stray
from lifecycle.runtime import Runtime
from lifecycle.vendor_updates import move_for, note_result
from vendors.base import VendorAdapter
from vendors.signature import Delivery

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
_KEPT_RAW = frozenset(name.encode() for name in _KEPT_HEADERS)
# An unsigned vendor's body proves nothing (the vendor's API is asked instead) and anyone
# holding a callback URL can send one: only its start is kept, for forensics (issue 14.7).
UNSIGNED_BODY_KEEP = 16 * 1024
# Vendors' ids are short (Standard Webhooks `msg_...`, fal's request uuid and a digest); a btree
# row holds at most about 2700 bytes.
MAX_DELIVERY_ID = 255


async def receive(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    vendor = request.path_params["vendor"]
    adapter = rt.vendors.get(vendor)
    if adapter is None:
        raise NotFound(f"No vendor named {vendor!r} is configured.")
    try:
        status = await _receive(rt, adapter, request)
    except TaskhookError as exc:
        metrics.WEBHOOKS.labels(vendor, exc.code).inc()
        readiness = rt.readiness.get(vendor)
        if isinstance(exc, VerificationUnavailable) and readiness is not None:
            readiness.poke()  # the vendor is calling: retry its preparation now
        raise
    metrics.WEBHOOKS.labels(vendor, status).inc()  # positional: a third cheaper
    return JSONResponse({"status": status})


async def _dead_letter(
    rt: Runtime,
    *,
    vendor: str,
    delivery_id: str,
    task_id: uuid.UUID,
    headers: dict[str, str],
    body: bytes,
    message: str,
) -> None:
    """Keep an authentic but unreadable delivery as a dead letter; nothing else changes."""
    async with rt.pool.acquire() as conn:
        await queries.record_delivery(
            conn,
            vendor=vendor,
            delivery_id=delivery_id,
            task_id=task_id,
            status="rejected",
            outcome=None,
            error=message,
            headers=headers,
            body=body,
        )


async def _verify(adapter: VendorAdapter, body: bytes, request: Request) -> Delivery:
    """Adapters whose keys can rotate under us (fal's JWKS) verify asynchronously: an unknown
    key fetches the vendor's keys once and tries again, so the first delivery signed with a new
    key is accepted rather than bounced."""
    now = request.app.state.runtime.clock()
    verify_async = getattr(adapter, "verify_async", None)
    if verify_async is not None:
        delivery: Delivery = await verify_async(body, request.headers, now=now)
        return delivery
    return adapter.verify(body, request.headers, now=now)


async def _receive(rt: Runtime, adapter: VendorAdapter, request: Request) -> str:
    body = await read_body(request, limit=rt.settings.max_body_bytes)
    task_id = rt.tokens.read(request.path_params["token"], vendor=adapter.name)
    if task_id is None:
        raise TokenInvalid()
    delivery = await _verify(adapter, body, request)
    if len(delivery.delivery_id) > MAX_DELIVERY_ID:
        # Signed, but not what any vendor sends; too long for the inbox's unique index, so
        # not even kept as a dead letter.
        raise PayloadInvalid(
            f"The delivery id is longer than {MAX_DELIVERY_ID} characters; nothing was stored."
        )
    await check_account(rt, vendor=adapter.name, delivery=delivery, task_id=task_id)
    # From the raw ASGI pairs (lower-case names, latin-1 as Starlette decodes them): only
    # the kept ones are decoded.
    headers = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in request.scope["headers"]
        if k in _KEPT_RAW
    }
    bound = log.bind(
        task_id=f"tsk_{task_id.hex}", vendor=adapter.name, delivery_id=delivery.delivery_id
    )
    kept = body
    if not adapter.signed_callbacks and len(body) > UNSIGNED_BODY_KEEP:
        kept = body[:UNSIGNED_BODY_KEEP]
        headers["x-taskhook-body-bytes"] = str(len(body))  # what it was before truncation
    try:
        update = adapter.parse(body)
    except PayloadInvalid as exc:
        await _dead_letter(
            rt,
            vendor=adapter.name,
            delivery_id=delivery.delivery_id,
            task_id=task_id,
            headers=headers,
            body=kept,
            message=exc.message,
        )
        bound.warning("webhook_rejected", error=exc.message)
        raise
    move = move_for(update, vendor=adapter.name, poll_after=rt.settings.poll_after)
    progress = None if update.progress is None else max(0, min(100, update.progress))
    # One round trip, shared with the deliveries arriving meanwhile (db/group_commit.py):
    # inbox row, task checks, transition and outcome (taskhook_receive_many).
    webhook = queries.InboundWebhook(
        vendor=adapter.name,
        delivery_id=delivery.delivery_id,
        task_id=task_id,
        headers=headers,
        body=kept,
        # A hint (unsigned, or a signed one that carries no result) is confirmed with the
        # vendor's API before anything is applied.
        signed=adapter.signed_callbacks and not update.confirm,
        vendor_task_id=update.vendor_task_id,
        to=update.status.value,
        allowed_from=allowed_from(update.status),
        progress=progress,
        outputs=update.outputs,
        error=move.error,
        detail=move.detail,
        next_poll_at=move.next_poll_at,
    )
    try:
        row = await rt.webhooks.submit(webhook)
    except asyncpg.UniqueViolationError:
        # The same delivery id committed for another task a moment ago; this copy's
        # transition was rolled back with its inbox row (taskhook_receive_many).
        bound.info("webhook_duplicate")
        return "duplicate"
    except asyncpg.LockNotAvailableError:
        # The task's row stayed locked for over a second (taskhook_receive_many): nothing was
        # written; the vendor retries.
        bound.warning("webhook_task_busy")
        raise Unavailable("The task is busy; retry this delivery.") from None
    verdict = row["verdict"]
    bound = bound.bind(trace_id=row["trace_id"])
    if verdict == "no_task":
        raise TokenInvalid("The callback token names no task.")
    if verdict in ("rejected", "moved"):
        if verdict == "moved" or adapter.signed_callbacks:
            # A job this vendor holds for our task that is not the one the task recorded: left
            # behind by a failover ("moved"), or a second job of a create that went through
            # twice (no vendor has an idempotency key). The vendor signed this callback and
            # sent it to this task's own URL, so the job is ours: stop it, it is billed.
            # (An unsigned callback's job id proves nothing: it is never acted on.)
            rt.spawn(_cancel_stray(rt, adapter, task_id, update.vendor_task_id))
        bound.warning("webhook_rejected", error=row["message"])
        raise PayloadInvalid(row["message"])
    if verdict == "duplicate":
        bound.info("webhook_duplicate")
        return "duplicate"
    if verdict == "confirming":
        rt.spawn(refresh_task(rt, task_id))  # what the hint hinted at, from the vendor
        bound.info("webhook_hint")
        return "confirming"
    result = result_of(row, update.status)
    note_result(result, update=update, task_id=task_id, vendor=adapter.name, cause="webhook")
    bound.info("webhook_applied", outcome=result.outcome.value, to=update.status.value)
    return "applied" if result.outcome is Outcome.APPLIED else "duplicate"


async def _cancel_stray(
    rt: Runtime, adapter: VendorAdapter, task_id: uuid.UUID, vendor_task_id: str
) -> None:
    async with rt.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    if task is not None:
        with task_context(task_id=task.public_id, vendor=adapter.name, trace_id=task.trace_id):
            await cancel_stray(rt, adapter, task=task, vendor_task_id=vendor_task_id)


routes = [Route("/hooks/{vendor}/{token}", receive, methods=["POST"])]

__all__ = ["routes"]
