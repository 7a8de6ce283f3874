"""POST /v1/tasks/{id}/actions: upscale or vary a finished image, as a new task with its own charge.

The parent must have succeeded at its vendor. Our own record may lag behind the vendor (the
final callback was lost, or an unsigned vendor's callback is still being confirmed): rather
than refuse on stale local state — the `task_status_not_success` trap midjourney-proxy users
fall into — we ask the vendor first and decide on its answer.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import NotFound, ParentNotReady, ParentNotSucceeded, ValidationFailed
from common.http import read_json
from common.ids import parse_task_id
from common.states import SUCCEEDED, TaskStatus
from db import queries
from db.models import Task
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from lifecycle.confirm import refresh_from_vendor
from lifecycle.routing import Plan
from lifecycle.runtime import Runtime
from submit.accept import accept, webhook_key
from submit.auth import current_user
from vendors.base import VendorAdapter

# Actions that pick one image of the parent's grid; the others act on the whole job.
INDEXED = frozenset({"upscale", "variation"})
MAX_INDEX = 4


def _validate(
    body: Any, adapter: VendorAdapter | None, vendor: str, *, allow_private: bool
) -> tuple[dict[str, Any], ClientWebhook | None]:
    """The child's input ({"action", "index"?}) and webhook, or every problem at once."""
    if not isinstance(body, dict):
        raise ValidationFailed(details=[{"field": "", "message": "the body must be a JSON object"}])
    offered = sorted(adapter.actions) if adapter is not None else []
    problems = [
        {"field": name, "message": "unknown field"}
        for name in sorted(set(body) - {"action", "index", *client_webhooks.FIELDS})
    ]
    action = body.get("action")
    if not offered:
        problems.append({"field": "action", "message": f"{vendor} offers no follow-up actions"})
    elif action not in offered:
        problems.append({"field": "action", "message": f"must be one of: {', '.join(offered)}"})
    index = body.get("index")
    if action in INDEXED:
        if type(index) is not int or not 1 <= index <= MAX_INDEX:
            problems.append({"field": "index", "message": f"required: which image, 1-{MAX_INDEX}"})
    elif "index" in body:
        problems.append({"field": "index", "message": f"not used by {action!r}"})
    webhook, webhook_problems = client_webhooks.read_webhook(body, allow_private=allow_private)
    problems.extend(webhook_problems)
    if problems:
        raise ValidationFailed(details=problems)
    child = {"action": action, "index": index} if action in INDEXED else {"action": action}
    return child, webhook


async def _succeeded(rt: Runtime, parent: Task) -> Task:
    """The parent as its vendor sees it now; raises when there is nothing to act on (yet)."""
    if parent.status in (TaskStatus.SUBMITTED, TaskStatus.PROCESSING):
        parent = await refresh_from_vendor(rt, parent)
    if parent.status in SUCCEEDED:
        return parent
    if parent.status in (TaskStatus.FAILED, TaskStatus.CANCELED):
        raise ParentNotSucceeded(f"Task {parent.public_id} is {parent.status.value}.")
    raise ParentNotReady(
        f"Task {parent.public_id} has not finished at {parent.vendor} yet "
        f"(it is {parent.status.value}); try again when it completes."
    )


async def create_action(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    parent_id = parse_task_id(request.path_params["task_id"])
    body = await read_json(request, limit=rt.settings.max_body_bytes)
    parent = None
    if parent_id is not None:
        async with rt.pool.acquire() as conn:
            parent = await queries.get_task(conn, task_id=parent_id, user_id=user.id)
    if parent is None:
        raise NotFound("No task with this id belongs to you.")
    child_input, webhook = _validate(
        body,
        rt.vendors.get(parent.vendor),
        parent.vendor,
        allow_private=rt.settings.allow_private_urls,
    )
    parent = await _succeeded(rt, parent)
    return await accept(
        request,
        user_id=user.id,
        model=parent.model,
        # Same vendor as the parent (the job it acts on lives there) and the parent's price.
        plan=Plan(vendor=parent.vendor, vendor_model=parent.vendor_model, price=parent.cost),
        task_input=child_input,
        request_key=["action", parent.public_id, child_input, *webhook_key(webhook)],
        parent_id=parent.id,
        webhook=webhook,
    )
