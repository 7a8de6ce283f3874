"""What every HTTP request gets on its way in and out: a request id, metrics, an access line.

The request id is the client's `X-Request-Id` when it sent a sane one, else a new one; it comes
back in the response's `X-Request-Id` and is bound to every log line written while the request
runs, so a client's report ("request 9f3c... failed") finds our lines.

Requests are counted by route *template* (`/v1/tasks/{task_id}`), never by raw path: ids and
callback tokens would make a time series each. Paths no route matched share `unmatched`.

This wraps the whole Starlette app, outside its error middleware, so it sees the 500 that
middleware renders. Starlette re-raises the error after rendering so that the server can log
it; the app's handler has logged it already, with the request id, so the error stops here
instead of being written a second time by uvicorn.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import metrics
from common.logs import current_request_id

log = structlog.get_logger()

HEADER = "x-request-id"
_RAW_HEADER = HEADER.encode()
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


# Request ids must be unique, not secret: a random prefix per process and a counter (a fifth
# of the cost of 16 random bytes per request), 32 hex digits like a trace id.
_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(1)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == _RAW_HEADER and _SANE_ID.fullmatch(value):
            return value.decode("ascii")
    return f"{_PREFIX}{next(_COUNTER):016x}"


class RequestMiddleware:
    """`routes` maps each route's endpoint (what Starlette's router puts in the scope) to its
    path template."""

    def __init__(self, app: ASGIApp, *, routes: Mapping[Any, str], access_log: bool) -> None:
        self.app = app
        self.routes = routes
        self.access_log = access_log
        # Bounded: methods x route templates x statuses.
        self._series: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        header = (_RAW_HEADER, request_id.encode("ascii"))
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        # A ContextVar of our own that the log renderer reads (common/logs.py): structlog's
        # bound_contextvars() copies the whole context twice (bench/RESULTS.md, "The request
        # layer's cost per request").
        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Logged by the app's handler (taskhook/app.py) whenever it reaches here; once a
            # response went out there is nothing left for the server to do with it.
            if not responded:
                raise
        finally:
            self._done(scope, status, time.perf_counter() - started, request_id)
            current_request_id.reset(token)

    def _done(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route = self.routes.get(scope.get("endpoint"), UNMATCHED)
        key = (method, route, status)
        child = self._series.get(key)
        if child is None:  # labels() takes a lock and builds a key: once per series is enough
            child = self._series[key] = metrics.HTTP_REQUESTS.labels(method, route, str(status))
        child.observe(seconds)
        if self.access_log:
            # The path without its query: an EventSource passes its API key as `?key=`.
            log.info(
                "http_request",
                method=method,
                path=scope["path"],
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 2),
                client=(scope.get("client") or ("", 0))[0],
            )
