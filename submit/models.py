"""GET /v1/models: the model catalogue (lifecycle.catalogue), as clients and the page read it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from lifecycle.catalogue import catalogue
from lifecycle.runtime import Runtime
from submit.auth import current_user


async def list_models(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    await current_user(request)
    async with rt.pool.acquire() as conn:
        models = await catalogue(conn, rt.settings)
    return JSONResponse({"data": [m.as_dict() for m in models]})


__all__ = ["list_models"]
