"""Request helpers shared by the client API and the webhook receiver."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from taskhook.errors import PayloadTooLarge, RequestInvalid, UnsupportedMediaType


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, refusing to read past `limit` bytes (a declared or an actual overflow)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
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
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid(f"The request body is not valid JSON: {exc}") from exc
