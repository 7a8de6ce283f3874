"""A whole taskhook on sockets: simulator, web app, worker and reconciler, in the test's loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx

from common.settings import Settings
from lifecycle.reconcile import run_reconciler
from lifecycle.runtime import Runtime
from lifecycle.users import create_user
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from taskhook.app import create_app
from taskhook.demo import simulator_settings
from taskhook.runtime import open_runtime
from taskhook.serving import bind, running_app, url_for
from taskhook.worker import Worker

TERMINAL = {"completed", "failed", "canceled"}


@dataclass
class Stack:
    url: str
    runtime: Runtime  # the worker's and reconciler's
    sim: RunningSimulator
    settings: Settings
    web: Any = None  # the web app (its own runtime: `web.state.runtime`)

    @property
    def web_runtime(self) -> Runtime:
        runtime: Runtime = self.web.state.runtime
        return runtime

    async def client_for(self, *, credits: int, email: str | None = None) -> httpx.AsyncClient:
        async with self.runtime.pool.acquire() as conn:
            _, key = await create_user(
                conn, email=email or f"u{time.monotonic_ns()}@t.test", credits=credits
            )
        # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout: with
        # both at 5 s, a request sent on a connection the server was closing that instant
        # failed with ReadError (seen once in test_every_fault_at_once on a loaded machine).
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=30,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(keepalive_expiry=2.0),
        )


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str = "condition"
) -> None:
    """Poll a condition until true; fail loudly with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_all_terminal(
    client: httpx.AsyncClient, ids: list[str], *, timeout: float
) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}

    async def check() -> bool:
        open_ids = [i for i in ids if latest.get(i, {}).get("status") not in TERMINAL]
        for r in await asyncio.gather(*(client.get(f"/v1/tasks/{i}") for i in open_ids)):
            assert r.status_code == 200, r.text
            latest[r.json()["id"]] = r.json()
        return all(latest.get(i, {}).get("status") in TERMINAL for i in ids)

    try:
        await wait_for(check, timeout=timeout, what="every task to be terminal")
    except AssertionError as exc:
        # A refused read (`check`'s own assertion) is not a timeout: say which it was.
        stuck = {i: t["status"] for i, t in latest.items() if t["status"] not in TERMINAL}
        raise AssertionError(f"{exc}; tasks still open: {stuck}") from None
    return latest


@asynccontextmanager
async def running_stack(
    settings: Settings,
    sim_config: SimulatorConfig,
    *,
    reconcile_interval: float = 0.2,
    configure: Callable[[Settings, str], Settings] | None = None,
) -> AsyncIterator[Stack]:
    """`configure(settings, simulator_url)` adjusts the settings once the simulator listens."""
    sock = bind("127.0.0.1", 0)
    url = url_for(sock)
    async with running_simulator(sim_config) as sim:
        settings = replace(
            settings,
            public_url=url,
            allow_private_urls=True,
            # The tests' own polling (wait_all_terminal: every open task, every 50 ms) is no
            # client's traffic: the per-user limit (tested in test_limits) would refuse it.
            rate_limit=0,
            vendor_settings=simulator_settings(sim),
        )
        if configure is not None:
            settings = configure(settings, sim.url)
        stop = asyncio.Event()
        web = create_app(settings)
        async with (
            running_app(web, sock=sock, limits=settings.server),
            open_runtime(settings) as rt,
        ):
            background = [
                asyncio.create_task(Worker(rt, idle_poll=0.1).run(stop)),
                asyncio.create_task(run_reconciler(rt, stop, interval=reconcile_interval)),
            ]
            try:
                yield Stack(url=url, runtime=rt, sim=sim, settings=settings, web=web)
            finally:
                stop.set()
                await asyncio.gather(*background, return_exceptions=True)
