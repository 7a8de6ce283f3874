"""The client page at `/`, driven like a user would, through API.md's data-testid hooks."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

pytest.importorskip("playwright.async_api")

from playwright.async_api import BrowserContext, Page, expect

from tests.acceptance.stack import Stack, wait_all_terminal
from tests.browser.helpers import (
    RECORD_CHANGES,
    expect_image_rendered,
    listed_ids,
    new_api_key,
    seen,
    sign_in,
    submit_prompt,
    task_id_of,
    task_locator,
)

ACTIVE = re.compile(r"^(pending|submitted|processing|storing)$")
RUNNING = re.compile(r"^(submitted|processing|storing)$")


@pytest.mark.simulator(job_seconds=2.0, steps=4)
async def test_submit_shows_live_progress_and_the_image(
    page: Page, stack: Stack, screenshots: Path
) -> None:
    key = await new_api_key(stack, credits=5)
    await page.goto(stack.url + "/")
    await page.get_by_test_id("api-key").fill("thk_not-a-real-key")
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("error")).to_contain_text("not accepted")
    await expect(page.get_by_test_id("prompt")).to_be_hidden()

    await page.get_by_test_id("api-key").fill(key)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("prompt")).to_be_visible()
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await page.evaluate(RECORD_CHANGES)
    streams: list[int] = []
    page.on("response", lambda r: streams.append(r.status) if "/events?key=" in r.url else None)

    # The prompt is shown as text, never interpreted as markup.
    prompt = 'a red fox <img src=x onerror="window.__pwned=1"> & "friends"'
    task = await submit_prompt(page, prompt)
    await expect(task.locator(".prompt")).to_have_text(prompt)
    await expect(task).to_have_attribute("data-status", "completed", timeout=30_000)
    await expect(task.get_by_test_id("progress")).to_have_text("100%")
    await expect(task.get_by_test_id("cancel")).to_have_count(0)
    await expect_image_rendered(task.get_by_test_id("result"))
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator('img[src="x"]').count() == 0

    # The page showed the task while it ran, not just its end.
    history = await seen(page)
    assert history[-1][1:] == ["completed", "100%"]
    partial = [p for _, s, p in history if ACTIVE.match(s) and p not in ("0%", "100%")]
    assert partial, history  # e.g. processing at 25%, 50%, 75%
    assert streams and set(streams) == {200}, streams  # followed live over Server-Sent Events
    await page.screenshot(path=screenshots / "client-completed.png", full_page=True)


@pytest.mark.simulator(job_seconds=4.0, steps=8)
async def test_reload_mid_task_resumes_to_completed(page: Page, stack: Stack) -> None:
    key = await new_api_key(stack, credits=5)
    await sign_in(page, stack.url, key)
    task = await submit_prompt(page, "a lighthouse at dusk")
    task_id = await task_id_of(task)
    await expect(task).to_have_attribute("data-status", RUNNING)
    assert await task.get_attribute("data-status") != "completed"

    await page.reload()
    # The key is remembered for the tab: no sign-in form, the same task, still going.
    await expect(page.get_by_test_id("prompt")).to_be_visible()
    await expect(page.get_by_test_id("api-key")).to_be_hidden()
    task = task_locator(page, task_id)
    await expect(task).to_have_count(1)
    await expect(task).to_have_attribute("data-status", "completed", timeout=30_000)
    await expect(task.get_by_test_id("progress")).to_have_text("100%")
    await expect_image_rendered(task.get_by_test_id("result"))


@pytest.mark.simulator(job_seconds=60.0)
async def test_cancel_from_the_page(page: Page, stack: Stack, screenshots: Path) -> None:
    key = await new_api_key(stack, credits=3)
    await sign_in(page, stack.url, key)
    await expect(page.locator("#credits")).to_have_text("3 credits")
    task = await submit_prompt(page, "a very slow painting")
    await expect(task).to_have_attribute("data-status", RUNNING)
    await expect(page.locator("#credits")).to_have_text("2 credits")
    await page.screenshot(path=screenshots / "client-active.png", full_page=True)

    await task.get_by_test_id("cancel").click()
    await expect(task).to_have_attribute("data-status", "canceled")
    await expect(task.get_by_test_id("cancel")).to_have_count(0)
    await expect(task).to_contain_text("refunded")
    await expect(page.locator("#credits")).to_have_text("3 credits")
    await expect(task.get_by_test_id("result")).to_have_count(0)

    task_id = await task_id_of(task)
    async with await stack.client_for(credits=0) as other:
        # Another user cannot see it; its owner's API agrees with the page.
        assert (await other.get(f"/v1/tasks/{task_id}")).status_code == 404
    page_key = await page.evaluate("sessionStorage.getItem('taskhook.apiKey')")
    assert page_key == key


@pytest.mark.simulator(job_seconds=5.0, steps=5)
async def test_unfinished_tasks_are_shown_after_reopening_the_page(
    page: Page, context: BrowserContext, stack: Stack
) -> None:
    key = await new_api_key(stack, credits=5)
    await sign_in(page, stack.url, key)
    first = await submit_prompt(page, "first: a paper boat")
    second = await submit_prompt(page, "second: a glass whale")
    ids = [await task_id_of(second), await task_id_of(first)]
    await expect(second).to_have_attribute("data-status", ACTIVE)
    await page.close()

    # A new tab starts without the key (it is kept per tab); the server remembers the tasks.
    tab = await context.new_page()
    await tab.goto(stack.url + "/")
    await expect(tab.get_by_test_id("api-key")).to_be_visible()
    await tab.get_by_test_id("api-key").fill(key)
    await tab.get_by_test_id("sign-in").click()
    await expect(tab.get_by_test_id("task")).to_have_count(2)
    assert await listed_ids(tab) == ids  # newest first
    await expect(task_locator(tab, ids[0])).to_have_attribute("data-status", ACTIVE)
    await tab.evaluate(RECORD_CHANGES)
    for task_id in ids:
        task = task_locator(tab, task_id)
        await expect(task).to_have_attribute("data-status", "completed", timeout=30_000)
        await expect_image_rendered(task.get_by_test_id("result"))
    statuses = [s for i, s, _ in await seen(tab) if i == ids[0]]
    assert any(ACTIVE.match(s) for s in statuses), statuses


async def test_a_failed_submission_shows_the_servers_message(page: Page, stack: Stack) -> None:
    key = await new_api_key(stack, credits=0)
    await sign_in(page, stack.url, key)
    await page.get_by_test_id("prompt").fill("no credits for this")
    await page.get_by_test_id("submit").click()
    await expect(page.get_by_test_id("error")).to_contain_text("costs 1 credit")
    await expect(page.get_by_test_id("task")).to_have_count(0)


async def _submit_via_api(client: httpx.AsyncClient, prompt: str) -> str:
    response = await client.post(
        "/v1/tasks", json={"model": "black-forest-labs/flux-schnell", "input": {"prompt": prompt}}
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


@pytest.mark.simulator(job_seconds=3.0)
async def test_more_running_tasks_than_streams_all_finish(page: Page, stack: Stack) -> None:
    """The page follows a few tasks over SSE and polls the rest; tasks started elsewhere (here
    through the API, after the page loaded) show up too."""
    async with await stack.client_for(credits=10) as client:
        key = client.headers["Authorization"].split()[1]
        ids = [await _submit_via_api(client, f"batch {n}") for n in range(5)]
        await sign_in(page, stack.url, key)
        await expect(page.get_by_test_id("task")).to_have_count(5)
        ids.append(await _submit_via_api(client, "started elsewhere"))
    await expect(page.get_by_test_id("task")).to_have_count(6)
    assert await listed_ids(page) == ids[::-1]
    for task_id in ids:
        task = task_locator(page, task_id)
        await expect(task).to_have_attribute("data-status", "completed", timeout=30_000)
        await expect(task.get_by_test_id("result")).to_have_count(1)
    await expect(page.locator("#credits")).to_have_text("4 credits")


@pytest.mark.simulator(job_seconds=0.0)
async def test_history_pages_back_with_show_older(page: Page, stack: Stack) -> None:
    async with await stack.client_for(credits=30) as client:
        key = client.headers["Authorization"].split()[1]
        ids = [await _submit_via_api(client, f"old {n}") for n in range(23)]
        await wait_all_terminal(client, ids, timeout=30)
    await sign_in(page, stack.url, key)
    await expect(page.get_by_test_id("task")).to_have_count(20)
    await page.get_by_role("button", name="Show older tasks").click()
    await expect(page.get_by_test_id("task")).to_have_count(23)
    await expect(page.get_by_role("button", name="Show older tasks")).to_be_hidden()
    assert await listed_ids(page) == ids[::-1]


@pytest.mark.simulator(job_seconds=0.5, steps=2)
async def test_a_midjourney_image_is_upscaled_from_the_page(page: Page, stack: Stack) -> None:
    key = await new_api_key(stack, credits=3)
    await sign_in(page, stack.url, key)
    await page.get_by_test_id("model").select_option("midjourney")
    parent = await submit_prompt(page, "a lighthouse at dusk")
    await expect(parent).to_have_attribute("data-status", "completed", timeout=30_000)
    await expect(page.locator("#credits")).to_have_text("2 credits")

    await parent.locator("[data-testid=action][data-action=upscale][data-index='2']").click()
    child = page.get_by_test_id("task").first
    await expect(child).not_to_have_attribute("data-task-id", await task_id_of(parent))
    await expect(child).to_have_attribute("data-status", "completed", timeout=30_000)
    await expect_image_rendered(child.get_by_test_id("result"))
    await expect(page.locator("#credits")).to_have_text("1 credit")
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {key}"}
    ) as api:
        shown = (await api.get(f"/v1/tasks/{await task_id_of(child)}")).json()
    assert shown["parent_id"] == await task_id_of(parent)
    assert shown["input"] == {"action": "upscale", "index": 2}
