"""A client's webhook endpoint for tests: a real HTTP server on 127.0.0.1 that records what
it receives and answers as a test scripts it (a status, a delay, or no answer at all), and
can be down (its port refuses connections) and come up again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Reply:
    status: int = 200
    delay: float = 0.0  # seconds before answering (longer than the sender waits: a timeout)
    body: bytes = b"ok"


@dataclass
class WebhookReceiver:
    """`script` answers requests in order (then `default`); `received` lists every request
    whose body arrived, answered or not."""

    default: Reply = field(default_factory=Reply)
    script: list[Reply] = field(default_factory=list)
    decide: Callable[[Received], Reply | None] | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _serving: asyncio.Task[None] | None = None
    _holder: socket.socket | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: Request) -> Response:
        got = Received(dict(request.headers), await request.body(), request.url.path)
        self.received.append(got)
        async with self._changed:
            self._changed.notify_all()
        reply = (self.decide(got) if self.decide else None) or (
            self.script.pop(0) if self.script else self.default
        )
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return Response(reply.body, status_code=reply.status)

    def reserve(self) -> None:
        """Take a port that refuses connections until `start` (the endpoint is down)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._holder = sock

    async def start(self) -> None:
        if self._holder is None:
            self.reserve()
        assert self._holder is not None
        sock, self._holder = self._holder, None
        sock.listen(128)
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=1)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        await eventually(lambda: _true(self._server and self._server.started), timeout=10)

    async def stop(self) -> None:
        """Down: the server closes, the port is held again and refuses connections."""
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
            self._server = self._serving = None
        self.reserve()

    async def close(self) -> None:
        await self.stop()
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    async def wait_for(self, predicate: Callable[[list[Received]], Any], timeout: float) -> None:
        """Until `predicate(received)` holds (a condition, not a sleep)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.received))


async def _true(value: Any) -> bool:
    return bool(value)


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float, what: str = "condition"
) -> Any:
    """Poll a condition until it holds (its value is returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
