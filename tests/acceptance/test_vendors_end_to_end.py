"""Each vendor end to end through the simulator's dialect of it, with faults on, and a routed
model failing over from a vendor that is down to one that is up."""

from __future__ import annotations

from dataclasses import replace

import pytest

from taskhook.settings import Settings, VendorRoute
from tests.acceptance.stack import running_stack, wait_all_terminal
from tests.acceptance.test_end_to_end import check_books
from vendors.simulator import SimulatorConfig
from vendors.simulator.validation import FAIL_WORD

FAULTS = SimulatorConfig(
    job_seconds=0.3,
    drop=0.3,
    duplicate=0.5,
    reorder=True,
    early=True,
    bad_signature=0.3,
    error_rate=0.1,
    seed=7,
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
        assert settings.replicate is not None
        # Nothing listens on port 9 of loopback: connection refused, so no job can exist there.
        down = replace(settings.replicate, api_base="http://127.0.0.1:9/v1")
        routes = {
            "flux-schnell": (
                VendorRoute("replicate", "black-forest-labs/flux-schnell", 1),
                VendorRoute("fal", "fal-ai/flux/schnell", 2),
            )
        }
        return replace(settings, replicate=down, routes=routes)

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
