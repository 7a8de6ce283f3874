"""Running the simulator on a real socket, inside the caller's event loop (see taskhook.serving)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette

from common.settings import FalSettings, MidjourneySettings, ReplicateSettings
from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.lifecycle import Simulator
from taskhook.serving import RunningApp, running_app


class RunningSimulator:
    """A simulator listening on ``url`` until :meth:`stop`."""

    def __init__(self, running: RunningApp) -> None:
        self.url = running.url
        self.app: Starlette = running.app
        self._running = running

    @property
    def simulator(self) -> Simulator:
        """The in-process state (stats, ``wait_idle``) behind the server."""
        sim: Simulator = self.app.state.simulator
        return sim

    def vendor_settings(self) -> dict[str, Any]:
        """Settings fields (``replicate``, ``fal``, ``midjourney``) that point taskhook at this
        simulator, each dialect on its own path, with the credentials it checks."""
        config = self.simulator.config
        return {
            "replicate": ReplicateSettings(
                api_token=config.api_token or "token",
                api_base=f"{self.url}/v1",
                webhook_secrets=(config.webhook_secret,),
            ),
            "fal": FalSettings(
                api_key=config.fal_key or "fal-key",
                queue_base=f"{self.url}/fal",
                jwks_url=f"{self.url}/fal/.well-known/jwks.json",
                api_base=f"{self.url}/fal-api/v1",
            ),
            "midjourney": MidjourneySettings(api_base=self.url, api_secret=config.mj_secret),
        }

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, finish open requests, run the app's shutdown."""
        await self._running.stop()


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Serve a fresh simulator app on ``host:port`` for the duration of the block."""
    async with running_app(create_app(config), host=host, port=port) as running:
        yield RunningSimulator(running)


async def serve(config: SimulatorConfig, *, host: str, port: int) -> None:
    """Run the simulator until this coroutine is cancelled, then shut down gracefully."""
    async with running_simulator(config, host=host, port=port):
        await asyncio.Event().wait()
