"""Serving an ASGI app on a real socket inside the caller's event loop.

The demo and the end-to-end tests run the web app and the vendor simulator next to a worker and
a reconciler in one process, so we drive uvicorn's ``Server`` directly rather than
``uvicorn.run``. We bind the socket ourselves (port 0 → the OS picks a free one, and a bind
failure is a normal ``OSError`` instead of uvicorn's ``sys.exit``), leave signal handling and
logging setup to the host process, and keep uvicorn quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

from common.settings import ServerLimits
from taskhook.slow_clients import InFlightLimit, guarded_protocol

_STARTUP_POLL_SECONDS = 0.01


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its SIGINT/SIGTERM handlers: the host process owns those."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RunningApp:
    """An app listening on ``url`` until :meth:`stop`."""

    def __init__(
        self, *, url: str, app: Any, server: uvicorn.Server, task: asyncio.Task[None]
    ) -> None:
        self.url = url
        self.app = app
        self._server = server
        self._task = task

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, finish open requests, run the app's shutdown."""
        self._server.should_exit = True
        await asyncio.shield(self._task)


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """`reuse_port`: several processes may bind the same port (the kernel spreads
    connections among them), as the processes of one `taskhook serve` do for metrics."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets whose proto says TCP;
    # with proto 0 every response on a reused connection waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding to it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits the process on startup failure; we must not
        raise RuntimeError(f"server failed to start (exit code {exc.code})") from None


def limited(app: Any, limits: ServerLimits) -> dict[str, Any]:
    """uvicorn options for a web process under `limits` (taskhook/slow_clients.py): the
    guarded protocol, the keep-alive timeout and the app behind the in-flight cap."""
    return {
        "app": InFlightLimit(app, limit=limits.max_requests),
        "http": guarded_protocol(limits),
        "timeout_keep_alive": limits.keepalive_timeout,
    }


@contextlib.asynccontextmanager
async def running_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    limits: ServerLimits | None = None,
) -> AsyncIterator[RunningApp]:
    """Serve ``app`` for the duration of the block (on ``sock`` when the caller bound one
    already, e.g. because the app must know its own URL before it is built), under the web
    process's client `limits` when given (taskhook's own app; the simulator goes without)."""
    sock = sock or bind(host, port)
    options: dict[str, Any] = {"app": app} if limits is None else limited(app, limits)
    server = _EmbeddedServer(
        uvicorn.Config(
            **options,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    task = asyncio.create_task(_serve(server, sock))
    try:
        while not server.started:
            if task.done():
                await task  # re-raises the startup failure
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(_STARTUP_POLL_SECONDS)
    except BaseException:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        sock.close()
        raise
    running = RunningApp(url=url_for(sock), app=app, server=server, task=task)
    try:
        yield running
    finally:
        await running.stop()
