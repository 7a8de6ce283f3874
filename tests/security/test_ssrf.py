"""Issue 14.8: the SSRF guard was bypassed, and 14.10: its refusals were shown to clients.

(a) DNS rebinding: the output's host was resolved once for the check and again by httpx to
connect, so a name answering a public address and then 127.0.0.1 was downloaded from
127.0.0.1. (b) `::127.0.0.1`, `64:ff9b::7f00:1` and `::ffff:0:7f00:1` passed the check
(`is_global` is True for them). Each case below is a signed success webhook whose output URL
points at a real local server, through the running stack with private addresses refused (as
in production); the local server must never see a request, and the task's owner must see a
plain sentence, not the address. (Redirects are judged hop by hop by the same transport:
tests/unit/test_download.py, since a first hop on a public address cannot run here.)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from common.settings import Settings
from simulator import SimulatorConfig
from tests.acceptance.stack import Stack, running_stack
from tests.security.support import post_replicate_success, submit, wait_status

PUBLIC_IP = "93.184.216.34"
STORAGE_FAILED = {
    "code": "storage_failed",
    "message": "The job finished, but its result could not be saved.",
}


class Secret:
    """A loopback HTTP server standing in for an internal service: it answers with a PNG, so a
    download that reaches it would succeed, and it counts every connection."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        body = b"\x89PNG\r\n\x1a\nsecret"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> Secret:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
def strict(settings: Settings) -> Settings:
    return replace(
        settings, poll_after=0.5, registration_timeout=5.0, rate_limit=0, max_storage_attempts=2
    )


def refusing_private(settings: Settings, _sim_url: str) -> Settings:
    """Production's rule: outputs may not reach private addresses (the stack allows them for
    the simulator's own outputs, which these tests do not need)."""
    return replace(settings, allow_private_urls=False)


@pytest.fixture
async def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """`rebind.test` answers a public address to its first lookup and 127.0.0.1 after that;
    every other name resolves as usual. Installed on the running loop, where both the guard
    and httpx's own connection code ask."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    lookups: list[str] = []

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("rebind.test", b"rebind.test"):
            address = PUBLIC_IP if not lookups else "127.0.0.1"
            lookups.append(address)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    yield lookups


async def operator_view(stack: Stack, task_id: str) -> dict[str, Any]:
    """`taskhook tasks show ID --json`, run as an operator's script would."""
    assert stack.settings.database_url is not None
    env = {**os.environ, "DATABASE_URL": stack.settings.database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskhook.cli",
        "tasks",
        "show",
        task_id,
        "--json",  # for machines; people get fields and tables
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    shown: dict[str, Any] = json.loads(out)
    return shown


async def attack(stack: Stack, output: str) -> dict[str, Any]:
    async with await stack.client_for(credits=1) as client:
        task_id = await submit(client)
        r = await post_replicate_success(stack, task_id, [output])
        assert r.status_code == 200, r.text
        final = await wait_status(client, task_id, {"failed", "completed"}, timeout=60)
    return final


async def test_dns_rebinding_never_reaches_the_second_answer(
    strict: Settings, rebinding_dns: list[str]
) -> None:
    async with (
        Secret() as secret,
        running_stack(strict, SimulatorConfig(job_seconds=2), configure=refusing_private) as stack,
    ):
        final = await attack(stack, f"http://rebind.test:{secret.port}/out.png")
        assert final["status"] == "failed" and final["refunded"]
        assert final["error"] == STORAGE_FAILED
        assert secret.hits == 0
        # each attempt resolved the name once and used that answer: the first attempt went to
        # the public address (unreachable here), the second answer was refused, not used
        assert rebinding_dns[0] == PUBLIC_IP and "127.0.0.1" in rebinding_dns


@pytest.mark.parametrize(
    "host",
    ["[::127.0.0.1]", "[64:ff9b::7f00:1]", "[::ffff:0:7f00:1]", "[::ffff:127.0.0.1]"],
)
async def test_ipv4_inside_ipv6_is_judged_by_the_ipv4(strict: Settings, host: str) -> None:
    async with (
        Secret() as secret,
        running_stack(strict, SimulatorConfig(job_seconds=2), configure=refusing_private) as stack,
    ):
        final = await attack(stack, f"http://{host}:{secret.port}/out.png")
        assert final["status"] == "failed" and final["error"] == STORAGE_FAILED
        assert secret.hits == 0
        shown = await operator_view(stack, final["id"])
        assert "non-public" in shown["error"]["message"]  # operators see why; clients do not
