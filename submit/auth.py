"""API keys: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import math
import secrets

from starlette.requests import Request

from db import queries
from db.models import User
from taskhook.errors import RateLimited, Unauthorized
from taskhook.runtime import Runtime

KEY_PREFIX = "thk_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # A fast hash is right here: keys are 256 random bits, not guessable passwords.
    return hashlib.sha256(key.encode()).digest()


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
