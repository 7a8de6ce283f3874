"""The client page's model list comes from GET /v1/models (issue 17.1): only what the
deployment serves, and a route's name is what the page posts, so routes and prices apply."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, Request, expect

from common.settings import Settings, parse_model_descriptions, parse_routes
from tests.acceptance.stack import Stack
from tests.browser.helpers import new_api_key, sign_in, submit_prompt

ROUTES = json.dumps(
    {
        "flux-fast": [
            {"vendor": "fal", "model": "fal-ai/flux/schnell", "price": 2, "description": "Fast"},
            {"vendor": "replicate", "model": "black-forest-labs/flux-schnell", "price": 3},
        ],
        "flux-detailed": [
            {"vendor": "replicate", "model": "black-forest-labs/flux-dev", "price": 5},
        ],
    }
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's deployment routes two models and serves nothing else (no midjourney)."""
    return replace(
        settings, routes=parse_routes(ROUTES), model_descriptions=parse_model_descriptions(ROUTES)
    )


async def test_the_page_offers_the_catalogue_and_posts_route_names(
    page: Page, stack: Stack
) -> None:
    key = await new_api_key(stack, credits=10)
    await sign_in(page, stack.url, key)
    options = page.get_by_test_id("model").locator("option")
    await expect(options).to_have_count(2)
    assert [await o.get_attribute("value") for o in await options.all()] == [
        "flux-fast",
        "flux-detailed",
    ]
    await expect(options.first).to_contain_text("2 credits")

    posted: list[dict[str, Any]] = []

    def note(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/tasks"):
            posted.append(json.loads(request.post_data or "{}"))

    page.on("request", note)
    await page.get_by_test_id("model").select_option("flux-detailed")
    task = await submit_prompt(page, "a misty forest")
    await expect(task).to_have_attribute("data-status", "completed", timeout=30_000)
    assert posted == [{"model": "flux-detailed", "input": {"prompt": "a misty forest"}}]
    await expect(page.locator("#credits")).to_have_text("5 credits")  # the route's price
