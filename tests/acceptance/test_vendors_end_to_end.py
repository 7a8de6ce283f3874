"""Each vendor end to end through the simulator's dialect of it, with faults on, and a routed
model failing over from a vendor that is down to one that is up."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

from common.ids import parse_task_id
from common.settings import Settings, VendorRoute
from db import queries
from simulator import SimulatorConfig
from simulator.validation import FAIL_WORD
from tests.acceptance.stack import Stack, running_stack, wait_all_terminal, wait_for
from tests.acceptance.test_end_to_end import check_books

FAULTS = SimulatorConfig(
    job_seconds=0.3,
    drop=0.3,
    duplicate=0.5,
    reorder=True,
    early=True,
    bad_signature=0.3,
    error_rate=0.1,
    seed=7,
    time_scale=0.01,
)


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return replace(settings, poll_after=0.5, registration_timeout=5.0)


async def test_fal_end_to_end_with_faults(fast: Settings) -> None:
    async with running_stack(fast, FAULTS) as stack:
        client = await stack.client_for(credits=20)
        ids = []
        for i in range(10):
            prompt = f"fox {i} {FAIL_WORD}" if i % 4 == 0 else f"fox {i}"
            r = await client.post(
                "/v1/tasks",
                json={"model": "fal-ai/flux/schnell", "vendor": "fal", "input": {"prompt": prompt}},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        final = await wait_all_terminal(client, ids, timeout=60)
        statuses = [final[i]["status"] for i in ids]
        assert statuses == ["failed" if i % 4 == 0 else "completed" for i in range(10)]
        assert all(final[i]["vendor"] == "fal" for i in ids)
        await check_books(stack, final, client, granted=20)
        assert stack.sim.simulator.stats.bad_signature > 0, "forged fal webhooks were sent"
        await client.aclose()


async def test_a_routed_model_fails_over_to_the_vendor_that_is_up(fast: Settings) -> None:
    def replicate_down(settings: Settings, sim_url: str) -> Settings:
        assert settings.vendor("replicate") is not None
        # Nothing listens on port 9 of loopback: connection refused, so no job can exist there.
        down = replace(settings.vendor("replicate"), api_base="http://127.0.0.1:9/v1")
        routes = {
            "flux-schnell": (
                VendorRoute("replicate", "black-forest-labs/flux-schnell", 1),
                VendorRoute("fal", "fal-ai/flux/schnell", 2),
            )
        }
        return replace(
            settings,
            vendor_settings={**settings.vendor_settings, "replicate": down},
            routes=routes,
        )

    async with running_stack(
        fast, SimulatorConfig(job_seconds=0.2), configure=replicate_down
    ) as stack:
        client = await stack.client_for(credits=10)
        ids = []
        for i in range(4):
            r = await client.post(
                "/v1/tasks", json={"model": "flux-schnell", "input": {"prompt": f"owl {i}"}}
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        final = await wait_all_terminal(client, ids, timeout=30)
        assert {(t["status"], t["vendor"], t["cost"]) for t in final.values()} == {
            ("completed", "fal", 1)
        }
        assert stack.sim.simulator.stats.predictions_created == 4, "one job per task, at fal"
        await check_books(stack, final, client, granted=10)
        await client.aclose()


async def test_midjourney_end_to_end_with_faults_and_an_upscale(fast: Settings) -> None:
    async with running_stack(fast, FAULTS) as stack:
        client = await stack.client_for(credits=20)
        ids = []
        for i in range(6):
            prompt = f"cat {i} {FAIL_WORD}" if i == 0 else f"cat {i}"
            r = await client.post(
                "/v1/tasks",
                json={"model": "midjourney", "vendor": "midjourney", "input": {"prompt": prompt}},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        final = await wait_all_terminal(client, ids, timeout=60)
        assert [final[i]["status"] for i in ids] == ["failed"] + ["completed"] * 5
        # Unsigned callbacks were only hints: every transition came from the vendor's API.
        async with stack.runtime.pool.acquire() as conn:
            causes = {
                r["cause"]
                for r in await conn.fetch("SELECT DISTINCT cause FROM task_events WHERE applied")
            }
        assert "webhook" not in causes and "confirm" in causes
        up = await client.post(
            f"/v1/tasks/{ids[1]}/actions", json={"action": "upscale", "index": 3}
        )
        assert up.status_code == 202, up.text
        child = await wait_all_terminal(client, [up.json()["id"]], timeout=30)
        assert child[up.json()["id"]]["status"] == "completed"
        assert child[up.json()["id"]]["parent_id"] == ids[1]
        final.update(child)
        await check_books(stack, final, client, granted=20)
        await client.aclose()


async def test_an_action_on_a_parent_we_have_not_caught_up_with_is_confirmed(
    settings: Settings,
) -> None:
    """The midjourney-proxy `task_status_not_success` trap: every callback lost, our record
    still says processing, the vendor has finished. The action asks the vendor instead of
    refusing."""
    slow_polls = replace(settings, poll_after=600.0, registration_timeout=5.0)
    async with running_stack(slow_polls, SimulatorConfig(job_seconds=0.2, drop=1.0)) as stack:
        client = await stack.client_for(credits=5)
        r = await client.post(
            "/v1/tasks",
            json={"model": "midjourney", "vendor": "midjourney", "input": {"prompt": "owl"}},
        )
        parent_id = r.json()["id"]

        async def finished_at_vendor() -> bool:
            task = (await client.get(f"/v1/tasks/{parent_id}")).json()
            job = await vendor_job(stack, parent_id)
            return task["status"] == "submitted" and job is not None and job.terminal

        await wait_for(finished_at_vendor, timeout=20, what="the job to finish at the vendor")
        answers: list[httpx.Response] = []

        async def accepted() -> bool:
            # A confirmation may be deferred (the vendor's shared rate limit, or a circuit a slow
            # registration opened on a loaded machine): the client is told 409 parent_not_ready
            # and asks again, as the message says. Only that refusal is allowed on the way.
            answers.append(
                await client.post(
                    f"/v1/tasks/{parent_id}/actions", json={"action": "variation", "index": 1}
                )
            )
            last = answers[-1]
            assert last.status_code in (202, 409), last.text
            assert last.status_code == 202 or last.json()["error"]["code"] == "parent_not_ready"
            return last.status_code == 202

        await wait_for(accepted, timeout=20, what="the action to be accepted")
        up = answers[-1]
        done = await wait_all_terminal(client, [parent_id], timeout=30)
        assert done[parent_id]["status"] == "completed"
        child_id = up.json()["id"]

        async def child_registered() -> bool:
            return await vendor_job(stack, child_id) is not None

        # Its callbacks are lost too (drop=1.0) and polls are far off: registered is the proof.
        await wait_for(child_registered, timeout=20, what="the variation's job at the vendor")
        await client.aclose()


async def vendor_job(stack: Stack, public_id: str) -> Any:
    task_id = parse_task_id(public_id)
    async with stack.runtime.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None) if task_id else None
    if task is None or task.vendor_task_id is None:
        return None
    return stack.sim.simulator.get(task.vendor_task_id)
