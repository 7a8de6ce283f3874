"""What every vendor's HTTP API has in common, decided once.

Which failures are worth retrying, which of them prove the vendor created nothing (the only ones
after which a registration may fail over to another vendor: see submit.registration), and how
long a vendor may ask us to wait. Each adapter keeps what is its own: URLs, bodies, and what a
4xx means for its jobs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from common.errors import VendorUnavailable
from common.tracing import outgoing_headers

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


def raise_for_transient(
    response: httpx.Response,
    *,
    vendor: str,
    credential: str,
    wait: Callable[[httpx.Response], float | None] | None = None,
) -> None:
    """Raise VendorUnavailable for an answer that says "not now" rather than "not this job".

    `wait` reads how long the vendor wants us to stay away when its answer says so in its own
    words (Replicate's 429 body); the standard headers are read first (`retry_after`).
    """
    status = response.status_code
    if status == 429 or status >= 500:
        seconds = retry_after(response)
        if seconds is None and wait is not None:
            seconds = wait(response)
        raise VendorUnavailable(
            f"{vendor} answered {status}",
            retry_after=seconds,
            throttled=status == 429,
            # 503 is the overload answer before any work; 500/502/504 may hide a created job.
            not_accepted=status == 503,
        )
    if status in (401, 403):
        # Our credentials, not the job: keep the task and let an operator fix them.
        raise VendorUnavailable(f"{vendor} refused our {credential} ({status})")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the vendor asks us to wait: `Retry-After` (RFC 9110, seconds), else on a 429 the
    `RateLimit-Reset` of the IETF RateLimit fields draft, which Replicate sends instead
    (`ratelimit-reset`, seconds until its window refills; no Retry-After at all)."""
    seconds = seconds_in(response.headers.get("retry-after"))
    if seconds is None and response.status_code == 429:
        seconds = seconds_in(response.headers.get("ratelimit-reset"))
    return seconds


def seconds_in(value: str | None) -> float | None:
    """A header's number of seconds, within [0, MAX_RETRY_AFTER]; None when unreadable."""
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
