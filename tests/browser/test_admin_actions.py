"""The dashboard acts (issue 17.3), in Chromium through API.md's data-testid hooks: stuck
pending tasks with their last error, find and open a task, retry it, cancel it with its refund,
pause and resume a vendor, replay dead letters since a time after a preview count; and the
page at 375 px wide: nothing cut off, nothing overlapping."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("playwright.async_api")

from playwright.async_api import Dialog, Locator, Page, expect

from db import queries
from tests.acceptance.stack import Stack
from tests.factories import make_task, make_user


async def sign_in_admin(page: Page, stack: Stack) -> None:
    async def accept(dialog: Dialog) -> None:
        await dialog.accept()

    page.on("dialog", accept)  # the confirmations of cancel and pause
    await page.goto(stack.url + "/admin")
    await page.get_by_test_id("admin-key").fill(stack.settings.admin_key or "")
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("state-count")).to_have_count(7)


async def waiting_task(stack: Stack, email: str, *, error: str | None = None) -> str:
    """A pending task the worker leaves alone for an hour (a registration backoff)."""
    async with stack.runtime.pool.acquire() as conn:
        user = await queries.get_user_by_email(conn, email=email)
        user_id = user.id if user else (await make_user(conn, credits=5, email=email))[0]
        task_id = await make_task(conn, user_id)
        await queries.schedule_registration_retry(
            conn, task_id=task_id, delay_seconds=3600, error=error or "ConnectError: vendor down"
        )
    return "tsk_" + task_id.hex


async def dead_letters(stack: Stack, n: int) -> None:
    async with stack.runtime.pool.acquire() as conn:
        user_id, _ = await make_user(conn, credits=n)
        for _ in range(n):
            task_id = await make_task(conn, user_id)
            await conn.execute(
                "UPDATE tasks SET next_attempt_at = now() + interval '1 hour' WHERE id = $1",
                task_id,
            )
            body = {"id": "p_dead", "status": "failed", "error": "the GPU melted", "logs": ""}
            await queries.record_delivery(
                conn,
                vendor="replicate",
                delivery_id=f"msg_{uuid.uuid4().hex}",
                task_id=task_id,
                status="rejected",
                outcome=None,
                error="the task was locked for too long",
                headers={},
                body=json.dumps(body).encode(),
            )


async def test_stuck_open_retry_and_cancel(page: Page, stack: Stack) -> None:
    retrying = await waiting_task(stack, "stuck@example.test", error="ConnectError: no route")
    await sign_in_admin(page, stack)

    # Stuck tasks include a pending task retrying its registration, with its last error.
    row = page.locator(f'[data-testid="stuck-task"][data-task-id="{retrying}"]')
    await expect(row).to_have_attribute("data-reason", "retrying")
    await expect(row.get_by_test_id("last-error")).to_have_text("ConnectError: no route")

    # Open it: the operator sees what the client does not; retry it now.
    await row.get_by_test_id("open-task").click()
    detail = page.get_by_test_id("task-detail")
    await expect(detail).to_have_attribute("data-task-id", retrying)
    await expect(detail.get_by_test_id("task-owner")).to_contain_text("stuck@example.test")
    await expect(detail.get_by_test_id("task-last-error")).to_have_text("ConnectError: no route")
    await expect(detail.get_by_test_id("task-ledger-row")).to_have_count(1)
    await detail.get_by_test_id("task-retry").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("registration is retried now")
    # The worker registers it with the simulator now, not in an hour.
    await expect(detail.get_by_test_id("task-vendor-job")).not_to_have_text("—", timeout=20_000)
    await expect(detail.get_by_test_id("task-event").first).to_be_visible()

    # Find another by its owner's email and cancel it with its refund.
    other = await waiting_task(stack, "stuck@example.test")
    await page.get_by_test_id("task-search").fill("stuck@example.test")
    await page.get_by_test_id("task-search-status").select_option("pending")
    await page.get_by_test_id("task-search-submit").click()
    found = page.locator(f'[data-testid="task-row"][data-task-id="{other}"]')
    await expect(page.get_by_test_id("task-row")).to_have_count(1)
    await found.get_by_test_id("open-task").click()
    await expect(detail).to_have_attribute("data-task-id", other)
    await detail.get_by_test_id("task-cancel").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("canceled and refunded")
    await expect(detail).to_have_attribute("data-status", "canceled")
    await expect(
        detail.locator('[data-testid="task-ledger-row"][data-kind="refund"]')
    ).to_have_count(1)
    await expect(detail.get_by_test_id("task-cancel")).to_be_hidden()


async def test_pause_and_resume_a_vendor(page: Page, stack: Stack) -> None:
    await sign_in_admin(page, stack)
    vendor = page.locator('[data-testid="vendor"][data-vendor="replicate"]')
    await vendor.get_by_test_id("vendor-pause").click()
    await expect(vendor).to_have_attribute("data-paused", "true")
    assert await stack.runtime.health["replicate"].permits() is None  # every process sees it
    async with await stack.client_for(credits=1) as client:
        r = await client.post(
            "/v1/tasks", json={"model": "black-forest-labs/flux-schnell", "input": {"prompt": "x"}}
        )
        task_id = r.json()["id"]
        models = (await client.get("/v1/models")).json()["data"]
        assert not models[0]["vendors"][0]["available"]
    await vendor.get_by_test_id("vendor-resume").click()
    await expect(vendor).to_have_attribute("data-paused", "false")
    # The task waited while the vendor was paused; resumed, it runs. (Its retry comes after the
    # breaker's cool-down: made due now, as an operator would.)
    async with stack.runtime.pool.acquire() as conn:
        await conn.execute(
            "UPDATE tasks SET next_attempt_at = now() WHERE id = $1 AND status = 'pending'",
            uuid.UUID(hex=task_id[4:]),
        )


async def test_replay_dead_letters_since_a_time(page: Page, stack: Stack) -> None:
    await dead_letters(stack, 2)
    await sign_in_admin(page, stack)
    await expect(page.get_by_test_id("dead-letter")).to_have_count(2)
    since = datetime.now(UTC).astimezone() - timedelta(hours=1)
    await page.get_by_test_id("replay-since").fill(since.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.get_by_test_id("replay-preview").click()
    await expect(page.get_by_test_id("replay-count")).to_have_text("2 dead letters")
    await page.get_by_test_id("replay-all").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("Replayed 2 dead letters")
    await expect(page.get_by_test_id("dead-letter")).to_have_count(0)


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


async def _box(locator: Locator) -> dict[str, float]:
    box = await locator.bounding_box()
    assert box is not None
    return {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}


async def test_usable_at_375_px(page: Page, stack: Stack, screenshots: Path) -> None:
    await dead_letters(stack, 1)
    await page.set_viewport_size({"width": 375, "height": 800})
    await sign_in_admin(page, stack)
    letter = page.get_by_test_id("dead-letter").first
    await expect(letter).to_be_visible()
    # Nothing wider than the screen: tables scroll inside their cards, not the page.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    # Replay does not overlap the delivery's id.
    assert not _overlap(
        await _box(letter.locator("code")), await _box(letter.get_by_test_id("replay"))
    )
    # The vendors table is all reachable: its last column (pause) scrolls into view.
    pause = page.locator('[data-testid="vendor"][data-vendor="replicate"]').get_by_test_id(
        "vendor-pause"
    )
    await pause.scroll_into_view_if_needed()
    await expect(pause).to_be_in_viewport()
    await page.screenshot(path=screenshots / "admin-375.png", full_page=True)
