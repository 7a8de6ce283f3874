"""What PostgreSQL alone can do per statement of the webhook path, with no HTTP in the way.

Explains bench/webhook_ingest.py's fresh-webhook ceiling: 16 pooled connections (closed loop,
one process) run each statement for ``--seconds`` against a fresh migrated database with
2000 submitted tasks, and the rate of each is printed with its ratio to the baseline, the
one-INSERT statement of webhook_ingest.py's ceiling app:

* ``ceiling``: ``INSERT INTO ceiling_hits (body) VALUES ($1)``;
* ``inbox``: the inbox row of a delivery (webhook_deliveries, with its body);
* ``update``: a bare progress UPDATE of a task;
* ``transition``: taskhook_transition_many (the state machine's one statement) moving one
  task's progress;
* ``receive``: taskhook_receive_many with one delivery, a fresh webhook's whole database work
  (inbox + transition);
* ``receive8``: the same for 8 webhooks in one call and one commit, as the receiver's group
  commit sends them under load (counted per webhook).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/statement_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from seeding import (
    POLL_AFTER,
    REPORT_BODY,
    fresh_database,
    insert_submitted_tasks,
    processing_report,
)

from common.states import TaskStatus
from db import queries
from db.pool import connect, create_pool
from db.transition import allowed_from

CONNECTIONS = 16
BATCH = 8
BODY = REPORT_BODY
PROCESSING = allowed_from(TaskStatus.PROCESSING)


Statement = Callable[[Any, uuid.UUID, str, int], Awaitable[object]]
TASKS: list[tuple[uuid.UUID, str]] = []  # (task id, vendor job id), filled by main()


async def ceiling(conn: Any, task_id: uuid.UUID, vid: str, n: int) -> object:
    return await conn.execute("INSERT INTO ceiling_hits (body) VALUES ($1)", BODY)


async def inbox(conn: Any, task_id: uuid.UUID, vid: str, n: int) -> object:
    return await queries.record_delivery(
        conn,
        vendor="replicate",
        delivery_id=f"i{n}",
        task_id=task_id,
        status="accepted",
        outcome=None,
        error=None,
        headers={},
        body=BODY,
    )


async def update(conn: Any, task_id: uuid.UUID, vid: str, n: int) -> object:
    return await conn.execute(
        "UPDATE tasks SET progress = $2, updated_at = now() WHERE id = $1", task_id, n % 100
    )


async def transition(conn: Any, task_id: uuid.UUID, vid: str, n: int) -> object:
    return await queries.transition_row(
        conn,
        task_id=task_id,
        event_key=f"t{n}",
        to="processing",
        allowed_from=PROCESSING,
        cause="bench",
        progress=n // 2000 % 100,
        vendor_task_id=vid,
        outputs=None,
        result=None,
        error=None,
        detail={},
        next_poll_at=datetime.now(UTC) + POLL_AFTER,
    )


def _webhook(task_id: uuid.UUID, vid: str, n: int) -> queries.InboundWebhook:
    return processing_report(task_id, vid, delivery_id=f"r{n}", progress=n // 2000 % 100)


async def receive(conn: Any, task_id: uuid.UUID, vid: str, n: int) -> object:
    return await queries.receive_webhooks(conn, [_webhook(task_id, vid, n)])


async def receive_batch(conn: Any, task_id: uuid.UUID, vid: str, n: int) -> object:
    # BATCH deliveries to BATCH tasks in one call and one commit (the group commit).
    numbers = [n * BATCH + k for k in range(BATCH)]
    webhooks = [_webhook(*TASKS[m % len(TASKS)], m) for m in numbers]
    return await queries.receive_webhooks(conn, webhooks)


STATEMENTS: dict[str, Statement] = {
    "ceiling": ceiling,
    "inbox": inbox,
    "update": update,
    "transition": transition,
    "receive": receive,
    f"receive{BATCH}": receive_batch,
}
PER_CALL = {f"receive{BATCH}": BATCH}


async def rate(
    pool: Any, statement: Statement, tasks: list[Any], seconds: float, per_call: int = 1
) -> float:
    numbers = itertools.count()
    stop = time.monotonic() + seconds
    done = 0

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < stop:
            n = next(numbers)
            task_id, vid = tasks[n % len(tasks)]
            async with pool.acquire() as conn:
                await statement(conn, task_id, vid, n)
            done += per_call

    await asyncio.gather(*(loop() for _ in range(CONNECTIONS)))
    return done / seconds


async def main(seconds: float) -> None:
    async with fresh_database() as (_admin, _name, dsn):
        conn = await connect(dsn)
        await conn.execute("CREATE TABLE ceiling_hits (id bigserial PRIMARY KEY, body bytea)")
        await conn.close()
        vids = [f"p_{n}" for n in range(2000)]
        tasks = list(zip(await insert_submitted_tasks(dsn, vids, model="a/b"), vids, strict=True))
        TASKS[:] = tasks
        pool = await create_pool(dsn, min_size=CONNECTIONS, max_size=CONNECTIONS)
        base = 0.0
        print(f"{'statement':>10}  {'per s':>7}  vs ceiling   ({CONNECTIONS} connections)")
        for label, statement in STATEMENTS.items():
            per_second = await rate(pool, statement, tasks, seconds, PER_CALL.get(label, 1))
            base = base or per_second
            print(f"{label:>10}  {per_second:7.0f}  {per_second / base:10.2f}", flush=True)
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args().seconds))
