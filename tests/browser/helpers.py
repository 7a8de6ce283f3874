"""Small steps the browser tests share: users, signing in, watching what the page shows."""

from __future__ import annotations

import os
from typing import Any

from playwright.async_api import Locator, Page, expect

from lifecycle.users import create_user
from tests.acceptance.stack import Stack

# Installed into a page: remembers every (task, status, progress) the list showed, in order, so
# a test can tell that progress was shown live and not only at the end.
RECORD_CHANGES = """() => {
  window.__seen = [];
  const note = () => {
    for (const task of document.querySelectorAll('[data-testid="task"]')) {
      const progress = task.querySelector('[data-testid="progress"]');
      const entry = [task.dataset.taskId, task.dataset.status, progress && progress.textContent];
      const last = window.__seen.filter(e => e[0] === entry[0]).pop();
      if (!last || last[1] !== entry[1] || last[2] !== entry[2]) window.__seen.push(entry);
    }
  };
  note();
  new MutationObserver(note).observe(document.getElementById("tasks"),
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""


async def new_api_key(stack: Stack, *, credits: int) -> str:
    async with stack.runtime.pool.acquire() as conn:
        _, key = await create_user(
            conn, email=f"browser-{os.urandom(4).hex()}@example.test", credits=credits
        )
    return key


async def sign_in(page: Page, url: str, key: str) -> None:
    await page.goto(url + "/")
    await page.get_by_test_id("api-key").fill(key)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("prompt")).to_be_visible()
    await signed_in(page)


async def signed_in(page: Page) -> None:
    """The page has its lists: every unfinished task and the newest page of history, and the
    models the deployment serves."""
    await expect(page.get_by_test_id("prompt")).to_be_visible()
    await expect(page.locator("#tasks")).to_have_attribute("aria-busy", "false")
    await expect(page.get_by_test_id("model")).to_have_attribute("aria-busy", "false")


async def submit_prompt(page: Page, prompt: str) -> Locator:
    """Submit from the page; the new task's element (it is listed first, newest first)."""
    await signed_in(page)
    before = await page.get_by_test_id("task").count()
    await page.get_by_test_id("prompt").fill(prompt)
    await page.get_by_test_id("submit").click()
    await expect(page.get_by_test_id("task")).to_have_count(before + 1)
    return task_locator(page, await task_id_of(page.get_by_test_id("task").first))


async def task_id_of(task: Locator) -> str:
    task_id = await task.get_attribute("data-task-id")
    assert task_id and task_id.startswith("tsk_"), task_id
    return task_id


def task_locator(page: Page, task_id: str) -> Locator:
    return page.locator(f'[data-testid="task"][data-task-id="{task_id}"]')


async def expect_image_rendered(image: Locator) -> None:
    """The result is a real, decoded image, not a broken-image icon."""
    await expect(image).to_be_visible()
    handle = await image.element_handle()
    await image.page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=handle, timeout=15_000
    )


async def listed_ids(page: Page) -> list[str | None]:
    return [await t.get_attribute("data-task-id") for t in await page.get_by_test_id("task").all()]


async def seen(page: Page) -> list[Any]:
    result: list[Any] = await page.evaluate("window.__seen")
    return result
