"""What the outside review's cases share: a whole taskhook on sockets (tests/acceptance/stack.py),
a client submitting through the API, a vendor's signed webhook carrying whatever outputs an
attacker wants, and small real HTTP servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from common.ids import parse_task_id
from simulator.signing import new_webhook_id, webhook_headers
from tests.acceptance.stack import Stack, wait_for

MODEL = "black-forest-labs/flux-schnell"


async def submit(client: httpx.AsyncClient, prompt: str = "a red fox", **extra: Any) -> str:
    r = await client.post("/v1/tasks", json={"model": MODEL, "input": {"prompt": prompt, **extra}})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def task_of(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/tasks/{task_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def wait_status(
    client: httpx.AsyncClient, task_id: str, statuses: set[str], *, timeout: float
) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    async def reached() -> bool:
        latest.update(await task_of(client, task_id))
        return latest["status"] in statuses

    await wait_for(reached, timeout=timeout, what=f"{task_id} to be one of {sorted(statuses)}")
    return latest


async def vendor_task_id(stack: Stack, task_id: str) -> str:
    """The vendor's id of a task, once registration stored it."""
    uid = parse_task_id(task_id)
    found: list[str] = []

    async def registered() -> bool:
        async with stack.runtime.pool.acquire() as conn:
            value = await conn.fetchval("SELECT vendor_task_id FROM tasks WHERE id = $1", uid)
        if value:
            found.append(value)
        return bool(value)

    await wait_for(registered, timeout=20, what=f"{task_id} to be registered")
    return found[0]


async def post_replicate_success(stack: Stack, task_id: str, outputs: list[str]) -> httpx.Response:
    """A correctly signed Replicate `succeeded` webhook for the task's job, with `outputs`:
    what a vendor (or anyone holding its signing secret) can send."""
    job = await vendor_task_id(stack, task_id)
    uid = parse_task_id(task_id)
    assert uid is not None and stack.settings.vendor("replicate") is not None
    body = json.dumps(
        {"id": job, "status": "succeeded", "output": outputs, "logs": "", "error": None}
    ).encode()
    secret = stack.settings.vendor("replicate").webhook_secrets[0]
    headers = webhook_headers(secret, new_webhook_id(), body)
    url = stack.runtime.callback_url(task_id=uid, vendor="replicate")
    async with httpx.AsyncClient(timeout=30) as raw:
        return await raw.post(url, content=body, headers=headers)


@dataclass
class SlowFileServer:
    """A real HTTP server whose every answer declares a large PNG and then sends `chunk` bytes
    every `every` seconds until the client goes away (the review's trickling output URL)."""

    chunk: int = 1
    every: float = 0.5
    declared: int = 1_000_000
    connections: int = 0
    open_now: int = 0
    url: str = ""
    _server: asyncio.Server | None = field(default=None, repr=False)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self.connections += 1
        self.open_now += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                + f"Content-Length: {self.declared}\r\n\r\n".encode()
            )
            sent = 0
            while sent < self.declared:
                writer.write(b"\x89" * self.chunk)
                sent += self.chunk
                await writer.drain()
                await asyncio.sleep(self.every)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            self._handlers.discard(handler)
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SlowFileServer]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self._server.close()
            handlers = list(self._handlers)
            for handler in handlers:
                handler.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> float:
    """wait_for that returns how long it took."""
    started = time.monotonic()
    await wait_for(check, timeout=timeout, what=what)
    return time.monotonic() - started
