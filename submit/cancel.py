"""POST /v1/tasks/{id}/cancel: who asks, which task, the answer (lifecycle/cancel.py cancels)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from common.ids import parse_task_id
from lifecycle.cancel import cancel
from lifecycle.runtime import Runtime
from submit.auth import current_user
from submit.render import render_task


async def cancel_task(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    task = await cancel(rt, task_id=parse_task_id(request.path_params["task_id"]), user_id=user.id)
    return JSONResponse(await render_task(task, rt.store))
