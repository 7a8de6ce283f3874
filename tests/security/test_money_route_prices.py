"""Issue 14.1: a client never pays less than the operator's price for a vendor's model.

With TASKHOOK_ROUTES listing flux-pro at Replicate (10) and fal (12), naming the vendors' own
model ids used to run the same vendor job at TASKHOOK_TASK_COST (1). Now a listed vendor model
id costs its route's price, however it is spelled; a model no route lists is refused unless
TASKHOOK_ALLOW_UNROUTED_MODELS lets it through.

The real Replicate and fal adapters decide what names one model (a pinned Replicate version is
that model); their HTTP goes to a MockTransport that records each job registered and answers
503, so every task stays `pending` where the test can read what it was charged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from common.settings import SettingsError, VendorRoute
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import Limits, VendorHealth
from tests.security.conftest import assert_error, auth_header
from vendors.fal import FalSettings
from vendors.registry import build_adapters, read_settings

ROUTES = {
    "flux-pro": (
        VendorRoute("replicate", "black-forest-labs/flux-pro", 10),
        VendorRoute("fal", "fal-ai/flux-pro", 12),
    )
}
VERSION = "a" * 64


@pytest.fixture
def registered(runtime: Runtime) -> Iterator[list[str]]:
    """Real adapters for Replicate and fal; the URLs of the jobs they tried to register."""
    seen: list[str] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            seen.append(f"{request.url.host}{request.url.path}")
        return httpx.Response(503)

    runtime.settings = runtime.settings.with_overrides(
        routes=ROUTES,
        vendor_settings={
            **runtime.settings.vendor_settings,
            "fal": FalSettings(
                api_key="k", queue_base="http://fal.test", jwks_url="http://fal.test/j"
            ),
        },
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    runtime.vendors.clear()
    runtime.vendors.update(build_adapters(runtime.settings, http))
    runtime.health.clear()
    runtime.health.update({v: VendorHealth(runtime.pool, v, Limits()) for v in runtime.vendors})
    assert sorted(runtime.vendors) == ["fal", "replicate"]
    yield seen


async def submit(app: httpx.AsyncClient, runtime: Runtime, body: dict[str, Any]) -> Any:
    """(status, task or error, credits spent)."""
    headers = await auth_header(runtime, credits=100)
    r = await app.post("/v1/tasks", json={**body, "input": {"prompt": "x"}}, headers=headers)
    await runtime.drain()
    left = (await app.get("/v1/me", headers=headers)).json()["credits"]
    return r, 100 - left


@pytest.mark.parametrize(
    ("body", "vendor", "price", "job"),
    [
        # The route by name, as before.
        ({"model": "flux-pro"}, "replicate", 10, "/models/black-forest-labs/flux-pro/"),
        ({"model": "flux-pro", "vendor": "fal"}, "fal", 12, "fal.test/fal-ai/flux-pro"),
        # The vendors' own ids: the route's price at the vendor that knows the id.
        (
            {"model": "black-forest-labs/flux-pro"},
            "replicate",
            10,
            "/models/black-forest-labs/flux-pro/predictions",
        ),
        ({"model": "fal-ai/flux-pro", "vendor": "fal"}, "fal", 12, "fal.test/fal-ai/flux-pro"),
        ({"model": "fal-ai/flux-pro"}, "fal", 12, "fal.test/fal-ai/flux-pro"),
        (
            {"model": "black-forest-labs/flux-pro", "vendor": "replicate"},
            "replicate",
            10,
            "/models/black-forest-labs/flux-pro/predictions",
        ),
        # Other spellings of one Replicate model: a pinned version, capitals.
        ({"model": f"black-forest-labs/flux-pro:{VERSION}"}, "replicate", 10, "/v1/predictions"),
        ({"model": "Black-Forest-Labs/Flux-Pro"}, "replicate", 10, "/Flux-Pro/predictions"),
    ],
)
async def test_a_vendor_model_id_a_route_lists_costs_the_routes_price(
    app: httpx.AsyncClient,
    runtime: Runtime,
    registered: list[str],
    body: dict[str, Any],
    vendor: str,
    price: int,
    job: str,
) -> None:
    r, spent = await submit(app, runtime, body)
    assert r.status_code == 202, r.text
    assert (r.json()["vendor"], r.json()["cost"], spent) == (vendor, price, price)
    # The same vendor job as ever (a route by name then fails over on the 503: not pinned).
    assert registered and job in registered[0], registered


@pytest.mark.parametrize(
    "body",
    [
        {"model": "black-forest-labs/flux-schnell"},  # listed nowhere
        {"model": "fal-ai/flux/dev", "vendor": "fal"},
        {"model": "black-forest-labs/flux-pro", "vendor": "fal"},  # Replicate's id, at fal
        {"model": "fal-ai/flux-pro/v1.1", "vendor": "fal"},  # another fal endpoint
    ],
)
async def test_an_unrouted_model_is_422_and_charges_nothing(
    app: httpx.AsyncClient, runtime: Runtime, registered: list[str], body: dict[str, Any]
) -> None:
    r, spent = await submit(app, runtime, body)
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["details"][0]["field"] == "model"
    assert "flux-pro" in r.json()["error"]["details"][0]["message"]  # what is offered
    assert spent == 0 and registered == []


async def test_allowing_unrouted_models_charges_them_the_task_cost_and_listed_ones_their_price(
    app: httpx.AsyncClient, runtime: Runtime, registered: list[str]
) -> None:
    runtime.settings = runtime.settings.with_overrides(allow_unrouted_models=True)
    r, spent = await submit(app, runtime, {"model": "black-forest-labs/flux-schnell"})
    assert (r.status_code, r.json()["cost"], spent) == (202, 1, 1)
    r, spent = await submit(app, runtime, {"model": "fal-ai/flux-pro", "vendor": "fal"})
    assert (r.status_code, r.json()["cost"], spent) == (202, 12, 12)
    r, spent = await submit(app, runtime, {"model": "a/..", "vendor": "replicate"})
    assert r.status_code == 422 and spent == 0


def test_the_setting_is_read_from_the_environment_and_checked() -> None:
    env = {"TASKHOOK_SECRET": "s" * 32, "TASKHOOK_ADMIN_KEY": "a" * 32}
    assert read_settings(env).allow_unrouted_models is False
    assert read_settings({**env, "TASKHOOK_ALLOW_UNROUTED_MODELS": "1"}).allow_unrouted_models
    with pytest.raises(SettingsError, match=r"^TASKHOOK_ALLOW_UNROUTED_MODELS must be 0 or 1"):
        read_settings({**env, "TASKHOOK_ALLOW_UNROUTED_MODELS": "yes"})
