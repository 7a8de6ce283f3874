"""Issue 14.5: unlimited outputs.

A signed success with 3,000 output URLs stored 3,000 S3 objects for one credit, and every
`GET /v1/tasks/{id}` then signed 3,000 URLs on the event loop. Now a task keeps at most
TASKHOOK_MAX_OUTPUTS files and TASKHOOK_MAX_OUTPUT_BYTES in all: over either, it fails with
`output_limit_exceeded` (refunded) and nothing more is downloaded; result URLs are signed off
the event loop and remembered.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import asyncpg
import httpx
import pytest

from common.ids import format_task_id
from common.settings import Settings
from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from simulator import SimulatorConfig
from simulator.png import gradient_png
from tests.acceptance.stack import running_stack
from tests.factories import make_task, make_user
from tests.security.support import post_replicate_success, submit, wait_status

Conn = asyncpg.Connection

LIMIT = {
    "code": "output_limit_exceeded",
    "message": "The job produced more files or bytes than one task may keep.",
}


class Files:
    """A loopback file server: every path is a PNG of `size` bytes; counts requests."""

    def __init__(self, size: int) -> None:
        self.body = gradient_png("x", 0, "x")
        self.body += b"\x00" * max(0, size - len(self.body))
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n"
            + f"Content-Length: {len(self.body)}\r\n\r\n".encode()
            + self.body
        )
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> Files:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return replace(settings, poll_after=0.5, registration_timeout=5.0, rate_limit=0)


async def stored_objects(rt: Runtime, task_id: str) -> int:
    listing = await asyncio.to_thread(
        rt.store._client.list_objects_v2,
        Bucket=rt.store.bucket,
        Prefix=f"results/{task_id.removeprefix('tsk_')}/",
    )
    return int(listing["KeyCount"])


async def test_three_thousand_outputs_are_refused_without_a_download(fast: Settings) -> None:
    async with (
        Files(size=100) as files,
        running_stack(fast, SimulatorConfig(job_seconds=2)) as stack,
    ):
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client)
            outputs = [f"{files.url}/{n}.png" for n in range(3000)]
            r = await post_replicate_success(stack, task_id, outputs)
            assert r.status_code == 200, r.text
            final = await wait_status(client, task_id, {"failed", "completed"}, timeout=30)
            assert final["status"] == "failed" and final["refunded"]
            assert final["error"] == LIMIT
            assert (await client.get("/v1/me")).json()["credits"] == 1
        assert files.requests == 0
        assert await stored_objects(stack.runtime, task_id) == 0


async def test_outputs_over_the_byte_cap_fail_the_task(fast: Settings) -> None:
    settings = replace(fast, max_output_bytes=150_000)
    async with (
        Files(size=100_000) as files,
        running_stack(settings, SimulatorConfig(job_seconds=2)) as stack,
    ):
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client)
            r = await post_replicate_success(
                stack, task_id, [f"{files.url}/{n}.png" for n in (0, 1)]
            )
            assert r.status_code == 200, r.text
            final = await wait_status(client, task_id, {"failed", "completed"}, timeout=30)
            assert final["status"] == "failed" and final["error"] == LIMIT
            assert final["refunded"]
        assert files.requests == 2  # the second file was cut off at the cap, and not retried


async def test_outputs_up_to_the_cap_are_all_stored(fast: Settings) -> None:
    settings = replace(fast, max_outputs=5)
    async with (
        Files(size=2000) as files,
        running_stack(settings, SimulatorConfig(job_seconds=2)) as stack,
    ):
        async with await stack.client_for(credits=2) as client:
            ok_id = await submit(client)
            over_id = await submit(client)
            r = await post_replicate_success(
                stack, ok_id, [f"{files.url}/{n}.png" for n in range(5)]
            )
            assert r.status_code == 200, r.text
            r = await post_replicate_success(
                stack, over_id, [f"{files.url}/{n}.png" for n in range(6)]
            )
            assert r.status_code == 200, r.text
            done = await wait_status(client, ok_id, {"failed", "completed"}, timeout=30)
            assert done["status"] == "completed" and len(done["result"]["files"]) == 5
            over = await wait_status(client, over_id, {"failed", "completed"}, timeout=30)
            assert over["status"] == "failed" and over["error"] == LIMIT
            async with httpx.AsyncClient() as raw:
                for f in done["result"]["files"]:
                    assert (await raw.get(f["url"])).content == files.body


async def test_result_urls_are_signed_once_and_off_the_event_loop(
    runtime: Runtime, client: httpx.AsyncClient, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 files rendered three times: signed once each, off the event loop."""
    user_id, key = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    files = [
        {
            "key": f"results/{task_id.hex}/{n}.png",
            "content_type": "image/png",
            "bytes": 1,
            "sha256": "0" * 64,
        }
        for n in range(16)
    ]
    for to in (TaskStatus.STORING, TaskStatus.COMPLETED):
        await transition(
            conn,
            task_id=task_id,
            to=to,
            event_key=f"e-{to}",
            cause="t",
            vendor_task_id="p",
            outputs=["http://93.184.216.34/x.png"],
            result={"files": files} if to is TaskStatus.COMPLETED else None,
        )
    signed_on: list[int] = []
    real = runtime.store._sign

    def sign(key: str) -> str:
        signed_on.append(threading.get_ident())
        return real(key)

    monkeypatch.setattr(runtime.store, "_sign", sign)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"/v1/tasks/{format_task_id(task_id)}"
    # two readers at once share one signing of each file; a later one reads from memory
    first, second = await asyncio.gather(
        client.get(url, headers=headers), client.get(url, headers=headers)
    )
    third = await client.get(url, headers=headers)
    assert len(first.json()["result"]["files"]) == 16
    assert first.json()["result"] == second.json()["result"] == third.json()["result"]
    assert len(signed_on) == 16
    assert threading.get_ident() not in signed_on
