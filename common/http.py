"""Request helpers shared by the client API and the webhook receiver."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from common.errors import PayloadTooLarge, RequestInvalid, UnsupportedMediaType


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, refusing to read past `limit` bytes (a declared or an actual overflow)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, limit: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType()
    body = await read_body(request, limit=limit)
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise RequestInvalid("The request body is nested too deeply.") from exc
    problem = _unstorable(value)
    if problem:
        raise RequestInvalid(f"The request body is not valid JSON: {problem}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unstorable(value: Any) -> str | None:
    """What strict JSON (and PostgreSQL's jsonb) refuses but Python's parser lets through:
    NUL characters, lone surrogates and numbers too large for a double."""
    if isinstance(value, str):
        if "\x00" in value:
            return "strings may not contain \\u0000"
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            return "strings may not contain lone surrogates"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable(key) or _unstorable(item)
            if problem:
                return problem
    if isinstance(value, list):
        for item in value:
            problem = _unstorable(item)
            if problem:
                return problem
    return None
