"""Running the simulator on a real socket, inside the caller's event loop.

``taskhook demo`` and the end-to-end tests need the vendor reachable over TCP next to the rest
of taskhook in one process, so we drive uvicorn's ``Server`` directly rather than ``uvicorn.run``.
We bind the socket ourselves (port 0 → the OS picks a free one, and a bind failure is a normal
``OSError`` instead of uvicorn's ``sys.exit``), leave signal handling and logging setup to the
host process, and keep uvicorn quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette

from vendors.simulator.app import create_app
from vendors.simulator.config import SimulatorConfig
from vendors.simulator.lifecycle import Simulator

_STARTUP_POLL_SECONDS = 0.01


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its SIGINT/SIGTERM handlers: the host process owns those."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding to it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits the process on startup failure; we must not
        raise RuntimeError(f"simulator server failed to start (exit code {exc.code})") from None


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve a fresh simulator app on ``host:port`` for the duration of the block."""
    app = create_app(config)
    sock = _bind(host, port)
    server = _EmbeddedServer(
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
                raise RuntimeError("simulator server stopped during startup")
            await asyncio.sleep(_STARTUP_POLL_SECONDS)
    except BaseException:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        sock.close()
        raise
    running = RunningSimulator(
        url=_url(host, sock.getsockname()[1]), app=app, server=server, task=task
    )
    try:
        yield running
    finally:
        await running.stop()


async def serve(config: SimulatorConfig, *, host: str, port: int) -> None:
    """Run the simulator until this coroutine is cancelled, then shut down gracefully."""
    async with running_simulator(config, host=host, port=port):
        await asyncio.Event().wait()
