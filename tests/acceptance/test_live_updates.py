"""Server-Sent Events over a real socket, driven by PostgreSQL NOTIFY; cancel at the vendor."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx

from common.settings import Settings
from common.states import TaskStatus, rank
from simulator import SimulatorConfig
from tests.acceptance.stack import running_stack, wait_for

BODY = {"model": "black-forest-labs/flux-schnell", "input": {"prompt": "a fox"}}


async def read_events(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    events: list[tuple[int, dict[str, Any]]] = []
    event_id = 0
    async with client.stream("GET", url, headers=headers or {}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                events.append((event_id, json.loads(line[6:])))
    return events


async def test_stream_follows_a_task_to_completion_and_closes(settings: Settings) -> None:
    fast = replace(settings, poll_after=0.5)
    async with running_stack(fast, SimulatorConfig(job_seconds=0.6, steps=3)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = (await client.post("/v1/tasks", json=BODY)).json()["id"]
            events = await read_events(client, f"/v1/tasks/{task_id}/events")
            statuses = [e["status"] for _, e in events]
            assert statuses[-1] == "completed" and events[-1][1]["result"]["url"]
            ranks = [rank(TaskStatus(s)) for s in statuses]
            assert ranks == sorted(ranks)
            progress = [e["progress"] for _, e in events]
            assert progress == sorted(progress)
            ids = [i for i, _ in events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            assert len(events) >= 3  # it really streamed, not just the final state
            # resuming with the last id sends nothing more and closes at once
            again = await read_events(
                client, f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(ids[-1])}
            )
            assert again == []
            # resuming from an older id repeats only the current state
            older = await read_events(
                client, f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(ids[0])}
            )
            assert [e["status"] for _, e in older] == ["completed"]


async def test_stream_key_in_query_and_auth_errors(settings: Settings) -> None:
    async with running_stack(settings, SimulatorConfig(job_seconds=0.2)) as stack:
        async with await stack.client_for(credits=1) as client:
            key = client.headers["authorization"].split()[1]
            task_id = (await client.post("/v1/tasks", json=BODY)).json()["id"]
            async with httpx.AsyncClient(base_url=stack.url) as anonymous:
                events = await read_events(anonymous, f"/v1/tasks/{task_id}/events?key={key}")
                assert events[-1][1]["status"] == "completed"
                r = await anonymous.get(f"/v1/tasks/{task_id}/events")
                assert r.status_code == 401
                r = await anonymous.get(f"/v1/tasks/{task_id}/events?key=wrong")
                assert r.status_code == 401
        async with await stack.client_for(credits=1) as other:
            r = await other.get(f"/v1/tasks/{task_id}/events")
            assert r.status_code == 404


async def test_cancel_reaches_the_vendor(settings: Settings) -> None:
    async with running_stack(settings, SimulatorConfig(job_seconds=30)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = (await client.post("/v1/tasks", json=BODY)).json()["id"]

            async def registered() -> bool:
                r = await client.get(f"/v1/tasks/{task_id}")
                return bool(r.json()["status"] != "pending")

            await wait_for(registered, timeout=10, what="registration")
            r = await client.post(f"/v1/tasks/{task_id}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "canceled"

            async def vendor_canceled() -> bool:
                stats = stack.sim.simulator.stats.to_json()
                return bool(stats["predictions"]["canceled"] == 1)

            await wait_for(vendor_canceled, timeout=10, what="the vendor's cancel")
            assert (await client.get("/v1/me")).json()["credits"] == 1
