"""Each adapter's cheap authenticated call (`taskhook check`), against the simulator's wire format.

Replicate: `GET /v1/account` (the token's owner). fal: the platform API's
`GET /v1/models/pricing?endpoint_id=...`, which answers a valid key only. midjourney-proxy:
`POST /mj/task/list-by-condition {"ids": []}`, behind `mj-api-secret`. The simulator runs
in-process (httpx.ASGITransport); the adapters are the real ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from common.errors import VendorError, VendorUnavailable
from simulator import SimulatorConfig, create_app
from vendors.fal import FalAdapter
from vendors.midjourney_proxy import MidjourneyProxyAdapter
from vendors.replicate import ReplicateAdapter

BASE = "http://sim.test"
CONFIG = SimulatorConfig(api_token="r8-good", fal_key="fal-good", mj_secret="mj-good")


@asynccontextmanager
async def simulator() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(CONFIG)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
    ):
        yield client


async def test_replicate_account_names_the_tokens_owner() -> None:
    async with simulator() as client:
        r = await client.get("/v1/account", headers={"Authorization": "Bearer r8-good"})
        assert r.status_code == 200
        assert set(r.json()) == {"type", "username", "name", "github_url"}
        assert r.json()["type"] in ("user", "organization")
        assert (await client.get("/v1/account")).status_code == 401

        good = ReplicateAdapter(client, api_token="r8-good", api_base=f"{BASE}/v1")
        assert await good.check_credentials() == ("token of organization 'taskhook-simulator'")
        bad = ReplicateAdapter(client, api_token="r8-bad", api_base=f"{BASE}/v1")
        with pytest.raises(VendorUnavailable, match=r"refused our token \(401\)"):
            await bad.check_credentials()


async def test_fal_pricing_answers_a_valid_key_only() -> None:
    async with simulator() as client:
        url = "/fal-api/v1/models/pricing"
        r = await client.get(
            url,
            params={"endpoint_id": "fal-ai/flux/dev,fal-ai/flux/schnell"},
            headers={"Authorization": "Key fal-good"},
        )
        assert r.status_code == 200
        assert [p["endpoint_id"] for p in r.json()["prices"]] == [
            "fal-ai/flux/dev",
            "fal-ai/flux/schnell",
        ]
        assert r.json()["has_more"] is False
        assert (await client.get(url, params={"endpoint_id": "a/b"})).status_code == 401
        no_ids = await client.get(url, headers={"Authorization": "Key fal-good"})
        assert no_ids.status_code == 422

        def adapter(key: str) -> FalAdapter:
            return FalAdapter(
                client, api_key=key, queue_base=f"{BASE}/fal", api_base=f"{BASE}/fal-api/v1"
            )

        assert await adapter("fal-good").check_credentials() == (
            "key accepted (priced fal-ai/flux/schnell)"
        )
        with pytest.raises(VendorUnavailable, match=r"refused our key \(401\)"):
            await adapter("fal-bad").check_credentials()


async def test_midjourney_task_list_needs_the_secret() -> None:
    async with simulator() as client:
        headers = {"mj-api-secret": "mj-good"}
        made = await client.post(
            "/mj/submit/imagine", json={"prompt": "a red fox"}, headers=headers
        )
        task_id = made.json()["result"]
        listed = await client.post(
            "/mj/task/list-by-condition", json={"ids": [task_id, "nope"]}, headers=headers
        )
        assert [t["id"] for t in listed.json()] == [task_id]
        empty = await client.post("/mj/task/list-by-condition", json={"ids": []}, headers=headers)
        assert empty.json() == []
        refused = await client.post("/mj/task/list-by-condition", json={"ids": []})
        assert refused.status_code == 403

        good = MidjourneyProxyAdapter(client, api_base=BASE, api_secret="mj-good")
        assert await good.check_credentials() == "mj-api-secret accepted"
        for secret in ("mj-bad", None):
            bad = MidjourneyProxyAdapter(client, api_base=BASE, api_secret=secret)
            with pytest.raises(VendorError, match=r"refused our mj-api-secret \(403\)"):
                await bad.check_credentials()
