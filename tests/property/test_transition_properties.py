"""Property-based: any mix of duplicated, reordered, late events and cancels, applied by
several concurrent actors, keeps the invariants of DESIGN.md.

Each example races a few actors (webhook deliveries, reconciler polls, a client cancel, the
worker) over one task on real PostgreSQL, through the one transition function, then checks:
a terminal state never changes, progress never decreases, at most one charge and one refund,
a refund exactly for failed/canceled tasks, balance = sum(ledger) and never negative.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.states import TERMINAL, TaskStatus, rank
from db.pool import create_pool
from db.transition import transition
from lifecycle.audit import run_audit
from tests.factories import make_task, make_user

TARGETS = [s for s in TaskStatus if s is not TaskStatus.PENDING]

event = st.tuples(
    st.sampled_from(TARGETS),
    st.integers(min_value=0, max_value=12),  # event key: small range, so keys repeat
    st.one_of(st.none(), st.integers(min_value=0, max_value=100)),  # progress
)
actors = st.lists(st.lists(event, min_size=1, max_size=6), min_size=1, max_size=4)


async def scenario(dsn: str, plan: list[list[tuple[TaskStatus, int, int | None]]]) -> None:
    pool = await create_pool(dsn, min_size=len(plan) + 1, max_size=len(plan) + 1)
    try:
        async with pool.acquire() as conn:
            user_id, _ = await make_user(conn, credits=3)
            task_id = await make_task(conn, user_id)
        seen: list[tuple[str, int]] = []  # (status, progress) observed after each event

        async def actor(events: list[tuple[TaskStatus, int, int | None]]) -> None:
            for to, key, progress in events:
                async with pool.acquire() as c:
                    await transition(
                        c,
                        task_id=task_id,
                        to=to,
                        event_key=f"e{key}",
                        cause="property",
                        progress=progress,
                    )
                    row = await c.fetchrow(
                        "SELECT status::text, progress FROM tasks WHERE id = $1", task_id
                    )
                    assert row is not None
                    seen.append((row["status"], row["progress"]))

        await asyncio.gather(*(actor(events) for events in plan))
        async with pool.acquire() as conn:
            final = await conn.fetchrow(
                "SELECT status::text, progress FROM tasks WHERE id=$1", task_id
            )
            ledger = await conn.fetch(
                "SELECT kind, amount FROM credit_ledger WHERE task_id=$1", task_id
            )
            balance = await conn.fetchval("SELECT balance FROM users WHERE id=$1", user_id)
            events = await conn.fetch(
                "SELECT from_status::text, to_status::text, applied FROM task_events "
                "WHERE task_id=$1 ORDER BY id",
                task_id,
            )
            report = await run_audit(conn, grace_seconds=10_000)
        assert final is not None
        status = TaskStatus(final["status"])
        kinds = [r["kind"] for r in ledger]
        assert kinds.count("charge") == 1
        assert kinds.count("refund") == (
            1 if status in (TaskStatus.FAILED, TaskStatus.CANCELED) else 0
        )
        assert balance == 3 - 1 + kinds.count("refund") >= 0
        assert report.ok, report.as_dict()
        # applied moves only go forward, and nothing applies after a terminal state
        applied = [
            (TaskStatus(e["from_status"]), TaskStatus(e["to_status"]))
            for e in events
            if e["applied"]
        ]
        for earlier, later in itertools.pairwise(applied):
            assert rank(later[1]) >= rank(earlier[1])
        ended = [i for i, (_, to) in enumerate(applied) if to in TERMINAL]
        assert len(ended) <= 1 and (not ended or ended[0] == len(applied) - 1)
        # every observation of one actor is consistent with the final state
        for observed, _ in seen:
            assert rank(TaskStatus(observed)) <= rank(status)
        assert final["progress"] == max([0] + [p for _, p in seen])
    finally:
        await pool.close()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=actors)
def test_any_interleaving_keeps_the_invariants(db_url: str, plan: Any) -> None:
    asyncio.run(scenario(db_url, plan))
