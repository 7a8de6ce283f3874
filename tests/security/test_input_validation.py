"""Issue 14.12: what cannot work is refused with 422 before charging; one form of task id.

* A model the chosen vendor cannot serve (`{"model": "flux-pro", "vendor": "midjourney"}` with
  flux-pro routed elsewhere) or an id no vendor could resolve (`a/..`) is a 422, not a charge
  followed by a vendor's 404.
* A task has one public id, `tsk_` + 32 lower-case hex digits; every other spelling of the same
  uuid (dashes, no prefix, `urn:uuid:`, upper case, full-width digits) names nothing: 404.
* A bad query parameter is not described as "well-formed JSON".
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from common.settings import VendorRoute
from lifecycle.runtime import Runtime
from tests.scripted_vendor import ScriptedVendor, install
from tests.security.conftest import assert_error, auth_header
from vendors.midjourney_proxy import MidjourneySettings

ROUTES = {
    "flux-pro": (
        VendorRoute("replicate", "black-forest-labs/flux-pro", 10),
        VendorRoute("fal", "fal-ai/flux-pro", 12),
    )
}


async def credits(app: httpx.AsyncClient, headers: dict[str, str]) -> int:
    value: int = (await app.get("/v1/me", headers=headers)).json()["credits"]
    return value


@pytest.fixture
def three_vendors(runtime: Runtime) -> Runtime:
    """Replicate, fal and midjourney configured, flux-pro routed to the first two."""
    from vendors.midjourney_proxy import MidjourneyProxyAdapter

    runtime.settings = runtime.settings.with_overrides(
        routes=ROUTES,
        vendor_settings={
            **runtime.settings.vendor_settings,
            "midjourney": MidjourneySettings(api_base="http://mj.invalid"),
        },
    )
    install(runtime, ScriptedVendor("replicate"), ScriptedVendor("fal"))
    runtime.vendors["midjourney"] = MidjourneyProxyAdapter(
        runtime.http, api_base="http://mj.invalid", api_secret=None
    )
    return runtime


async def test_a_routed_model_pinned_to_a_vendor_that_does_not_serve_it_is_422_uncharged(
    three_vendors: Runtime, app: httpx.AsyncClient
) -> None:
    headers = await auth_header(three_vendors, credits=20)
    body = {"model": "flux-pro", "vendor": "midjourney", "input": {"prompt": "x"}}
    r = await app.post("/v1/tasks", json=body, headers=headers)
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["details"] == [
        {"field": "vendor", "message": "midjourney does not serve flux-pro"}
    ]
    assert await credits(app, headers) == 20
    listed = await app.get("/v1/tasks", headers=headers)
    assert listed.json()["data"] == []


@pytest.mark.parametrize("model", ["a/..", "a/.", "../x", "owner/.hidden", "owner/-x:abc"])
async def test_a_model_id_replicate_could_never_resolve_is_422_uncharged(
    runtime: Runtime, app: httpx.AsyncClient, model: str
) -> None:
    headers = await auth_header(runtime, credits=5)
    r = await app.post("/v1/tasks", json={"model": model, "input": {}}, headers=headers)
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["details"][0]["field"] == "model"
    assert await credits(app, headers) == 5


async def test_well_formed_replicate_ids_are_still_accepted(
    runtime: Runtime, app: httpx.AsyncClient
) -> None:
    install(runtime, ScriptedVendor("replicate"))
    headers = await auth_header(runtime, credits=5)
    for model in ("black-forest-labs/flux-1.1-pro", "stability-ai/sdxl:39ed52f2", "a_b/c.d"):
        r = await app.post("/v1/tasks", json={"model": model, "input": {}}, headers=headers)
        assert r.status_code == 202, (model, r.text)


async def test_only_the_canonical_task_id_names_a_task(
    runtime: Runtime, app: httpx.AsyncClient
) -> None:
    install(runtime, ScriptedVendor("replicate"))
    headers = await auth_header(runtime, credits=5)
    r = await app.post("/v1/tasks", json={"model": "a/b", "input": {}}, headers=headers)
    public_id = r.json()["id"]
    task = uuid.UUID(hex=public_id.removeprefix("tsk_"))
    assert (await app.get(f"/v1/tasks/{public_id}", headers=headers)).status_code == 200
    full_width = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in task.hex)
    others = [
        f"tsk_{task}",  # with dashes
        task.hex,  # bare
        str(task),
        f"tsk_urn:uuid:{task}",
        f"tsk_{{{task}}}",
        f"tsk_{task.hex.upper()}",
        f"tsk_{full_width}",
        f"TSK_{task.hex}",
        f"tsk_{task.hex} ",
    ]
    for other in others:
        for method, path in (
            ("GET", f"/v1/tasks/{other}"),
            ("GET", f"/v1/tasks/{other}/events"),
            ("POST", f"/v1/tasks/{other}/cancel"),
        ):
            r = await app.request(method, path, headers=headers)
            assert_error(r, 404, "not_found")
    assert (await app.get(f"/v1/tasks/{public_id}", headers=headers)).json()["status"] != (
        "canceled"
    )


async def test_a_bad_limit_does_not_speak_of_json(runtime: Runtime, app: httpx.AsyncClient) -> None:
    r = await app.get("/v1/tasks", params={"limit": "0"}, headers=await auth_header(runtime))
    assert_error(r, 422, "validation_error")
    assert "JSON" not in r.json()["error"]["message"]
