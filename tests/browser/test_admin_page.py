"""The operator dashboard at `/admin`, through API.md's data-testid hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

from common.ids import format_task_id
from db import queries
from tests.acceptance.stack import Stack, wait_all_terminal
from tests.factories import make_task, make_user

STATES = ["pending", "submitted", "processing", "storing", "completed", "failed", "canceled"]


def count(page: Page, status: str):  # type: ignore[no-untyped-def]
    return page.locator(f'[data-testid="state-count"][data-status="{status}"]')


async def test_wrong_admin_key_shows_an_error(page: Page, stack: Stack) -> None:
    await page.goto(stack.url + "/admin")
    await page.get_by_test_id("admin-key").fill("not-the-admin-key")
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("error")).to_contain_text("not accepted")
    await expect(page.get_by_test_id("state-count")).to_have_count(0)
    assert await page.evaluate("sessionStorage.getItem('taskhook.adminKey')") is None


@pytest.mark.simulator(job_seconds=0.5)
async def test_dashboard_counts_vendors_and_dead_letter_replay(
    page: Page, stack: Stack, screenshots: Path
) -> None:
    async with await stack.client_for(credits=10) as client:
        ids = []
        for prompt in ("a calm sea", "a busy market", "fail-me please"):
            response = await client.post(
                "/v1/tasks",
                json={"model": "black-forest-labs/flux-schnell", "input": {"prompt": prompt}},
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        final = await wait_all_terminal(client, ids, timeout=30)
    assert sorted(t["status"] for t in final.values()) == ["completed", "completed", "failed"]

    # A dead letter: a validly signed callback for a live task that could not be applied then.
    async with stack.runtime.pool.acquire() as conn:
        user_id, _ = await make_user(conn, credits=1)
        task_id = await make_task(conn, user_id)
        # Keep the worker from registering it with the simulator while the test runs.
        await conn.execute(
            "UPDATE tasks SET next_attempt_at = now() + interval '1 hour' WHERE id = $1", task_id
        )
        body = {"id": "p_dead", "status": "failed", "error": "the GPU melted", "logs": ""}
        delivery_row_id = await queries.record_delivery(
            conn,
            vendor="replicate",
            delivery_id="msg_dead_letter",
            task_id=task_id,
            status="rejected",
            outcome=None,
            error="the task was locked for too long",
            headers={},
            body=json.dumps(body).encode(),
        )

    await page.goto(stack.url + "/admin")
    assert stack.settings.admin_key is not None
    await page.get_by_test_id("admin-key").fill(stack.settings.admin_key)
    await page.get_by_test_id("sign-in").click()

    await expect(page.get_by_test_id("state-count")).to_have_count(len(STATES))
    expected = {s: 0 for s in STATES} | {"completed": 2, "failed": 1, "pending": 1}
    for status, n in expected.items():
        await expect(count(page, status)).to_have_text(str(n))

    vendor = page.locator('[data-testid="vendor"][data-vendor="replicate"]')
    await expect(vendor).to_have_attribute("data-circuit", "closed")
    # Results lost to the vendor's retention, last day / ever (issue 16.4).
    await expect(vendor.get_by_test_id("results-expired")).to_have_text("0 / 0")

    letters = page.get_by_test_id("dead-letter")
    await expect(letters).to_have_count(1)
    letter = letters.first
    await expect(letter).to_have_attribute("data-delivery-id", str(delivery_row_id))
    await expect(letter).to_contain_text(format_task_id(task_id))
    await expect(page.locator("#refunds")).to_contain_text(ids[2])
    await page.screenshot(path=screenshots / "admin-dashboard.png", full_page=True)

    await letter.get_by_test_id("replay").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("applied")
    await expect(page.get_by_test_id("dead-letter")).to_have_count(0)
    await expect(count(page, "failed")).to_have_text("2")
    await expect(count(page, "pending")).to_have_text("0")
    await expect(page.locator("#refunds")).to_contain_text(format_task_id(task_id))
    async with stack.runtime.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status.value == "failed" and task.refunded

    # The key is remembered for the tab, and the dashboard keeps itself current.
    await page.reload()
    await expect(page.get_by_test_id("admin-key")).to_be_hidden()
    await expect(count(page, "completed")).to_have_text("2")
    async with await stack.client_for(credits=1) as client:
        response = await client.post(
            "/v1/tasks",
            json={"model": "black-forest-labs/flux-schnell", "input": {"prompt": "one more"}},
        )
        assert response.status_code == 202
        await wait_all_terminal(client, [response.json()["id"]], timeout=30)
    await expect(count(page, "completed")).to_have_text("3", timeout=10_000)


async def test_client_webhooks_panel_and_replay(page: Page, stack: Stack) -> None:
    """Issue 18: failing destinations, failed events, and a replay from the dashboard."""
    from common.states import TaskStatus
    from db.transition import transition
    from lifecycle import client_webhooks
    from lifecycle.client_webhooks import ClientWebhook

    async with stack.runtime.pool.acquire() as conn:
        user_id, _ = await make_user(conn, credits=1)
        task_id = await make_task(conn, user_id)
        await client_webhooks.attach(
            conn,
            task_id=task_id,
            user_id=user_id,
            webhook=ClientWebhook("https://dead.invalid/hook", ("completed",)),
        )
        await conn.execute(
            "UPDATE tasks SET next_attempt_at = now() + interval '1 hour' WHERE id = $1", task_id
        )
        async with conn.transaction():  # the stack's worker never sees it pending
            await transition(
                conn, task_id=task_id, to=TaskStatus.CANCELED, event_key="c", cause="t"
            )
            event_id = await conn.fetchval(
                "UPDATE webhook_outbox SET state = 'failed', attempts = 8, last_status = 503"
                " WHERE task_id = $1 RETURNING id",
                task_id,
            )

    await page.goto(stack.url + "/admin")
    assert stack.settings.admin_key is not None
    await page.get_by_test_id("admin-key").fill(stack.settings.admin_key)
    await page.get_by_test_id("sign-in").click()
    destination = page.locator('[data-testid="webhook-destination"][data-host="dead.invalid"]')
    await expect(destination).to_contain_text("503")
    event = page.locator(f'[data-testid="webhook-event"][data-event-id="{event_id}"]')
    await expect(event).to_have_attribute("data-state", "failed")
    await expect(event).to_contain_text(format_task_id(task_id))
    await event.get_by_test_id("webhook-replay").click()
    await expect(page.get_by_test_id("notice")).to_contain_text("sent again")
    # The worker tries again at once; the name does not resolve, so it is retried later.
    await expect(event).to_have_attribute("data-state", "pending")
