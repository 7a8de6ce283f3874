"""Running the simulator on a real socket, inside the caller's event loop.

The simulator stands apart from the product (it imports none of it: it plays the vendors, and
a vendor knows nothing of us), so it drives uvicorn's ``Server`` itself, as taskhook/serving.py
does for the product: the socket bound here (port 0: the OS picks a free one; a bind failure is
a normal ``OSError``), no signal handlers (the host process owns those), uvicorn kept quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette

from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.lifecycle import Simulator

_STARTUP_POLL_SECONDS = 0.01


class _QuietServer(uvicorn.Server):
    """uvicorn without its SIGINT/SIGTERM handlers: the host process owns those."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _url_for(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding to it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class RunningSimulator:
    """A simulator listening on ``url`` until :meth:`stop`."""

    def __init__(
        self, *, url: str, app: Starlette, server: uvicorn.Server, task: asyncio.Task[None]
    ) -> None:
        self.url = url
        self.app = app
        self._server = server
        self._task = task

    @property
    def simulator(self) -> Simulator:
        """The in-process state (stats, ``wait_idle``) behind the server."""
        sim: Simulator = self.app.state.simulator
        return sim

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, finish open requests, run the app's shutdown."""
        self._server.should_exit = True
        await asyncio.shield(self._task)


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits the process on startup failure; we must not
        raise RuntimeError(f"simulator failed to start (exit code {exc.code})") from None


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve a fresh simulator app on ``host:port`` for the duration of the block."""
    sock = _bind(host, port)
    app = create_app(config)
    server = _QuietServer(
        uvicorn.Config(
            app,
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
                raise RuntimeError("simulator stopped during startup")
            await asyncio.sleep(_STARTUP_POLL_SECONDS)
    except BaseException:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        sock.close()
        raise
    running = RunningSimulator(url=_url_for(sock), app=app, server=server, task=task)
    try:
        yield running
    finally:
        await running.stop()


async def serve(config: SimulatorConfig, *, host: str, port: int) -> None:
    """Run the simulator until this coroutine is cancelled, then shut down gracefully."""
    async with running_simulator(config, host=host, port=port):
        await asyncio.Event().wait()
