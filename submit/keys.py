"""Self-service API keys: POST/GET /v1/keys, DELETE /v1/keys/{key_id} (issue 17.2).

A key is shown whole only in the answer that created it; lists show its prefix. Revoking is
effective at once on every process (see lifecycle.accounts).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.api_keys import hash_api_key
from common.errors import NotFound
from common.times import iso_time
from db import accounts_queries
from db.accounts_queries import ApiKey, parse_key_id
from lifecycle.runtime import Runtime
from lifecycle.user_accounts import create_key, revoke_key
from submit.auth import current_user, presented_key


def render_key(key: ApiKey, *, current: bool) -> dict[str, Any]:
    return {
        "id": key.public_id,
        "prefix": key.prefix,
        "created_at": iso_time(key.created_at),
        "revoked_at": iso_time(key.revoked_at),
        "current": current,  # the key this request was made with
    }


async def create(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    async with rt.pool.acquire() as conn:
        made, key = await create_key(conn, user_id=user.id)
    return JSONResponse(
        {**render_key(made, current=False), "api_key": key},
        status_code=201,
        headers={"Location": f"/v1/keys/{made.public_id}"},
    )


async def listing(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    key_hash = hash_api_key(presented_key(request))
    async with rt.pool.acquire() as conn:
        keys = await accounts_queries.list_api_keys(conn, user_id=user.id)
        mine = await accounts_queries.key_of_hash(conn, key_hash=key_hash)
    return JSONResponse({"data": [render_key(k, current=k.id == mine) for k in keys]})


async def revoke(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    user = await current_user(request)
    key_id = parse_key_id(request.path_params["key_id"])
    if key_id is None:
        raise NotFound("No API key with this id belongs to you.")
    key_hash = hash_api_key(presented_key(request))
    async with rt.pool.acquire() as conn:
        revoked = await revoke_key(conn, key_id=key_id, user_id=user.id)
        mine = await accounts_queries.key_of_hash(conn, key_hash=key_hash)
    return JSONResponse(render_key(revoked, current=revoked.id == mine))


routes = [
    Route("/v1/keys", create, methods=["POST"]),
    Route("/v1/keys", listing, methods=["GET"]),
    Route("/v1/keys/{key_id}", revoke, methods=["DELETE"]),
]

__all__ = ["render_key", "routes"]
