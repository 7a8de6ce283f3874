"""A client's trace follows its task: stored, on every log line, and sent to the vendor."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from common.logs import configure_logging
from lifecycle.registration import register_new
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import Limits, VendorHealth
from tests.factories import make_user
from tests.integration.test_submit_api import BODY
from vendors.replicate import ReplicateAdapter

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_traceparent_follows_the_task_to_the_vendor_and_the_logs(
    client: httpx.AsyncClient,
    runtime: Runtime,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawned: list[Any] = []
    monkeypatch.setattr(runtime, "spawn", spawned.append)
    _, key = await make_user(conn)
    r = await client.post(
        "/v1/tasks",
        json=BODY,
        headers={
            "Authorization": f"Bearer {key}",
            "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
        },
    )
    assert r.status_code == 202
    assert await conn.fetchval("SELECT trace_id FROM tasks") == TRACE
    spawned[0].close()

    seen: list[httpx.Request] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "p1", "status": "starting", "logs": ""})

    http = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    adapter = ReplicateAdapter(
        http,
        api_token="t",
        api_base="http://vendor.test/v1",
        webhook_secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    rt = replace(
        runtime,
        vendors={"replicate": adapter},
        health={"replicate": VendorHealth(runtime.pool, "replicate", Limits())},
    )
    logs = io.StringIO()
    configure_logging(json=True, file=logs)
    try:
        task_id = await conn.fetchval("SELECT id FROM tasks")
        await register_new(rt, task_id)
    finally:
        configure_logging(json=True)
    (call,) = seen
    assert call.headers["traceparent"].startswith(f"00-{TRACE}-")
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert lines, "registration logged nothing"
    for line in lines:
        assert (line["task_id"], line["vendor"], line["trace_id"]) == (
            f"tsk_{task_id.hex}",
            "replicate",
            TRACE,
        )
