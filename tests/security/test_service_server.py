"""Issue 14.6: slow clients held the server.

`taskhook serve` (uvicorn defaults) kept connections that sent one header line or body byte
every 10 s, read a 20 MB header, and 220 idle sockets made it refuse `/hooks`. Driven here
with raw sockets against the web app served as `serve` serves it (taskhook.serving with the
settings' ServerLimits), while a vendor's webhook must still be answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import asyncpg
import httpx
import pytest

from common.settings import ServerLimits
from lifecycle.runtime import Runtime
from simulator.signing import new_webhook_id, webhook_headers
from taskhook.app import create_app
from taskhook.serving import running_app
from tests.conftest import TEST_WEBHOOK_SECRET, S3Config
from tests.factories import make_task, make_user
from tests.ports import free_port

Conn = asyncpg.Connection

LIMITS = ServerLimits(
    header_timeout=1.0, body_timeout=1.0, max_header_bytes=8 * 1024, max_connections=40
)


@asynccontextmanager
async def serving(runtime: Runtime, limits: ServerLimits) -> AsyncIterator[tuple[str, int]]:
    settings = replace(runtime.settings, server=limits)
    async with running_app(create_app(settings, runtime=runtime), limits=limits) as running:
        host, port = running.url.removeprefix("http://").split(":")
        yield host, int(port)


@pytest.fixture
async def served(runtime: Runtime) -> AsyncIterator[tuple[str, int]]:
    async with serving(runtime, LIMITS) as address:
        yield address


async def hook_answers(runtime: Runtime, conn: Conn, address: tuple[str, int]) -> int:
    """A vendor's signed webhook for a live task, sent on a fresh connection: its status."""
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    body = json.dumps({"id": f"p{uuid.uuid4().hex[:8]}", "status": "processing"}).encode()
    path = runtime.callback_url(task_id=task_id, vendor="replicate").removeprefix(
        "http://testserver"
    )
    headers = webhook_headers(TEST_WEBHOOK_SECRET, new_webhook_id(), body)
    async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as client:
        r = await client.post(path, content=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.status_code


async def read_answer(reader: asyncio.StreamReader, *, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout=timeout)


async def test_trickled_headers_are_cut_off(
    served: tuple[str, int], runtime: Runtime, conn: Conn
) -> None:
    reader, writer = await asyncio.open_connection(*served)
    writer.write(b"POST /hooks/replicate/x HTTP/1.1\r\nHost: t\r\n")

    async def trickle() -> None:
        for n in range(100):
            writer.write(f"X-Slow-{n}: 1\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(trickle())
    try:
        assert await hook_answers(runtime, conn, served) == 200  # meanwhile
        answer = await read_answer(reader, timeout=10)
    finally:
        sender.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"request_timeout"' in answer


async def test_a_trickled_body_is_cut_off(
    served: tuple[str, int], runtime: Runtime, conn: Conn
) -> None:
    reader, writer = await asyncio.open_connection(*served)
    writer.write(
        b"POST /hooks/replicate/x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )

    async def trickle() -> None:
        for _ in range(100):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(trickle())
    try:
        assert await hook_answers(runtime, conn, served) == 200
        answer = await read_answer(reader, timeout=10)
    finally:
        sender.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_oversized_headers_are_answered_431(served: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*served)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (9 * 1024))
        await writer.drain()
        answer = await read_answer(reader, timeout=10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"headers_too_large"' in answer


async def test_a_20_mb_header_is_not_read(
    served: tuple[str, int], runtime: Runtime, conn: Conn
) -> None:
    """The review's 20 MB header: the server stops reading and closes long before the end."""
    _reader, writer = await asyncio.open_connection(*served)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
    sent = 0
    try:
        for _ in range(20 * 1024):
            writer.write(b"a" * 1024)
            await asyncio.wait_for(writer.drain(), timeout=5)
            sent += 1024
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
    assert sent < 4 * 1024 * 1024  # the cap plus what socket buffers held
    assert await hook_answers(runtime, conn, served) == 200


async def test_idle_sockets_never_crowd_out_a_webhook(runtime: Runtime, conn: Conn) -> None:
    """Five times the connection cap in idle sockets (the header deadline far away): the
    oldest idle ones are closed to make room, and the vendor's webhook is answered."""
    limits = replace(LIMITS, header_timeout=60.0)
    async with serving(runtime, limits) as address:
        idle = [await asyncio.open_connection(*address) for _ in range(5 * limits.max_connections)]
        try:
            assert await hook_answers(runtime, conn, address) == 200

            async def closed(reader: asyncio.StreamReader) -> bool:
                try:
                    await asyncio.wait_for(reader.read(), timeout=0.5)
                except TimeoutError:
                    return False
                return True

            shut = [await closed(reader) for reader, _ in idle]
        finally:
            for _, writer in idle:
                writer.close()
    extra = len(idle) - limits.max_connections
    assert all(shut[:extra])  # the oldest went first...
    assert not any(shut[-limits.max_connections // 2 :])  # ...the newest stayed


async def test_an_idle_connection_is_closed_after_the_header_timeout(
    served: tuple[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(*served)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        answer = await read_answer(reader, timeout=10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b""
    assert loop.time() - started < 5


def test_taskhook_serve_runs_with_these_limits(db_url: str, s3: S3Config, tmp_path: Path) -> None:
    """`taskhook serve` itself (two uvicorn worker processes, so the limits travel to them):
    an idle connection gets its 408 at TASKHOOK_HEADER_TIMEOUT, a large head its 431."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path),
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "AWS_REGION": s3.region,
        "TASKHOOK_SECRET": "x" * 48,
        "TASKHOOK_ADMIN_KEY": "y" * 48,
        "TASKHOOK_HEADER_TIMEOUT": "1",
        "TASKHOOK_MAX_HEADER_BYTES": "8192",
    }
    command = ["serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "taskhook.cli", *command], env=env)  # noqa: S603
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "taskhook serve exited"
            assert time.monotonic() < deadline, "taskhook serve did not answer in 60 s"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            started = time.monotonic()
            answer = idle.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as big:
            big.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000)
            assert big.recv(4096).startswith(b"HTTP/1.1 431 ")
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) in (0, 143)


async def test_a_large_body_is_not_mistaken_for_large_headers(
    served: tuple[str, int], conn: Conn
) -> None:
    """Headers and a whole body four times the header cap in one write: read as a body."""
    _, key = await make_user(conn, credits=1)
    body = json.dumps(
        {"model": "a/b", "input": {"prompt": "x" * (4 * LIMITS.max_header_bytes)}}
    ).encode()
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(*served)
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await read_answer(reader, timeout=10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]
