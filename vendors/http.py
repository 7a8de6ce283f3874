"""What every vendor's HTTP API has in common, decided once.

Which failures are worth retrying, which of them prove the vendor created nothing (the only ones
after which a registration may fail over to another vendor: see submit.registration), and how
long a vendor may ask us to wait. Each adapter keeps what is its own: URLs, bodies, and what a
4xx means for its jobs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

from taskhook.errors import VendorUnavailable
from taskhook.tracing import outgoing_headers

# A vendor asking us to wait longer than this is treated as this: tasks have deadlines.
MAX_RETRY_AFTER = 3600.0


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    vendor: str,
    headers: Mapping[str, str],
    timeout: float,
    **kwargs: Any,
) -> httpx.Response:
    """The vendor's answer, whatever its status; VendorUnavailable when there was none."""
    try:
        return await client.request(
            method, url, headers={**headers, **outgoing_headers()}, timeout=timeout, **kwargs
        )
    except httpx.HTTPError as exc:
        raise VendorUnavailable(
            f"{vendor} unreachable: {exc!r}",
            # No connection was made, so the request cannot have created anything.
            not_accepted=isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout),
        ) from exc


def raise_for_transient(response: httpx.Response, *, vendor: str, credential: str) -> None:
    """Raise VendorUnavailable for an answer that says "not now" rather than "not this job"."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise VendorUnavailable(
            f"{vendor} answered {status}",
            retry_after=retry_after(response),
            throttled=status == 429,
            # 503 is the overload answer before any work; 500/502/504 may hide a created job.
            not_accepted=status == 503,
        )
    if status in (401, 403):
        # Our credentials, not the job: keep the task and let an operator fix them.
        raise VendorUnavailable(f"{vendor} refused our {credential} ({status})")


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
