"""Group commit (db/group_commit.py) and the batched receive (taskhook_receive_many).

The batching is only worth having if it changes nothing a caller can see: each delivery gets
the answer it would have got alone, one bad delivery fails only itself, and a broken
connection fails exactly the batch it broke. Batches are formed deterministically here by
holding the first commit open while more callers arrive.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from common.states import TaskStatus
from db import queries
from db.group_commit import GroupCommit
from db.pool import connect, create_pool
from db.transition import allowed_from
from lifecycle.runtime import Runtime
from tests.factories import make_task, make_user
from tests.integration.test_concurrent_deliveries import until_waiting_on_a_lock
from tests.integration.test_receiver import hook_url, post_hook, prediction

Conn = asyncpg.Connection


async def _reciprocals(conn: Any, items: Sequence[int]) -> list[float]:
    # The database does the work, so a refusal is a real PostgresError: 1/0 for item 0.
    rows = await conn.fetch(
        "SELECT 1.0 / x AS r FROM unnest($1::int[]) WITH ORDINALITY AS u(x, n) ORDER BY n",
        list(items),
    )
    return [float(r["r"]) for r in rows]


class _Held:
    """A run function whose first call waits until released, so later callers queue up."""

    def __init__(self, run: Any = _reciprocals) -> None:
        self.run = run
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls: list[list[Any]] = []

    async def __call__(self, conn: Any, items: Sequence[Any]) -> Any:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.started.set()
            await self.release.wait()
        return await self.run(conn, items)


@pytest.fixture
async def pool(db_url: str) -> Any:
    pool = await create_pool(db_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_an_idle_caller_commits_alone_and_at_once(pool: Any) -> None:
    run = _Held()
    run.release.set()
    group = GroupCommit(pool, run)
    assert await group.submit(4) == 0.25
    assert run.calls == [[4]]


async def test_callers_arriving_during_a_commit_share_the_next_one(pool: Any) -> None:
    run, sizes = _Held(), list[int]()
    group = GroupCommit(pool, run, concurrency=1, on_commit=sizes.append)
    first = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(run.started.wait(), timeout=5)
    rest = [asyncio.create_task(group.submit(x)) for x in (2, 4, 5, 8)]
    await asyncio.sleep(0)  # they queue behind the commit in flight
    assert len(run.calls) == 1
    run.release.set()
    assert await first == 1.0
    assert [await t for t in rest] == [0.5, 0.25, 0.2, 0.125]  # each caller its own answer
    assert run.calls == [[1], [2, 4, 5, 8]]
    assert sizes == [1, 4]


async def test_batches_are_capped_and_run_side_by_side(pool: Any) -> None:
    run = _Held()
    group = GroupCommit(pool, run, concurrency=2, stall=0, max_batch=3)
    first = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(run.started.wait(), timeout=5)
    # The second slot is free: the next caller commits at once, beside the held one.
    assert await group.submit(2) == 0.5
    queued = [asyncio.create_task(group.submit(x)) for x in range(10, 17)]
    await asyncio.sleep(0)
    run.release.set()
    await first
    await asyncio.gather(*queued)
    assert run.calls[:2] == [[1], [2]]
    assert sorted(len(c) for c in run.calls[2:]) == [1, 3, 3]


async def test_one_batch_in_flight_until_it_stalls(pool: Any) -> None:
    """A second batch beside the first only once the first has run for `stall` seconds: a
    batch stuck on a lock must not hold up the callers queued behind it."""
    run = _Held()
    group = GroupCommit(pool, run, concurrency=2, stall=0.5)
    first = asyncio.create_task(group.submit(1))
    try:
        await asyncio.wait_for(run.started.wait(), timeout=5)
        waiting = asyncio.create_task(group.submit(2))
        await asyncio.sleep(0)
        assert run.calls == [[1]]  # not yet: the first has only just started
        assert await asyncio.wait_for(waiting, timeout=5) == 0.5  # beside the held first
        assert not first.done()
        # Only the stalled batch is in flight now: the next caller need not wait for it.
        assert await asyncio.wait_for(group.submit(4), timeout=5) == 0.25
        assert not first.done()
    finally:
        run.release.set()
    assert await first == 1.0
    assert run.calls == [[1], [2], [4]]


async def test_a_refused_batch_is_retried_one_by_one(pool: Any) -> None:
    run = _Held()
    group = GroupCommit(pool, run, concurrency=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(run.started.wait(), timeout=5)
    others = [asyncio.create_task(group.submit(x)) for x in (2, 0, 4)]
    await asyncio.sleep(0)
    run.release.set()
    await first
    results = await asyncio.gather(*others, return_exceptions=True)
    assert results[0] == 0.5 and results[2] == 0.25
    assert isinstance(results[1], asyncpg.DivisionByZeroError)  # only the bad one fails
    assert run.calls == [[1], [2, 0, 4], [2], [0], [4]]


@pytest.mark.parametrize(
    "broken",
    [
        ConnectionResetError("the server went away"),
        # A PostgresError too, yet retrying its items one by one on that connection is futile.
        asyncpg.ConnectionFailureError("the server went away"),
    ],
)
async def test_a_broken_connection_fails_the_whole_batch(pool: Any, broken: Exception) -> None:
    calls: list[list[int]] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def run(conn: Any, items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            started.set()
            await release.wait()
            return list(items)
        raise broken

    group = GroupCommit(pool, run, concurrency=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(started.wait(), timeout=5)
    others = [asyncio.create_task(group.submit(x)) for x in (2, 3)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 1
    results = await asyncio.gather(*others, return_exceptions=True)
    assert all(r is broken for r in results)
    assert calls == [[1], [2, 3]]  # not retried one by one: that would not help


async def test_a_caller_that_goes_away_does_not_hurt_the_others(pool: Any) -> None:
    run = _Held()
    group = GroupCommit(pool, run, concurrency=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(run.started.wait(), timeout=5)
    gone = asyncio.create_task(group.submit(2))
    stays = asyncio.create_task(group.submit(4))
    await asyncio.sleep(0)
    gone.cancel()
    run.release.set()
    await first
    assert await stays == 0.25
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_the_next_batch_starts_before_the_last_ones_callers_resume(pool: Any) -> None:
    """Waking a batch's callers (each writes its response) takes a while; the database must
    not sit idle meanwhile, so what queued during a commit is sent first."""
    order: list[str] = []
    run = _Held()

    async def logged(conn: Any, items: Sequence[int]) -> list[float]:
        order.append(f"commit {list(items)}")
        answer: list[float] = await run(conn, items)
        return answer

    group = GroupCommit(pool, logged, concurrency=1)

    async def caller(x: int) -> None:
        await group.submit(x)
        order.append(f"resumed {x}")

    first = asyncio.create_task(caller(1))
    await asyncio.wait_for(run.started.wait(), timeout=5)
    queued = [asyncio.create_task(caller(x)) for x in (2, 4)]
    await asyncio.sleep(0)
    run.release.set()
    await asyncio.gather(first, *queued)
    assert order.index("commit [2, 4]") < order.index("resumed 1")
    assert order[-2:] == ["resumed 2", "resumed 4"]


async def test_the_next_batch_goes_out_in_the_same_step_as_the_last_ones_answer(
    pool: Any,
) -> None:
    """Between one commit's answer and the next batch's start, no event-loop turn: a turn runs
    every callback then ready (other requests' parsing and responses) while the database idles.
    Handing the connection back to the pool and starting a new task took two."""
    order: list[str] = []
    run = _Held()

    async def logged(conn: Any, items: Sequence[int]) -> list[float]:
        order.append(f"commit {list(items)}")
        answer: list[float] = await run(conn, items)
        # Runs at the loop's next turn: after the next batch was sent, if no turn came between.
        asyncio.get_running_loop().call_soon(order.append, f"turn after {list(items)}")
        return answer

    group = GroupCommit(pool, logged, concurrency=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(run.started.wait(), timeout=5)
    queued = [asyncio.create_task(group.submit(x)) for x in (2, 4)]
    await asyncio.sleep(0)
    run.release.set()
    assert await first == 1.0
    assert [await t for t in queued] == [0.5, 0.25]
    assert order.index("commit [2, 4]") < order.index("turn after [1]")


async def test_a_batch_after_a_broken_connection_takes_a_fresh_one(pool: Any) -> None:
    """Batches run back to back on one connection; one that broke goes back to the pool, and
    the batch queued behind it commits on another."""
    run = _Held()
    later: list[asyncio.Task[float]] = []

    async def breaking(conn: Any, items: Sequence[int]) -> list[float]:
        if list(items) == [2]:
            later.append(asyncio.create_task(group.submit(4)))
            await asyncio.sleep(0)  # it queues behind this batch
            conn.terminate()
            raise ConnectionResetError("the server went away")
        return await _reciprocals(conn, items)

    run.run = breaking
    group = GroupCommit(pool, run, concurrency=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.wait_for(run.started.wait(), timeout=5)
    second = asyncio.create_task(group.submit(2))
    await asyncio.sleep(0)
    run.release.set()
    assert await first == 1.0
    with pytest.raises(ConnectionResetError):
        await second
    assert await asyncio.wait_for(later[0], timeout=5) == 0.25
    assert run.calls == [[1], [2], [4]]


# -- taskhook_receive_many: one call, many deliveries, each answered as if alone ----------


def _webhook(task_id: uuid.UUID, delivery_id: str, **changes: Any) -> queries.InboundWebhook:
    fields: dict[str, Any] = {
        "vendor": "replicate",
        "delivery_id": delivery_id,
        "task_id": task_id,
        "headers": {"webhook-id": delivery_id},
        "body": b"{}",
        "signed": True,
        "vendor_task_id": f"pred-{task_id.hex[:8]}",
        "to": "processing",
        "allowed_from": allowed_from(TaskStatus.PROCESSING),
        "progress": 10,
        "outputs": None,
        "error": None,
        "detail": {"vendor": "replicate"},
        "next_poll_at": None,
    }
    fields.update(changes)
    return queries.InboundWebhook(**fields)


async def test_one_batch_answers_every_kind_of_delivery_in_order(conn: Conn) -> None:
    user_id, _ = await make_user(conn, credits=10)
    a, b, c, moved = [await make_task(conn, user_id) for _ in range(4)]
    await conn.execute("UPDATE tasks SET vendor = 'fal' WHERE id = $1", moved)
    failed = allowed_from(TaskStatus.FAILED)
    batch = [
        _webhook(b, "b1", progress=20),
        _webhook(a, "a1", progress=30),
        _webhook(b, "b1", progress=20),  # the same delivery again, in the same batch
        _webhook(uuid.uuid4(), "ghost"),  # a token for a task that does not exist
        _webhook(moved, "m1"),  # a vendor the task has left
        _webhook(c, "c1", signed=False),  # unsigned: a hint only
        _webhook(b, "b2", progress=50),  # the same task's next message
        _webhook(a, "a2", to="failed", allowed_from=failed, error={"code": "vendor_failed"}),
    ]
    rows = await queries.receive_webhooks(conn, batch)
    answers = [(r.verdict, r.applied) for r in rows]
    assert answers == [
        ("transition", True),
        ("transition", True),
        ("duplicate", None),
        ("no_task", None),
        ("moved", None),
        ("confirming", None),
        ("transition", True),
        ("transition", True),
    ]
    assert rows[7].refunds == 1
    progress = await conn.fetchval("SELECT progress FROM tasks WHERE id = $1", b)
    assert progress == 50
    inbox = await conn.fetch(
        "SELECT delivery_id, status, outcome FROM webhook_deliveries ORDER BY delivery_id"
    )
    assert [tuple(r) for r in inbox] == [
        ("a1", "accepted", "applied"),
        ("a2", "accepted", "applied"),
        ("b1", "accepted", "applied"),
        ("b2", "accepted", "applied"),
        ("c1", "accepted", "confirming"),
        ("m1", "rejected", None),
    ]
    balance = await conn.fetchval("SELECT balance FROM users WHERE id = $1", user_id)
    assert balance == 10 - 4 + 1  # four charges, one refund


async def test_one_batch_ends_several_tasks_of_one_user(conn: Conn) -> None:
    """A batch moves its tasks in one statement: each user's row is updated once, by the sum
    of their tasks' refunds and the count of their tasks that ended."""
    user_id, _ = await make_user(conn, credits=10)
    other_id, _ = await make_user(conn, credits=10)
    a, b, c, d = [await make_task(conn, user_id, cost=2) for _ in range(4)]
    theirs = await make_task(conn, other_id, cost=3)
    failed = allowed_from(TaskStatus.FAILED)
    storing = allowed_from(TaskStatus.STORING)
    fail = {"to": "failed", "allowed_from": failed, "error": {"code": "vendor_failed"}}
    batch = [
        _webhook(a, "a1", **fail),
        _webhook(theirs, "t1", **fail),
        _webhook(b, "b1", **fail),
        _webhook(c, "c1", progress=40),
        _webhook(d, "d1", to="storing", allowed_from=storing, outputs=["https://x/1.png"]),
    ]
    rows = await queries.receive_webhooks(conn, batch)
    assert [(r.status, r.refunds) for r in rows] == [
        ("failed", 1),
        ("failed", 1),
        ("failed", 1),
        ("processing", 0),
        ("storing", 0),
    ]
    mine = await conn.fetchrow("SELECT balance, active_tasks FROM users WHERE id = $1", user_id)
    assert mine is not None
    assert tuple(mine) == (10 - 4 * 2 + 2 * 2, 2)  # two refunds; c and d still live
    their = await conn.fetchrow("SELECT balance, active_tasks FROM users WHERE id = $1", other_id)
    assert their is not None
    assert tuple(their) == (10, 0)
    refunds = await conn.fetch(
        "SELECT task_id, amount FROM credit_ledger WHERE kind = 'refund' ORDER BY amount, task_id"
    )
    assert sorted((r["task_id"], r["amount"]) for r in refunds) == sorted(
        [(a, 2), (b, 2), (theirs, 3)]
    )


async def test_every_task_a_batch_moves_is_notified(conn: Conn, db_url: str) -> None:
    user_id, _ = await make_user(conn, credits=3)
    tasks = [await make_task(conn, user_id) for _ in range(3)]
    listener = await connect(db_url)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("taskhook_tasks", lambda *args: received.put_nowait(args[3]))
    try:
        batch = [_webhook(t, f"n{i}", progress=10 + i) for i, t in enumerate(tasks)]
        rows = await queries.receive_webhooks(conn, batch)
        assert [r.applied for r in rows] == [True, True, True]
        payloads = [await asyncio.wait_for(received.get(), 5) for _ in tasks]
    finally:
        await listener.close()
    assert sorted(json.loads(p)["id"] for p in payloads) == sorted(str(t) for t in tasks)
    assert sorted(json.loads(p)["progress"] for p in payloads) == [10, 11, 12]


async def test_the_transition_statement_takes_one_row_per_task(conn: Conn) -> None:
    """Each row decides against its task's state before the statement, so two rows for one
    task would both decide against the same state; the statement refuses them."""
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    with pytest.raises(asyncpg.RaiseError, match="one row per task"):
        await conn.fetch(
            """SELECT * FROM taskhook_transition_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                                                      $11, $12)""",
            [task_id, task_id],
            ["e1", "e2"],
            ["failed", "canceled"],
            ["pending", "pending"],
            ["t", "t"],
            [None, None],
            [None, None],
            [None, None],
            [None, None],
            [None, None],
            [None, None],
            [None, None],
        )
    assert await conn.fetchval("SELECT status::text FROM tasks WHERE id = $1", task_id) == (
        "pending"
    )


async def test_a_delivery_id_raced_for_two_tasks_applies_to_one(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, db_url: str
) -> None:
    """The inbox row is written after the transition; two tasks' locks do not serialize the
    same delivery id, so the second one's insert meets the first's and everything it did is
    rolled back: it answers duplicate and its task does not move."""
    user_id, _ = await make_user(conn, credits=2)
    first_task = await make_task(conn, user_id)
    second_task = await make_task(conn, user_id)
    other = await connect(db_url)
    try:
        tx = other.transaction()
        await tx.start()
        rows = await queries.receive_webhooks(other, [_webhook(first_task, "msg_shared")])
        assert rows[0].applied is True
        hook = asyncio.create_task(
            post_hook(
                client,
                hook_url(runtime, second_task),
                prediction(pid=f"pred-{second_task.hex[:8]}", logs=""),
                webhook_id="msg_shared",
            )
        )

        await until_waiting_on_a_lock(conn, hook, checks=1000)  # on the first copy's inbox row
        await tx.commit()
        response = await asyncio.wait_for(hook, timeout=10)
    finally:
        await other.close()
    assert response.status_code == 200
    assert response.json() == {"status": "duplicate"}
    second = await conn.fetchrow(
        "SELECT status::text, vendor_task_id FROM tasks WHERE id = $1", second_task
    )
    assert second is not None
    assert tuple(second) == ("pending", None)
    events = await conn.fetchval("SELECT count(*) FROM task_events WHERE task_id = $1", second_task)
    assert events == 0
    owners = await conn.fetch(
        "SELECT task_id FROM webhook_deliveries WHERE delivery_id = 'msg_shared'"
    )
    assert [r["task_id"] for r in owners] == [first_task]


async def test_commit_sizes_are_a_metric(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn
) -> None:
    def commits() -> float:
        value = REGISTRY.get_sample_value("taskhook_webhook_commit_size_count")
        return value or 0.0

    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    before = commits()
    response = await post_hook(client, hook_url(runtime, task_id), prediction(logs=""))
    assert response.json() == {"status": "applied"}
    assert commits() == before + 1
    scraped = (await client.get("/metrics")).text
    assert "taskhook_webhook_commit_size_bucket" in scraped


async def test_a_locked_task_holds_up_only_its_own_delivery(conn: Conn, db_url: str) -> None:
    """A call gives up on a task's row lock after a second, all rolled back; the group commit
    then applies the batch's deliveries one by one, so only the delivery for the locked task
    fails (the receiver answers it 503 and its vendor retries) and the rest are applied."""
    user_id, _ = await make_user(conn, credits=2)
    locked, free = [await make_task(conn, user_id) for _ in range(2)]
    holder, receiver = await connect(db_url), await connect(db_url)
    pool = await create_pool(db_url, min_size=1, max_size=2)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", locked)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await queries.receive_webhooks(receiver, [_webhook(free, "f1"), _webhook(locked, "l1")])
        run = _Held(queries.receive_webhooks)
        group = GroupCommit(pool, run, concurrency=1)
        first = asyncio.create_task(group.submit(_webhook(free, "f0", progress=5)))
        await asyncio.wait_for(run.started.wait(), timeout=5)
        on_locked = asyncio.create_task(group.submit(_webhook(locked, "l2")))
        on_free = asyncio.create_task(group.submit(_webhook(free, "f2")))
        await asyncio.sleep(0)
        run.release.set()
        assert (await first).applied is True
        assert (await asyncio.wait_for(on_free, timeout=10)).applied is True
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(on_locked, timeout=10)
        ids = [[w.delivery_id for w in call] for call in run.calls]
        assert ids == [["f0"], ["l2", "f2"], ["l2"], ["f2"]]
        await held.rollback()
        inbox = await conn.fetch("SELECT delivery_id FROM webhook_deliveries ORDER BY 1")
        assert [r["delivery_id"] for r in inbox] == ["f0", "f2"]  # l2 left no trace
    finally:
        await pool.close()
        await holder.close()
        await receiver.close()


async def test_a_delivery_for_a_locked_task_is_503_and_retried(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, db_url: str
) -> None:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    holder = await connect(db_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        url, body = hook_url(runtime, task_id), prediction(logs="")
        busy = await post_hook(client, url, body, webhook_id="msg_busy")
        await held.rollback()
    finally:
        await holder.close()
    assert busy.status_code == 503 and "retry-after" in busy.headers
    assert busy.json()["error"]["code"] == "unavailable"
    assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    retried = await post_hook(client, url, body, webhook_id="msg_busy")
    assert retried.status_code == 200 and retried.json() == {"status": "applied"}
