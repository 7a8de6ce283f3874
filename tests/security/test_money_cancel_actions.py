"""Issue 14.2 and 14.3: no refund for a job the vendor finished, no deadlock between the two.

* Cancel used to succeed (and refund) while the task was `storing`: the vendor had done the
  job. Raced with a follow-up action on a midjourney task it gave two vendor jobs for one
  credit. Now cancel answers 409 `already_finished` once the vendor reported success, and a
  follow-up is inserted only under a share lock on a parent that the vendor finished.
* The same race once deadlocked: create_task locked the user and then (foreign key) the
  parent, the transition the task and then the user. Now rows are locked in one order (tasks,
  then users), and a deadlock or serialization failure, should one ever happen, is a 503 with
  Retry-After, never a 500.
* A follow-up on a parent in `storing` used the vendor's job; when storing the parent then
  failed, the parent was refunded, so the client had that job for free. Now a task with a
  follow-up keeps its charge when it fails after the vendor's success (0021).
"""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from common.ids import parse_task_id
from common.states import TaskStatus
from db import queries
from db.models import Task
from db.pool import connect
from db.transition import transition
from lifecycle.audit import run_audit
from lifecycle.results import store_result
from lifecycle.runtime import Runtime
from tests.acceptance.stack import wait_for
from tests.scripted_vendor import ScriptedVendor, install, update
from tests.security.conftest import assert_error, auth_header

Conn = asyncpg.Connection


@pytest.fixture
def mj(runtime: Runtime) -> ScriptedVendor:
    vendor = ScriptedVendor(
        "midjourney", signed_callbacks=False, actions=frozenset({"upscale", "variation", "reroll"})
    )
    install(runtime, vendor)
    return vendor


async def load(runtime: Runtime, public_id: str) -> Task:
    await runtime.drain()
    task_id = parse_task_id(public_id)
    assert task_id is not None
    async with runtime.pool.acquire() as conn:
        task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None
    return task


async def parent_at(
    app: httpx.AsyncClient,
    runtime: Runtime,
    headers: dict[str, str],
    status: TaskStatus,
    outputs: list[str] | None = None,
) -> Task:
    """A midjourney task the vendor holds, moved here as its callbacks would move it."""
    r = await app.post(
        "/v1/tasks",
        json={"model": "midjourney", "vendor": "midjourney", "input": {"prompt": "x"}},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    parent = await load(runtime, r.json()["id"])
    assert parent.status is TaskStatus.SUBMITTED
    path = {
        TaskStatus.SUBMITTED: [],
        TaskStatus.PROCESSING: [TaskStatus.PROCESSING],
        TaskStatus.STORING: [TaskStatus.STORING],
        TaskStatus.COMPLETED: [TaskStatus.STORING, TaskStatus.COMPLETED],
        TaskStatus.FAILED: [TaskStatus.FAILED],
    }[status]
    async with runtime.pool.acquire() as conn:
        for step in path:
            await transition(
                conn,
                task_id=parent.id,
                to=step,
                event_key=f"t:{step}",
                cause="test",
                outputs=(outputs or ["http://files.invalid/1.png"])
                if step is TaskStatus.STORING
                else None,
            )
    return await load(runtime, parent.public_id)


async def credits(app: httpx.AsyncClient, headers: dict[str, str]) -> int:
    value: int = (await app.get("/v1/me", headers=headers)).json()["credits"]
    return value


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (TaskStatus.STORING, "already_finished"),
        (TaskStatus.COMPLETED, "already_finished"),
        (TaskStatus.FAILED, "already_terminal"),
    ],
)
async def test_cancel_after_the_vendor_finished_is_409_and_refunds_nothing(
    app: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor, status: TaskStatus, code: str
) -> None:
    headers = await auth_header(runtime, credits=5)
    parent = await parent_at(app, runtime, headers, status)
    before = await credits(app, headers)
    r = await app.post(f"/v1/tasks/{parent.public_id}/cancel", headers=headers)
    assert_error(r, 409, code)
    after = await load(runtime, parent.public_id)
    assert (after.status, after.refunded) == (status, status is TaskStatus.FAILED)
    assert await credits(app, headers) == before
    assert mj.called("cancel") == []


async def test_cancel_before_the_vendor_finished_still_refunds(
    app: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    headers = await auth_header(runtime, credits=5)
    parent = await parent_at(app, runtime, headers, TaskStatus.PROCESSING)
    r = await app.post(f"/v1/tasks/{parent.public_id}/cancel", headers=headers)
    assert (r.status_code, r.json()["status"], r.json()["refunded"]) == (200, "canceled", True)
    assert await credits(app, headers) == 5


async def test_a_parent_a_follow_up_acted_on_keeps_its_charge_when_storing_it_fails(
    app: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    """Parent storing, an action on it (202), then the worker cannot store the parent (more
    files than a task may keep): the parent fails as ever, without a refund; the child
    stands, charged; the audit balances."""
    headers = await auth_header(runtime, credits=5)
    too_many = [f"http://files.invalid/{i}.png" for i in range(runtime.settings.max_outputs + 1)]
    parent = await parent_at(app, runtime, headers, TaskStatus.STORING, outputs=too_many)
    r = await app.post(
        f"/v1/tasks/{parent.public_id}/actions",
        json={"action": "upscale", "index": 1},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    assert await credits(app, headers) == 3
    await store_result(runtime, task_id=parent.id, attempt=1, owner="test")
    r = await app.get(f"/v1/tasks/{parent.public_id}", headers=headers)
    assert r.status_code == 200, r.text
    failed = r.json()
    assert (failed["status"], failed["error"]["code"], failed["refunded"]) == (
        "failed",
        "output_limit_exceeded",
        False,
    )
    assert await credits(app, headers) == 3
    async with runtime.pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM credit_ledger WHERE task_id = $1 AND kind = 'refund'",
                parent.id,
            )
            == 0
        )
        assert (await run_audit(conn)).ok


async def test_a_parent_without_a_follow_up_is_still_refunded_when_storing_it_fails(
    app: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    headers = await auth_header(runtime, credits=5)
    too_many = [f"http://files.invalid/{i}.png" for i in range(runtime.settings.max_outputs + 1)]
    parent = await parent_at(app, runtime, headers, TaskStatus.STORING, outputs=too_many)
    await store_result(runtime, task_id=parent.id, attempt=1, owner="test")
    r = await app.get(f"/v1/tasks/{parent.public_id}", headers=headers)
    assert (r.json()["status"], r.json()["refunded"]) == ("failed", True)
    assert await credits(app, headers) == 5
    async with runtime.pool.acquire() as conn:
        assert (await run_audit(conn)).ok


TRIES = 24


async def test_cancel_racing_an_action_never_gives_two_jobs_for_one_credit(
    app: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor
) -> None:
    """The review's race, many times: the parent is `storing` here, or still `processing` here
    while the vendor has finished it (the action confirms it with the vendor, the cancel does
    not). Whoever wins, a child exists only on a parent that stays charged."""
    headers = await auth_header(runtime, credits=3 * TRIES)
    outcomes: list[tuple[int, int]] = []
    for i in range(TRIES):
        local = TaskStatus.STORING if i % 2 else TaskStatus.PROCESSING
        parent = await parent_at(app, runtime, headers, local)
        assert parent.vendor_task_id is not None
        mj.on_fetch[:] = [update(parent.vendor_task_id, TaskStatus.STORING)]
        cancel, action = await asyncio.gather(
            app.post(f"/v1/tasks/{parent.public_id}/cancel", headers=headers),
            app.post(
                f"/v1/tasks/{parent.public_id}/actions",
                json={"action": "upscale", "index": 1 + i % 4},
                headers=headers,
            ),
        )
        outcomes.append((cancel.status_code, action.status_code))
        assert cancel.status_code in (200, 409), cancel.text
        assert action.status_code in (202, 409), action.text
        assert not (cancel.status_code == 200 and action.status_code == 202), (i, local)
        after = await load(runtime, parent.public_id)
        if action.status_code == 202:
            assert cancel.json()["error"]["code"] == "already_finished"
            assert after.status in (TaskStatus.STORING, TaskStatus.COMPLETED)
            assert not after.refunded
        if local is TaskStatus.STORING:
            assert (cancel.status_code, action.status_code) == (409, 202)
    await runtime.drain()
    async with runtime.pool.acquire() as conn:
        # Every child's parent was charged and kept its charge; one vendor job per child.
        children = await conn.fetch(
            "SELECT c.id, p.status::text AS parent_status,"
            " EXISTS (SELECT FROM credit_ledger l WHERE l.task_id = p.id AND l.kind = 'refund')"
            "   AS parent_refunded"
            " FROM tasks c JOIN tasks p ON p.id = c.parent_id"
        )
        assert len(children) == sum(1 for _, a in outcomes if a == 202)
        assert all(not c["parent_refunded"] for c in children)
        assert {c["parent_status"] for c in children} <= {"storing", "completed"}
        assert len(mj.called("action")) == len(children)
        spent = await conn.fetchval(
            "SELECT -sum(amount) FROM credit_ledger WHERE kind IN ('charge', 'refund')"
        )
        jobs_kept = await conn.fetchval(
            "SELECT count(*) FROM tasks t WHERE NOT EXISTS"
            " (SELECT FROM credit_ledger l WHERE l.task_id = t.id AND l.kind = 'refund')"
        )
        assert spent == jobs_kept, "one credit for every job not refunded"
        report = await run_audit(conn)
        assert report.balance_mismatches == report.ledger_mismatches == []
    assert await credits(app, headers) == 3 * TRIES - spent


async def waiting_on_locks(conn: Conn) -> int:
    value: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return value


async def test_an_action_locks_its_parent_before_the_user_so_a_parents_move_cannot_deadlock(
    app: httpx.AsyncClient, runtime: Runtime, mj: ScriptedVendor, db_url: str
) -> None:
    """Made deterministic with a third transaction holding the user's row. The action must
    already hold its parent when it waits for the user; a move of the parent that refunds its
    user (the worker giving up on storing it: task, then user) then waits for the action. In
    the old order the action waited for the user holding nothing, took the user, then wanted
    the parent the failing move held while it wanted the user: a deadlock, answered 500."""
    headers = await auth_header(runtime, credits=5)
    parent = await parent_at(app, runtime, headers, TaskStatus.STORING)
    holder, probe, worker = [await connect(db_url) for _ in range(3)]
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT FROM users WHERE id = $1 FOR UPDATE", parent.user_id)
        action = asyncio.create_task(
            app.post(
                f"/v1/tasks/{parent.public_id}/actions",
                json={"action": "variation", "index": 2},
                headers=headers,
            )
        )

        async def waiting(n: int) -> bool:
            return await waiting_on_locks(probe) == n

        await wait_for(lambda: waiting(1), timeout=10, what="the action to wait for the user")
        # The action holds its parent while it waits: nothing may move the parent now.
        with pytest.raises(asyncpg.LockNotAvailableError):
            async with probe.transaction():
                await probe.execute("SELECT FROM tasks WHERE id = $1 FOR UPDATE NOWAIT", parent.id)
        # A client's cancel is refused outright: the vendor finished the parent.
        cancel = await app.post(f"/v1/tasks/{parent.public_id}/cancel", headers=headers)
        assert_error(cancel, 409, "already_finished")
        storage_failed = asyncio.create_task(
            transition(
                worker,
                task_id=parent.id,
                to=TaskStatus.FAILED,
                event_key="storage",
                cause="worker",
                error={"code": "storage_failed", "message": "gone"},
            )
        )
        await wait_for(lambda: waiting(2), timeout=10, what="the move to queue behind the action")
        await hold.commit()
        done_action, moved = await asyncio.wait_for(asyncio.gather(action, storage_failed), 30)
    finally:
        for c in (holder, probe, worker):
            await c.close()
    assert done_action.status_code == 202, done_action.text
    assert moved.applied
    # The follow-up committed while the move waited for its parent: the move saw it (its
    # own snapshot, taken after the lock) and kept the parent's charge.
    assert not moved.refunded
    async with runtime.pool.acquire() as conn:
        assert (await run_audit(conn)).ok


@pytest.mark.parametrize(
    ("errcode", "sqlstate"), [("deadlock_detected", "40P01"), ("serialization_failure", "40001")]
)
async def test_a_transaction_postgresql_rolls_back_is_503_with_retry_after_not_500(
    app: httpx.AsyncClient,
    runtime: Runtime,
    mj: ScriptedVendor,
    conn: Conn,
    errcode: str,
    sqlstate: str,
) -> None:
    """PostgreSQL's verdict is made real by a test-only trigger on the task's move: whatever
    path meets one, nothing was written and the client is told to retry."""
    headers = await auth_header(runtime, credits=5)
    parent = await parent_at(app, runtime, headers, TaskStatus.PROCESSING)
    await conn.execute(
        f"""
        CREATE FUNCTION test_rolled_back() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'chosen as the victim' USING ERRCODE = '{errcode}'; END $$;
        CREATE TRIGGER test_rolled_back BEFORE UPDATE OF status ON tasks
            FOR EACH ROW EXECUTE FUNCTION test_rolled_back();
        """
    )
    r = await app.post(f"/v1/tasks/{parent.public_id}/cancel", headers=headers)
    assert_error(r, 503, "unavailable")
    assert r.headers["retry-after"].isdigit()
    after = await load(runtime, parent.public_id)
    assert (after.status, after.refunded) == (TaskStatus.PROCESSING, False)
    assert await credits(app, headers) == 4
    assert sqlstate in (asyncpg.DeadlockDetectedError.sqlstate, asyncpg.SerializationError.sqlstate)
