"""The client page in words people understand (issue 17.4): no promise of a retry that nobody
makes, and a second click after a lost answer is the same submission, charged once."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, Route, expect

from tests.acceptance.stack import Stack
from tests.browser.helpers import new_api_key, sign_in


async def test_reclick_after_a_lost_answer_reuses_the_idempotency_key(
    page: Page, stack: Stack
) -> None:
    key = await new_api_key(stack, credits=5)
    await sign_in(page, stack.url, key)
    sent_keys: list[str] = []

    async def lose_first_answer(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        sent_keys.append(route.request.headers["idempotency-key"])
        if len(sent_keys) == 1:
            # The server takes (and charges) the task, but its answer never reaches the page.
            await route.fetch()
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await page.route("**/v1/tasks", lose_first_answer)
    await page.get_by_test_id("prompt").fill("a heron in the reeds")
    await page.get_by_test_id("submit").click()
    error = page.get_by_test_id("error")
    await expect(error).to_contain_text("Could not reach the server")
    assert "Retrying" not in (await error.text_content() or "")

    await page.get_by_test_id("submit").click()
    await expect(page.get_by_test_id("task")).to_have_count(1)
    await expect(error).to_be_hidden()
    assert len(sent_keys) == 2 and sent_keys[0] == sent_keys[1]
    async with stack.runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 1
        assert await conn.fetchval("SELECT balance FROM users") == 4

    # A new submission after that one was answered is a new task, with a new key.
    await page.get_by_test_id("prompt").fill("a heron in the reeds")
    await page.get_by_test_id("submit").click()
    await expect(page.get_by_test_id("task")).to_have_count(2)
    assert len(sent_keys) == 3 and sent_keys[2] != sent_keys[0]
