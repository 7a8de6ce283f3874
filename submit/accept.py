"""The HTTP side of accepting a task: the Idempotency-Key header, the trace id, the 202.

Shared by submit (POST /v1/tasks) and follow-up actions (POST /v1/tasks/{id}/actions); the
charge and insert are lifecycle/accept.py's.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import ValidationFailed
from common.tracing import trace_id_from
from lifecycle import accept as accepting
from lifecycle.client_webhooks import ClientWebhook
from lifecycle.routing import Plan
from lifecycle.runtime import Runtime
from submit.render import render_task

MAX_IDEMPOTENCY_KEY = 255


async def accept(
    request: Request,
    *,
    user_id: uuid.UUID,
    model: str,
    plan: Plan,
    task_input: dict[str, Any],
    request_key: list[Any],
    parent_id: uuid.UUID | None = None,
    webhook: ClientWebhook | None = None,
) -> JSONResponse:
    """Charge, insert and answer 202 (or replay the task an Idempotency-Key already made).

    `request_key` is the request as the client sent it: the same key with a different request
    is a conflict, while a replay that would now be routed differently still matches.
    """
    rt: Runtime = request.app.state.runtime
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise ValidationFailed(
            details=[{"field": "Idempotency-Key", "message": "must be 1-255 characters"}]
        )
    canonical = json.dumps(request_key, sort_keys=True, separators=(",", ":"))
    trace_id = trace_id_from(
        request.headers.get("traceparent"), request.headers.get("x-request-id")
    )
    task, created = await accepting.accept(
        rt,
        user_id=user_id,
        model=model,
        plan=plan,
        task_input=task_input,
        key=key,
        request_hash=hashlib.sha256(canonical.encode()).digest(),
        trace_id=trace_id,
        parent_id=parent_id,
        webhook=webhook,
    )
    headers = {"Location": f"/v1/tasks/{task.public_id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(await render_task(task, rt.store), status_code=202, headers=headers)


def webhook_key(webhook: ClientWebhook | None) -> list[Any]:
    """The webhook's part of an idempotent request (nothing without one, so the keys of
    requests without a webhook stay what they were)."""
    return [] if webhook is None else [{"webhook": webhook.url, "events": list(webhook.events)}]
