"""The one transition function against real PostgreSQL: rules, duplicates, refunds, races."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from common.states import ACTIVE, CANCELABLE, REFUNDING, TaskStatus, rank
from db import queries
from db.pool import connect, create_pool
from db.transition import Outcome, transition
from tests.factories import make_task, make_user

Conn = asyncpg.Connection

# How to reach each state from pending, one applied event at a time.
PATHS: dict[TaskStatus, list[TaskStatus]] = {
    TaskStatus.PENDING: [],
    TaskStatus.SUBMITTED: [TaskStatus.SUBMITTED],
    TaskStatus.PROCESSING: [TaskStatus.PROCESSING],
    TaskStatus.STORING: [TaskStatus.STORING],
    TaskStatus.COMPLETED: [TaskStatus.STORING, TaskStatus.COMPLETED],
    TaskStatus.FAILED: [TaskStatus.FAILED],
    TaskStatus.CANCELED: [TaskStatus.CANCELED],
}


async def task_in(conn: Conn, state: TaskStatus) -> tuple[uuid.UUID, uuid.UUID]:
    user_id, _ = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    for step in PATHS[state]:
        result = await transition(
            conn, task_id=task_id, to=step, event_key=f"setup:{step}", cause="test"
        )
        assert result.outcome is Outcome.APPLIED
    return user_id, task_id


async def ledger(conn: Conn, task_id: uuid.UUID) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT kind, amount FROM credit_ledger WHERE task_id = $1 ORDER BY id", task_id
    )
    return [(r["kind"], r["amount"]) for r in rows]


async def status_of(conn: Conn, task_id: uuid.UUID) -> TaskStatus:
    return TaskStatus(await conn.fetchval("SELECT status::text FROM tasks WHERE id = $1", task_id))


@pytest.mark.parametrize(
    ("current", "target"),
    [(c, t) for c, t in itertools.product(TaskStatus, TaskStatus) if t is not TaskStatus.PENDING],
)
async def test_every_pair_of_states(conn: Conn, current: TaskStatus, target: TaskStatus) -> None:
    user_id, task_id = await task_in(conn, current)
    balance_before = await conn.fetchval("SELECT balance FROM users WHERE id = $1", user_id)
    result = await transition(
        conn, task_id=task_id, to=target, event_key="under-test", cause="test"
    )
    should_apply = current in ACTIVE and rank(target) > rank(current)
    if target is TaskStatus.CANCELED:
        should_apply = current in CANCELABLE  # not once the vendor has succeeded
    assert result.outcome is (Outcome.APPLIED if should_apply else Outcome.STALE)
    assert await status_of(conn, task_id) is (target if should_apply else current)
    refunded_now = should_apply and target in REFUNDING
    balance_after = await conn.fetchval("SELECT balance FROM users WHERE id = $1", user_id)
    assert balance_after - balance_before == (1 if refunded_now else 0)
    # audit row written either way, with whether it applied
    event = await conn.fetchrow(
        "SELECT from_status::text, to_status::text, applied FROM task_events"
        " WHERE task_id = $1 AND event_key = 'under-test'",
        task_id,
    )
    assert event is not None
    assert (event["from_status"], event["to_status"], event["applied"]) == (
        current.value,
        target.value,
        should_apply,
    )


async def test_same_event_twice_is_a_duplicate(conn: Conn) -> None:
    _, task_id = await task_in(conn, TaskStatus.SUBMITTED)
    first = await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.FAILED,
        event_key="e1",
        cause="test",
        error={"code": "vendor_failed", "message": "x"},
    )
    second = await transition(
        conn, task_id=task_id, to=TaskStatus.FAILED, event_key="e1", cause="test"
    )
    assert (first.outcome, second.outcome) == (Outcome.APPLIED, Outcome.DUPLICATE)
    assert first.refunded and not second.refunded
    assert await ledger(conn, task_id) == [("charge", -1), ("refund", 1)]


async def test_two_different_failures_refund_once(conn: Conn) -> None:
    _, task_id = await task_in(conn, TaskStatus.PROCESSING)
    a = await transition(conn, task_id=task_id, to=TaskStatus.FAILED, event_key="a", cause="t")
    b = await transition(conn, task_id=task_id, to=TaskStatus.CANCELED, event_key="b", cause="t")
    assert (a.outcome, b.outcome) == (Outcome.APPLIED, Outcome.STALE)
    assert await ledger(conn, task_id) == [("charge", -1), ("refund", 1)]


async def test_success_before_processing_skips_ahead(conn: Conn) -> None:
    _, task_id = await task_in(conn, TaskStatus.PENDING)
    done = await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.STORING,
        event_key="ok",
        cause="t",
        outputs=["https://x/0.png"],
        vendor_task_id="p1",
    )
    late = await transition(
        conn, task_id=task_id, to=TaskStatus.PROCESSING, event_key="proc", cause="t", progress=50
    )
    assert (done.outcome, late.outcome) == (Outcome.APPLIED, Outcome.STALE)
    row = await conn.fetchrow(
        "SELECT status::text, progress, outputs FROM tasks WHERE id=$1", task_id
    )
    assert row is not None
    assert row["status"] == "storing" and row["progress"] == 0
    assert row["outputs"] == ["https://x/0.png"]


async def test_progress_only_grows(conn: Conn) -> None:
    _, task_id = await task_in(conn, TaskStatus.SUBMITTED)
    outcomes = []
    for key, progress in [("p40", 40), ("p20", 20), ("p60", 60), ("p60b", 60)]:
        result = await transition(
            conn,
            task_id=task_id,
            to=TaskStatus.PROCESSING,
            event_key=key,
            cause="t",
            progress=progress,
        )
        outcomes.append(result.outcome)
    assert outcomes == [Outcome.APPLIED, Outcome.STALE, Outcome.APPLIED, Outcome.STALE]
    assert await conn.fetchval("SELECT progress FROM tasks WHERE id = $1", task_id) == 60


async def test_completed_sets_progress_to_100(conn: Conn) -> None:
    _, task_id = await task_in(conn, TaskStatus.STORING)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.COMPLETED,
        event_key="c",
        cause="t",
        result={"files": []},
    )
    row = await conn.fetchrow("SELECT progress, completed_at FROM tasks WHERE id = $1", task_id)
    assert row is not None
    assert row["progress"] == 100 and row["completed_at"] is not None


async def test_stale_event_still_keeps_the_vendor_id(conn: Conn) -> None:
    """A callback overtook registration; registration's stale move must not lose the id."""
    _, task_id = await task_in(conn, TaskStatus.PROCESSING)
    result = await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.SUBMITTED,
        event_key="reg",
        cause="registration",
        vendor_task_id="pred-1",
    )
    assert result.outcome is Outcome.STALE
    assert await conn.fetchval("SELECT vendor_task_id FROM tasks WHERE id=$1", task_id) == "pred-1"


async def test_vendor_id_is_never_overwritten(conn: Conn) -> None:
    _, task_id = await task_in(conn, TaskStatus.PENDING)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.SUBMITTED,
        event_key="a",
        cause="t",
        vendor_task_id="first",
    )
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.PROCESSING,
        event_key="b",
        cause="t",
        vendor_task_id="second",
    )
    assert await conn.fetchval("SELECT vendor_task_id FROM tasks WHERE id=$1", task_id) == "first"


async def test_unknown_task(conn: Conn) -> None:
    result = await transition(
        conn, task_id=uuid.uuid4(), to=TaskStatus.FAILED, event_key="x", cause="t"
    )
    assert result.outcome is Outcome.NOT_FOUND


async def test_notify_is_sent_with_the_move(conn: Conn, db_url: str) -> None:
    listener = await connect(db_url)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("taskhook_tasks", lambda *args: received.put_nowait(args[3]))
    try:
        _, task_id = await task_in(conn, TaskStatus.SUBMITTED)
        await transition(
            conn, task_id=task_id, to=TaskStatus.PROCESSING, event_key="n", cause="t", progress=30
        )
        payloads = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
        assert any('"status" : "processing"' in p and '"progress" : 30' in p for p in payloads)
    finally:
        await listener.close()


async def test_same_event_fifty_times_in_parallel_moves_once(conn: Conn, db_url: str) -> None:
    _, task_id = await task_in(conn, TaskStatus.SUBMITTED)
    pool = await create_pool(db_url, min_size=10, max_size=10)
    try:

        async def deliver() -> Outcome:
            async with pool.acquire() as c:
                r = await transition(
                    c,
                    task_id=task_id,
                    to=TaskStatus.FAILED,
                    event_key="webhook:msg_1",
                    cause="webhook",
                )
                return r.outcome

        outcomes = await asyncio.gather(*(deliver() for _ in range(50)))
    finally:
        await pool.close()
    assert outcomes.count(Outcome.APPLIED) == 1
    assert outcomes.count(Outcome.DUPLICATE) == 49
    assert await ledger(conn, task_id) == [("charge", -1), ("refund", 1)]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM task_events WHERE task_id=$1 AND event_key='webhook:msg_1'",
            task_id,
        )
        == 1
    )


async def test_failure_racing_cancel_refunds_once(conn: Conn, db_url: str) -> None:
    for _ in range(10):
        user_id, task_id = await task_in(conn, TaskStatus.PROCESSING)
        pool = await create_pool(db_url, min_size=2, max_size=2)
        try:

            async def move(
                to: TaskStatus, key: str, pool: Any = pool, task_id: uuid.UUID = task_id
            ) -> Outcome:
                async with pool.acquire() as c:
                    return (
                        await transition(c, task_id=task_id, to=to, event_key=key, cause="race")
                    ).outcome

            outcomes = await asyncio.gather(
                move(TaskStatus.FAILED, "webhook:f"), move(TaskStatus.CANCELED, "cancel")
            )
        finally:
            await pool.close()
        assert sorted(outcomes) == sorted([Outcome.APPLIED, Outcome.STALE])
        assert await ledger(conn, task_id) == [("charge", -1), ("refund", 1)]
        assert await conn.fetchval("SELECT balance FROM users WHERE id=$1", user_id) == 5
        assert not await queries.audit_balances(conn)
        assert not await queries.audit_refunds(conn)


async def test_a_progress_report_is_a_hot_update_that_keeps_the_poll_date(conn: Conn) -> None:
    """Progress reports come every second or so for a running job. One that leaves the status
    as it was records its later poll date in poll_not_before (not indexed) and leaves the
    indexed next_poll_at alone, so with room on the page the new row version is HOT: no
    entries in the six indexes of tasks. The reconciler's claim honours poll_not_before."""
    _, task_id = await task_in(conn, TaskStatus.PROCESSING)
    first = datetime.now(UTC) + timedelta(seconds=15)
    later = first + timedelta(seconds=5)

    async def report(key: str, progress: int, poll: datetime) -> None:
        result = await transition(
            conn,
            task_id=task_id,
            to=TaskStatus.PROCESSING,
            event_key=key,
            cause="test",
            progress=progress,
            next_poll_at=poll,
        )
        assert result.outcome is Outcome.APPLIED

    async def poll_dates() -> tuple[Any, ...]:
        row = await conn.fetchrow(
            "SELECT next_poll_at, poll_not_before FROM tasks WHERE id = $1", task_id
        )
        assert row is not None
        return tuple(row)

    await report("p1", 10, first)  # no date stored yet: it is set
    assert await poll_dates() == (first, first)
    hot = "SELECT pg_stat_get_xact_tuples_hot_updated('tasks'::regclass)"
    async with conn.transaction():
        before = await conn.fetchval(hot)
        await report("p2", 20, later)
        assert await conn.fetchval(hot) == before + 1
    assert await poll_dates() == (first, later)
    sooner = datetime.now(UTC) + timedelta(seconds=1)
    await report("p3", 30, sooner)  # an earlier date does move the index
    assert await poll_dates() == (sooner, sooner)
    storing = await transition(
        conn, task_id=task_id, to=TaskStatus.STORING, event_key="s", cause="t"
    )
    assert storing.outcome is Outcome.APPLIED
    assert await poll_dates() == (None, None)  # a new status sets the date it asks for
