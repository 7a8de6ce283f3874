"""Tasks from submit to a stored image (or a refund), over sockets, through the simulator."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from typing import Any

import httpx
import pytest

from common.settings import Settings
from db import queries
from lifecycle.audit import run_audit
from simulator import SimulatorConfig
from tests.acceptance.stack import Stack, running_stack, wait_all_terminal

MODEL = "black-forest-labs/flux-schnell"


async def submit(client: httpx.AsyncClient, prompt: str, **extra: Any) -> str:
    r = await client.post("/v1/tasks", json={"model": MODEL, "input": {"prompt": prompt, **extra}})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending"
    return str(r.json()["id"])


async def check_books(
    stack: Stack, final: dict[str, dict[str, Any]], client: httpx.AsyncClient, granted: int
) -> None:
    async with stack.runtime.pool.acquire() as conn:
        report = await run_audit(conn, grace_seconds=0)
    assert report.ok, report.as_dict()
    refunded = [t for t in final.values() if t["refunded"]]
    assert {t["id"] for t in refunded} == {
        t["id"] for t in final.values() if t["status"] in ("failed", "canceled")
    }
    me = (await client.get("/v1/me")).json()
    assert me["credits"] == granted - len(final) + len(refunded)
    async with httpx.AsyncClient() as raw:
        for t in final.values():
            if t["status"] != "completed":
                assert t["result"] is None
                continue
            body = (await raw.get(t["result"]["url"])).content
            assert body.startswith(b"\x89PNG\r\n\x1a\n")
            assert hashlib.sha256(body).hexdigest() == t["result"]["sha256"]
            assert len(body) == t["result"]["bytes"]
            assert t["progress"] == 100


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return replace(settings, poll_after=0.5, registration_timeout=5.0)


async def test_happy_path_and_vendor_failure(fast: Settings) -> None:
    config = SimulatorConfig(job_seconds=0.3, api_token="tok", seed=1)
    async with running_stack(fast, config) as stack:
        client = await stack.client_for(credits=10)
        async with client:
            ids = [await submit(client, f"a fox #{n}") for n in range(6)]
            ids.append(await submit(client, "please fail-me"))
            final = await wait_all_terminal(client, ids, timeout=30)
            assert [final[i]["status"] for i in ids] == ["completed"] * 6 + ["failed"]
            assert final[ids[-1]]["error"]["code"] == "vendor_failed"
            await check_books(stack, final, client, granted=10)
            async with stack.runtime.pool.acquire() as conn:
                keys = await conn.fetch("SELECT result FROM tasks WHERE status='completed'")
            for row in keys:
                (f,) = row["result"]["files"]
                assert f["key"].startswith("results/") and f["key"].endswith("/0.png")


async def test_several_outputs_are_all_stored(fast: Settings) -> None:
    async with running_stack(fast, SimulatorConfig(job_seconds=0.2)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client, "three cats", num_outputs=3)
            final = await wait_all_terminal(client, [task_id], timeout=30)
            result = final[task_id]["result"]
            assert len(result["files"]) == 3
            assert result["url"] == result["files"][0]["url"]
            assert len({f["sha256"] for f in result["files"]}) == 3


async def test_vendor_rejection_fails_and_refunds(fast: Settings) -> None:
    async with running_stack(fast, SimulatorConfig(job_seconds=0.2)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client, "reject-me please")
            final = await wait_all_terminal(client, [task_id], timeout=30)
            assert final[task_id]["status"] == "failed"
            assert final[task_id]["error"]["code"] == "vendor_rejected"
            assert final[task_id]["refunded"] is True
            assert (await client.get("/v1/me")).json()["credits"] == 1


async def test_vendor_down_retries_then_gives_up_with_refund(fast: Settings) -> None:
    settings = replace(fast, max_registration_attempts=3)
    async with running_stack(settings, SimulatorConfig(error_rate=1.0, time_scale=0.01)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client, "a fox")
            final = await wait_all_terminal(client, [task_id], timeout=30)
            assert final[task_id]["error"]["code"] == "vendor_unavailable"
            assert final[task_id]["refunded"] is True
            async with stack.runtime.pool.acquire() as conn:
                task = await queries.get_task(conn, task_id=_uuid(task_id), user_id=None)
            assert task is not None and task.attempts == 3
            assert stack.sim.simulator.stats.to_json()["predictions"]["created"] == 0


async def test_dropped_callbacks_are_healed_by_the_reconciler(fast: Settings) -> None:
    async with running_stack(fast, SimulatorConfig(job_seconds=0.2, drop=1.0)) as stack:
        async with await stack.client_for(credits=3) as client:
            ids = [await submit(client, f"quiet #{n}") for n in range(3)]
            final = await wait_all_terminal(client, ids, timeout=30)
            assert {t["status"] for t in final.values()} == {"completed"}
            async with stack.runtime.pool.acquire() as conn:
                webhooks = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
                polls = await conn.fetchval(
                    "SELECT count(*) FROM task_events WHERE cause = 'reconciler' AND applied"
                )
            assert webhooks == 0 and polls >= 3


async def test_every_fault_at_once(fast: Settings) -> None:
    config = SimulatorConfig(
        job_seconds=0.3,
        seed=7,
        drop=0.3,
        duplicate=0.3,
        reorder=True,
        early=True,
        error_rate=0.2,
        fail=0.2,
        bad_signature=0.3,
        delay=0.2,
        time_scale=0.01,
    )
    async with running_stack(fast, config) as stack:
        async with await stack.client_for(credits=30) as client:
            ids = await asyncio.gather(*(submit(client, f"chaos #{n}") for n in range(30)))
            final = await wait_all_terminal(client, list(ids), timeout=90)
            statuses = [t["status"] for t in final.values()]
            assert "completed" in statuses and "failed" in statuses
            await check_books(stack, final, client, granted=30)
            stats = stack.sim.simulator.stats.to_json()
            assert stats["webhooks"]["dropped"] > 0 and stats["webhooks"]["duplicated"] > 0
            assert stats["webhooks"]["bad_signature"] > 0
            async with stack.runtime.pool.acquire() as conn:
                dup_events = await conn.fetchval(
                    "SELECT count(*) FROM (SELECT task_id FROM task_events WHERE applied"
                    " AND to_status IN ('failed','canceled') GROUP BY task_id"
                    " HAVING count(*) > 1) x"
                )
            assert dup_events == 0


def _uuid(public_id: str) -> Any:
    from common.ids import parse_task_id

    return parse_task_id(public_id)
