"""W3C Trace Context: a client's `traceparent` names the trace of its task's whole life.

The trace id is stored with the task; every log line about the task carries it (with task_id
and vendor), and every vendor call made for the task sends a `traceparent` of its own span, so
one id finds a task in our logs, the client's and the vendor's.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import structlog

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")

current_trace_id: ContextVar[str | None] = ContextVar("taskhook_trace_id", default=None)


def trace_id_from(traceparent: str | None, request_id: str | None = None) -> str:
    """The client's trace id when it sent a valid traceparent (or a 32-hex X-Request-ID),
    else a new one. All-zero ids are invalid per the spec."""
    match = _TRACEPARENT.match((traceparent or "").strip().lower())
    if match and match[1] != "0" * 32 and match[2] != "0" * 16:
        return match[1]
    candidate = (request_id or "").strip().lower()
    if _HEX32.match(candidate) and candidate != "0" * 32:
        return candidate
    return secrets.token_hex(16)


def outgoing_headers() -> dict[str, str]:
    """A `traceparent` for a call made on behalf of the current task: its trace, a new span."""
    trace_id = current_trace_id.get()
    if trace_id is None:
        return {}
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


@contextmanager
def task_context(*, task_id: str, vendor: str, trace_id: str) -> Iterator[None]:
    """Within the block, log lines carry the task and vendor calls carry its trace."""
    token = current_trace_id.set(trace_id)
    try:
        with structlog.contextvars.bound_contextvars(
            task_id=task_id, vendor=vendor, trace_id=trace_id
        ):
            yield
    finally:
        current_trace_id.reset(token)
