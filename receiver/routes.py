"""POST /hooks/{vendor}/{token}: read, verify, parse, answer; never download here.

Order of checks: vendor (404), size (413), token (401), signature (401), timestamp (400),
account (401), payload (400, kept as a dead letter). What is verified and readable is applied
by lifecycle/receive.py, which answers with a verdict (`applied`, `duplicate`, `confirming`)
or a typed error.
"""

from __future__ import annotations

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
    VerificationUnavailable,
)
from common.http import read_body
from lifecycle.accounts import check_account
from lifecycle.receive import Verdict, apply_callback, keep_dead_letter
from lifecycle.runtime import Runtime
from vendors.base import VendorAdapter
from vendors.registry import kept_headers
from vendors.signature import Delivery

log = structlog.get_logger()

# Headers worth keeping with a delivery for replay and forensics; never Authorization.
_KEPT_HEADERS = ("content-type", "user-agent", *kept_headers())
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
        verdict = await _receive(rt, adapter, request)
    except TaskhookError as exc:
        metrics.WEBHOOKS.labels(vendor, exc.code).inc()
        readiness = rt.readiness.get(vendor)
        if isinstance(exc, VerificationUnavailable) and readiness is not None:
            readiness.poke()  # the vendor is calling: retry its preparation now
        raise
    # Labels by position: cheaper than by keyword (bench/RESULTS.md, "Webhook ingest").
    metrics.WEBHOOKS.labels(vendor, verdict.value).inc()
    return JSONResponse({"status": verdict.value})


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


async def _receive(rt: Runtime, adapter: VendorAdapter, request: Request) -> Verdict:
    # Read.
    body = await read_body(request, limit=rt.settings.max_body_bytes)
    task_id = rt.tokens.read(request.path_params["token"], vendor=adapter.name)
    if task_id is None:
        raise TokenInvalid()
    # Verify.
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
    kept = body
    if not adapter.signed_callbacks and len(body) > UNSIGNED_BODY_KEEP:
        kept = body[:UNSIGNED_BODY_KEEP]
        headers["x-taskhook-body-bytes"] = str(len(body))  # what it was before truncation
    # Parse.
    try:
        update = adapter.parse(body)
    except PayloadInvalid as exc:
        await keep_dead_letter(
            rt,
            vendor=adapter.name,
            delivery=delivery,
            task_id=task_id,
            headers=headers,
            body=kept,
            problem=exc,
        )
        raise
    # Apply (one round trip, shared with the deliveries arriving meanwhile).
    return await apply_callback(
        rt,
        adapter,
        task_id=task_id,
        delivery=delivery,
        update=update,
        headers=headers,
        body=kept,
    )


routes = [Route("/hooks/{vendor}/{token}", receive, methods=["POST"])]

__all__ = ["routes"]
