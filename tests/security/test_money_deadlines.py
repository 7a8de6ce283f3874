"""Issue 14.14: a task ends (and is refunded) by its deadline plus one reconciler interval,
whatever TASKHOOK_POLL_AFTER says, and `taskhook audit` allows exactly that much.

With callbacks lost and TASKHOOK_POLL_AFTER=600, tasks stayed `submitted` minutes past a 45 s
deadline: the overdue claim waited for next_poll_at, which fresh vendor news (or a poll's back
off) had pushed 600 s out. The overdue claim now has a lease of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from click.testing import CliRunner

from common.ids import parse_task_id
from common.settings import Settings
from common.states import TaskStatus
from db import queries
from lifecycle.audit import default_grace
from lifecycle.reconcile import run_reconciler
from lifecycle.runtime import Runtime
from lifecycle.vendor_updates import apply_update
from taskhook.cli import cli
from tests.acceptance.stack import wait_for
from tests.factories import make_task, make_user
from tests.scripted_vendor import ScriptedVendor, install, update
from tests.security.conftest import auth_header

INTERVAL = 1.0  # the reconciler's pause between passes in this test
DEADLINE = 2.0


@pytest.fixture
def vendor(runtime: Runtime) -> ScriptedVendor:
    """A vendor that takes jobs, never calls back, and answers every poll "still running"."""
    runtime.settings = runtime.settings.with_overrides(poll_after=600.0, task_deadline=DEADLINE)
    scripted = ScriptedVendor("replicate")
    install(runtime, scripted)
    return scripted


@pytest.mark.parametrize("news", ["none", "progress"])
async def test_a_task_ends_by_its_deadline_plus_one_interval_whatever_poll_after_says(
    app: httpx.AsyncClient, runtime: Runtime, vendor: ScriptedVendor, news: str
) -> None:
    headers = await auth_header(runtime, credits=3)
    r = await app.post("/v1/tasks", json={"model": "a/b", "input": {}}, headers=headers)
    assert r.status_code == 202, r.text
    await runtime.drain()
    task_id = parse_task_id(r.json()["id"])
    assert task_id is not None
    if news == "progress":
        # Fresh news from the vendor: the next poll is TASKHOOK_POLL_AFTER away.
        async with runtime.pool.acquire() as conn:
            task = await queries.get_task(conn, task_id=task_id, user_id=None)
            assert task is not None and task.vendor_task_id is not None
            await apply_update(
                conn,
                task_id=task_id,
                vendor="replicate",
                update=update(task.vendor_task_id, TaskStatus.PROCESSING, progress=40),
                event_key="webhook:progress",
                cause="webhook",
                poll_after=runtime.settings.poll_after,
            )
    async with runtime.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.next_poll_at is not None
    assert (task.next_poll_at - task.deadline_at).total_seconds() > 500
    ends_by = task.deadline_at.timestamp() + INTERVAL

    stop = asyncio.Event()
    loop = asyncio.create_task(run_reconciler(runtime, stop, interval=INTERVAL))
    try:

        async def ended() -> bool:
            got = await app.get(f"/v1/tasks/{r.json()['id']}", headers=headers)
            return bool(got.json()["status"] == "failed")

        # The bound, plus what one pass and this check may take on a busy machine.
        await wait_for(ended, timeout=ends_by - time.time() + 3.0, what="the deadline's failure")
    finally:
        stop.set()
        await loop
    got = (await app.get(f"/v1/tasks/{r.json()['id']}", headers=headers)).json()
    assert got["error"]["code"] == "deadline_exceeded" and got["refunded"]
    # One last poll before giving up, as ever: a success that beat the deadline is kept.
    assert len(vendor.called("fetch")) >= 1
    assert datetime.fromisoformat(got["completed_at"]) >= task.deadline_at.astimezone(UTC)


def test_the_audit_allows_one_cron_interval_and_one_last_poll() -> None:
    settings = Settings(registration_timeout=10.0)
    assert default_grace(settings) == 70.0


async def test_taskhook_audit_flags_a_task_open_past_that_allowance_and_not_before(
    runtime: Runtime, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TASKHOOK_VENDOR_TIMEOUT", "10")
    monkeypatch.setenv("TASKHOOK_DATA_DIR", str(runtime.settings.data_dir))
    async with runtime.pool.acquire() as conn:
        user_id, _ = await make_user(conn, credits=5)
        within = await make_task(conn, user_id, deadline_seconds=-60)
        past = await make_task(conn, user_id, deadline_seconds=-80)

    result = await asyncio.to_thread(CliRunner().invoke, cli, ["audit"])
    assert result.exit_code == 1, result.output
    flagged = {row["id"] for row in json.loads(result.output)["overdue_open_tasks"]}
    assert flagged == {"tsk_" + past.hex}, (within, flagged)  # as `tasks show` takes it
