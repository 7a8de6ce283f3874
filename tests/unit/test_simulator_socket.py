"""The simulator on a real TCP socket: ``running_simulator`` and ``serve``."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from simulator import SimulatorConfig, running_simulator, serve
from tests.ports import free_port

WAIT = 5.0


async def test_running_simulator_serves_api_files_and_webhooks_over_tcp() -> None:
    config = SimulatorConfig(
        job_seconds=0.02, steps=2, seed=1, api_token="r8_tok", time_scale=0.001
    )
    auth = {"authorization": "Bearer r8_tok"}
    async with running_simulator(config) as running, httpx.AsyncClient(headers=auth) as client:
        assert running.url.startswith("http://127.0.0.1:")
        # The webhook target is a GET-only route of the simulator itself: the app's own
        # httpx client really POSTs over TCP, gets a 405, and retries only the final webhook
        # (as Replicate does after a 4xx), on a clock shrunk to milliseconds.
        hook = f"{running.url}/_sim/stats"
        created = await client.post(
            f"{running.url}/v1/models/acme/painter/predictions",
            json={"input": {"prompt": "a lighthouse"}, "webhook": hook},
        )
        assert created.status_code == 201
        body = created.json()
        assert body["urls"]["get"] == f"{running.url}/v1/predictions/{body['id']}"

        async with asyncio.timeout(WAIT):
            await running.simulator.wait_idle()
        final = (await client.get(body["urls"]["get"])).json()
        assert final["status"] == "succeeded"
        image = await client.get(final["output"][0])
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n")

        stats = (await client.get(f"{running.url}/_sim/stats")).json()
        assert stats["webhooks"]["messages"] == 5  # start, 2 logs, output, completed
        assert stats["webhooks"]["failed_deliveries"] == 5
        assert stats["webhooks"]["retried"] == 6
        assert stats["webhooks"]["sent"] == 5 + 6
        url = running.url

    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{url}/_sim/stats")


async def test_serve_runs_until_cancelled() -> None:
    port = free_port()
    task = asyncio.create_task(serve(SimulatorConfig(), host="127.0.0.1", port=port))
    url = f"http://127.0.0.1:{port}/_sim/stats"
    async with httpx.AsyncClient() as client, asyncio.timeout(WAIT):
        while True:  # wait for the listener (a condition, bounded by the timeout)
            try:
                response = await client.get(url)
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.01)
    assert response.status_code == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_bind_failure_is_an_os_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with running_simulator(SimulatorConfig(), port=port):
                pass
