"""The model catalogue (issue 17.1): GET /v1/models and `taskhook models list` list what this
deployment serves, from its routes and vendors, with prices and whether each vendor is up."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from common.settings import FalSettings, Settings, parse_model_descriptions, parse_routes
from db.queries import Conn
from taskhook.app import create_app
from taskhook.cli import cli
from taskhook.runtime import open_runtime
from tests.factories import make_user

ROUTES = json.dumps(
    {
        "flux-fast": [
            {
                "vendor": "replicate",
                "model": "black-forest-labs/flux-schnell",
                "price": 2,
                "description": "FLUX.1 schnell, fast",
            },
            {"vendor": "fal", "model": "fal-ai/flux/schnell", "price": 3},
        ],
        "mj": [{"vendor": "midjourney", "model": "midjourney", "price": 4}],
    }
)


def routed(settings: Settings, *, unrouted: bool = False) -> Settings:
    return replace(
        settings,
        fal=FalSettings(api_key="fal-key", queue_base="http://vendor.invalid/fal"),
        routes=parse_routes(ROUTES),
        model_descriptions=parse_model_descriptions(ROUTES),
        allow_unrouted_models=unrouted,
    )


async def models_of(settings: Settings, key: str) -> list[dict[str, Any]]:
    async with open_runtime(settings, pool_size=2) as rt:
        transport = httpx.ASGITransport(app=create_app(settings, runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            r = await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            data: list[dict[str, Any]] = r.json()["data"]
            assert (await c.get("/v1/models")).status_code == 401
            return data


async def test_without_routes_each_vendors_own_models(settings: Settings, conn: Conn) -> None:
    _, key = await make_user(conn)
    models = await models_of(settings, key)  # replicate only
    assert [(m["id"], m["route"], m["price"]) for m in models] == [
        ("black-forest-labs/flux-schnell", False, 1),
        ("black-forest-labs/flux-dev", False, 1),
    ]
    assert models[0]["vendors"] == [{"vendor": "replicate", "available": True, "price": 1}]
    assert all(m["description"] for m in models)
    assert not any("midjourney" in m["id"] for m in models)  # not configured: not offered


async def test_routes_with_prices_and_circuits(settings: Settings, conn: Conn) -> None:
    _, key = await make_user(conn)
    models = await models_of(routed(settings), key)
    # midjourney is routed but not configured here: the deployment does not serve "mj".
    assert [m["id"] for m in models] == ["flux-fast"]
    assert models[0]["price"] == 2 and models[0]["route"] is True
    assert models[0]["description"] == "FLUX.1 schnell, fast"
    assert [v["vendor"] for v in models[0]["vendors"]] == ["replicate", "fal"]

    # Replicate's circuit opens: the price is now fal's, as submit would charge.
    await conn.execute(
        "INSERT INTO vendor_state (vendor, circuit, open_until)"
        " VALUES ('replicate', 'open', now() + interval '1 minute')"
    )
    models = await models_of(routed(settings), key)
    assert models[0]["price"] == 3
    assert [v["available"] for v in models[0]["vendors"]] == [False, True]


async def test_unrouted_models_are_listed_when_allowed(settings: Settings, conn: Conn) -> None:
    _, key = await make_user(conn)
    models = await models_of(routed(settings, unrouted=True), key)
    ids = [m["id"] for m in models]
    # A routed vendor model is offered through its route only (named directly it costs the same).
    assert ids == ["flux-fast", "black-forest-labs/flux-dev"]


def test_models_list_command(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TASKHOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_test")
    monkeypatch.setenv("FAL_KEY", "fal-key")
    monkeypatch.setenv("TASKHOOK_ROUTES", ROUTES)
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "list"], catch_exceptions=False)
    lines = result.output.splitlines()
    assert result.exit_code == 0, result.output
    assert lines[0].split() == ["model", "price", "vendors", "description"]
    assert lines[1].split()[:2] == ["flux-fast", "2"] and "replicate, fal" in lines[1]
    result = runner.invoke(cli, ["models", "list", "--json"], catch_exceptions=False)
    assert [m["id"] for m in json.loads(result.output)["data"]] == ["flux-fast"]
