"""The web server's limits on what one client may hold (issue 14.6).

uvicorn offers a keep-alive timeout and `limit_concurrency`, but with httptools it has no
deadline for a request's headers or body and no cap on the headers' size: a client sending one
header line or body byte every 10 s kept its connection for ever, a 20 MB header was read in
full, and enough idle sockets made the server refuse `/hooks`. Its `limit_concurrency` would
make that worse: it counts idle connections too and answers real requests 503 once they are
many. So the server runs uvicorn with this protocol (a subclass of its httptools one) and this
middleware:

* headers must be complete `header_timeout` seconds after the connection opened (or after the
  previous response), and be at most `max_header_bytes` (408 / 431, then closed);
* the body must be complete `body_timeout` seconds after the headers (408, then closed);
* past `max_connections` open connections, the one that has waited longest without sending a
  request is closed, so idle sockets can never crowd out a vendor's webhook;
* past `max_requests` requests in flight, a request is answered 503 `unavailable` at once.

The answers are the API's JSON errors, with `Connection: close`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from common.settings import ServerLimits

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _error_response(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
    ) + body


def guarded_protocol(limits: ServerLimits) -> Any:
    """What uvicorn's `http` option takes: a factory of the guarded protocol (a partial of a
    module-level class, so it pickles for `--workers`)."""
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for headers and body, a header size cap and
    shedding of idle connections (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.timeout_keep_alive = limits.keepalive_timeout  # type: ignore[assignment]
        self._in_head = True  # waiting for (the rest of) a request's headers
        self._heads = 0  # request heads completed on this connection
        self._head_bytes = 0
        self._idle_since = self.loop.time()
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        if len(self.connections) > self.limits.max_connections:
            self._shed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head, heads = self._in_head, self._heads
        super().data_received(data)
        if in_head and self._heads == heads and not self.transport.is_closing():
            # No head completed in this chunk: all of it was header bytes.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(
                    431,
                    "headers_too_large",
                    f"Request headers may be at most {self.limits.max_header_bytes} bytes.",
                )

    # -- parser callbacks ----------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head = True  # whatever comes next is the next request's head
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:
            # Idle again (no pipelined request started): the next head has its deadline.
            self._await_head()

    # -- limits --------------------------------------------------------------------------------

    def _await_head(self) -> None:
        self._idle_since = self.loop.time()
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(
                408,
                "request_timeout",
                f"Request headers must arrive within {self.limits.header_timeout:g} s.",
            )

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if not self._in_head and not self.transport.is_closing():
            self._refuse(
                408,
                "request_timeout",
                f"The request body must arrive within {self.limits.body_timeout:g} s.",
            )

    def _waiting(self) -> bool:
        """Holding a connection without a request in progress."""
        return self._in_head and (self.cycle is None or self.cycle.response_complete)

    def _shed(self) -> None:
        """Over the connection cap: close the connection that has waited longest without a
        request (this new one, when no other is idle)."""
        idle = [
            c
            for c in self.connections
            if isinstance(c, GuardedHttpToolsProtocol)
            and c._waiting()
            and not c.transport.is_closing()
        ]
        victim = min(idle, key=lambda c: c._idle_since, default=self)
        victim.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer (when no response is under way) and close the connection."""
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(_error_response(status, code, message))
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


class InFlightLimit:
    """ASGI middleware: at most `limit` requests in flight in this process; more are answered
    503 `unavailable` with Retry-After at once, instead of queueing without bound."""

    def __init__(self, app: Any, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            body = json.dumps(
                {
                    "error": {
                        "code": "unavailable",
                        "message": "The server is at its limit of requests; retry shortly.",
                    }
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
