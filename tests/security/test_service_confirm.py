"""Issue 14.7: unthrottled vendor calls and unbounded junk.

50 `POST .../actions` on a running midjourney parent made 50 vendor fetches in 1.4 s (the
confirmation path took no token from TASKHOOK_POLL_RATE), and 100 unsigned junk callbacks made
102 fetches and 21 MB of dead letters that were never pruned. Now confirmations draw from the
shared bucket and coalesce per task, and unsigned bodies are kept truncated and pruned.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import httpx
import pytest

from common.ids import parse_task_id
from common.settings import Settings
from simulator import SimulatorConfig
from simulator.signing import new_webhook_id, webhook_headers
from tests.acceptance.stack import Stack, running_stack, wait_for
from tests.security.support import vendor_task_id

# A job that stays running through the test, with no progress callbacks of its own.
SIM = SimulatorConfig(job_seconds=120, steps=0)


@pytest.fixture
def quiet(settings: Settings) -> Settings:
    """The reconciler would poll on its own schedule; push that out of the way."""
    return replace(settings, poll_after=600.0, registration_timeout=5.0, rate_limit=0)


def fetches(stack: Stack) -> int:
    return int(stack.sim.simulator.stats.fetches.total())


async def running_parent(stack: Stack, client: httpx.AsyncClient) -> str:
    r = await client.post(
        "/v1/tasks",
        json={"model": "midjourney", "vendor": "midjourney", "input": {"prompt": "a fox"}},
    )
    assert r.status_code == 202, r.text
    task_id = str(r.json()["id"])
    await vendor_task_id(stack, task_id)
    await stack.web_runtime.drain()  # the registration and any callback's confirmation
    return task_id


async def test_fifty_actions_on_a_running_parent_make_a_few_fetches(quiet: Settings) -> None:
    async with running_stack(quiet, SIM) as stack:
        async with await stack.client_for(credits=60) as client:
            parent = await running_parent(stack, client)
            before = fetches(stack)
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"/v1/tasks/{parent}/actions", json={"action": "upscale", "index": 1}
                    )
                    for _ in range(50)
                )
            )
            assert {r.status_code for r in answers} == {409}
            assert {r.json()["error"]["code"] for r in answers} == {"parent_not_ready"}
            assert fetches(stack) - before <= 3
            assert (await client.get("/v1/me")).json()["credits"] == 59  # parent only


async def test_unsigned_junk_is_coalesced_truncated_and_pruned(quiet: Settings) -> None:
    # Pruned by the reconciler's housekeeping, on its own timer: every second here.
    settings = replace(quiet, delivery_retention=3.0, prune_interval=1.0)
    async with running_stack(settings, SIM) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await running_parent(stack, client)
        uid = parse_task_id(task_id)
        assert uid is not None
        job = await vendor_task_id(stack, task_id)
        hook = stack.runtime.callback_url(task_id=uid, vendor="midjourney")
        # a signed vendor's dead letter, older than the junk: kept
        # until replayed, however old
        signed = b"{not json"
        assert stack.settings.replicate is not None
        headers = webhook_headers(
            stack.settings.replicate.webhook_secrets[0], new_webhook_id(), signed
        )
        async with httpx.AsyncClient() as vendor:
            r = await vendor.post(
                stack.runtime.callback_url(task_id=uid, vendor="replicate"),
                content=signed,
                headers=headers,
            )
        assert r.status_code == 400
        before = fetches(stack)
        pad = "x" * 200_000
        junk = []
        for n in range(100):
            if n % 3 == 0:  # garbage: a dead letter
                junk.append(f"not json {n} {pad}".encode())
            elif n % 3 == 1:  # another job's task: a dead letter
                junk.append(
                    json.dumps({"id": f"other-{n}", "status": "SUCCESS", "p": pad}).encode()
                )
            else:  # a well-formed hint about our job: confirmed with the vendor
                junk.append(
                    json.dumps({"id": job, "status": "IN_PROGRESS", "n": n, "p": pad}).encode()
                )
        async with httpx.AsyncClient(timeout=30) as anyone:
            answers = await asyncio.gather(
                *(anyone.post(hook, content=body, headers={"content-type": "application/json"})
                  for body in junk)
            )  # fmt: skip
        assert {r.status_code for r in answers} <= {200, 400}
        await stack.web_runtime.drain()  # every hint's confirmation has run
        assert fetches(stack) - before <= 6
        async with stack.runtime.pool.acquire() as conn:
            stored = await conn.fetchrow(
                "SELECT count(*) AS n, max(length(body)) AS largest, sum(length(body)) AS total "
                "FROM webhook_deliveries WHERE vendor = 'midjourney'"
            )
        assert stored is not None
        assert stored["n"] >= 90 and stored["largest"] <= 16 * 1024
        assert stored["total"] <= 101 * 16 * 1024  # not 100 x 200 KB (+ the job's own)

        async def pruned() -> bool:
            async with stack.runtime.pool.acquire() as conn:
                left = await conn.fetchval(
                    "SELECT count(*) FROM webhook_deliveries WHERE vendor = 'midjourney'"
                )
            return bool(left == 0)

        await wait_for(pruned, timeout=30, what="the unsigned junk to be pruned")
        async with stack.runtime.pool.acquire() as conn:
            kept = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE vendor = 'replicate' "
                "AND status = 'rejected'"
            )
        assert kept == 1
