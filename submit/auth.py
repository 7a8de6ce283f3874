"""Who is calling: the API key of a request (common/api_keys.py), and the per-user rate limit."""

from __future__ import annotations

import math

from starlette.requests import Request

from common.api_keys import hash_api_key
from common.errors import RateLimited, Unauthorized
from db import queries
from db.models import User
from lifecycle.runtime import Runtime


def presented_key(request: Request, *, allow_query_key: bool = False) -> str:
    """The API key the request carries (Bearer, or `?key=` where allowed), else Unauthorized."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header and allow_query_key and request.query_params.get("key"):
        scheme, key = "bearer", request.query_params["key"]
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized()
    return key.strip()


async def current_user(request: Request, *, allow_query_key: bool = False) -> User:
    """The key's user, read from the database on every request: a revoked key is refused at
    once by every process (no cache outlives a revocation)."""
    key = presented_key(request, allow_query_key=allow_query_key)
    rt: Runtime = request.app.state.runtime
    limit = rt.settings.rate_limit
    async with rt.pool.acquire() as conn:
        found = await queries.authenticate(conn, key_hash=hash_api_key(key), rate_limit=limit)
    if found is None:
        raise Unauthorized("The API key is not valid.")
    user, hits, window_left = found
    if limit and hits is not None and hits > limit:
        raise RateLimited(
            f"More than {limit} requests this minute.",
            retry_after=max(1, math.ceil(window_left or 0)),
        )
    return user
