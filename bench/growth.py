"""Months of data: what each path costs on a small and a large history, in one run (issue 20).

Builds two databases on the server of DATABASE_URL (else 127.0.0.1:5432), seeded set-based by
bench/growth_seed.sql: a small one (--small tasks) and a large one (--tasks, 2M for the
issue's numbers), with the same live work (--live tasks not yet terminal, one heavy user with
--heavy tasks of which 50 are live) and only the history different. Then, on each, the
database work of every path a client, the dashboard, the reconciler or an operator runs:

  ingest           a batch of 50 verified webhooks for live tasks (taskhook_receive_many)
  claims           the worker's and the reconciler's claims (pending, due polls, overdue, storing)
  reconcile pass   a `reconcile --once` pass's statements (claims per vendor, storing deadline,
                   the inbox's pruning)
  list active      GET /v1/tasks?status=active for the heavy user
  deep page        GET /v1/tasks with a cursor at 90 % of the heavy user's history
  list failed      GET /v1/tasks?status=failed for the heavy user
  get task         GET /v1/tasks/{id}
  overview         GET /admin/api/overview (all its statements)
  tasks list       `taskhook tasks list`
  metrics          /metrics' queue depths
  audit            `taskhook audit` (incremental where available) and `--full`
  prune            the reconciler's pruning with nothing due
  churn: ...       claims and queue depths after 50k tasks churned without VACUUM (first call
                   and median)

Each statement runs on one connection 8 times (asyncpg prepares it: from the 6th execution
PostgreSQL may switch to its generic plan) and the median of the last five is reported, in ms,
with the ratio large/small. Then bytes per task per table.

    python bench/growth.py --tasks 2000000           # the issue's size: ~25 min to build
    python bench/growth.py --tasks 20000 --small 2000   # CI-sized
    --keep leaves the databases (named taskhook_growth_<tasks>) for the next run; --reuse
    takes them as they are (after applying this release's migrations, timed).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from seeding import processing_report

from db import queries
from db.migrate import migrate
from db.pool import connect, dsn_for_database
from lifecycle.audit import run_audit
from web import admin_queries

SEED = Path(__file__).with_name("growth_seed.sql")
TABLES = ("tasks", "task_events", "credit_ledger", "webhook_deliveries", "users")
REPS, KEEP = 8, 5
CHURN = 50_000
HEAVY_LIVE = 50


def seed_sql(*, tasks: int, live: int, users: int, heavy: int, days: int) -> str:
    text = SEED.read_text(encoding="utf-8")
    for name, value in {
        "tasks": tasks,
        "live": live,
        "users": users,
        "heavy": heavy,
        "days": days,
    }.items():
        text = text.replace(f":{name}", str(int(value)))
    return text


async def build(server: str, name: str, *, tasks: int, live: int, reuse: bool) -> str:
    """The database `name`, seeded with `tasks` tasks (or as a previous --keep left it)."""
    admin = await asyncpg.connect(server)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and not reuse:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if not exists or not reuse:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = dsn_for_database(server, name)
    conn = await connect(dsn)
    try:
        started = time.monotonic()
        applied = await migrate(conn)
        if applied and reuse and exists:
            print(
                f"{name}: migrations {[m.version for m in applied]} applied to the existing "
                f"data in {time.monotonic() - started:.1f} s"
            )
        if not (reuse and exists):
            started = time.monotonic()
            users = max(200, tasks // 20)
            heavy = max(100, tasks // 20)
            await conn.execute(seed_sql(tasks=tasks, live=live, users=users, heavy=heavy, days=60))
            await conn.execute("VACUUM ANALYZE")
            print(f"{name}: seeded {tasks} tasks in {time.monotonic() - started:.0f} s")
        else:
            await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return dsn


async def timed(fn: Callable[[], Awaitable[Any]], reps: int = REPS) -> tuple[float, float]:
    """(first call, median of the last KEEP calls, or of the second half) in ms."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times[-max(KEEP, reps // 2) :])


async def measure(dsn: str) -> dict[str, float]:
    conn = await connect(dsn)
    out: dict[str, float] = {}
    try:
        heavy_user = await conn.fetchval("SELECT md5('user0')::uuid")
        total = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE user_id = $1", heavy_user
        )  # bench setup only
        pos = await conn.fetchrow(
            "SELECT created_at, id FROM tasks WHERE user_id = $1"
            " ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
            heavy_user,
            max(0, min(int(total * 0.9), total - 50)),  # a full page left after it
        )
        live = await conn.fetch(
            "SELECT id, vendor_task_id FROM tasks WHERE status = 'processing'"
            " ORDER BY created_at DESC LIMIT 400"
        )
        some_task = live[0]["id"]
        if "fold_state_counts" in queries.QUERIES:
            # What the reconciler's housekeeping did while the history grew.
            started = time.perf_counter()
            while await queries.fold_state_counts(conn, settled_seconds=600, limit=1_000_000):
                pass
            print(f"  folded the history into the counts in {time.perf_counter() - started:.1f} s")

        async def run(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
            _, out[name] = await timed(fn)

        batch = iter(range(10_000))

        async def ingest() -> None:
            n = next(batch)
            rows = live[(n * 50) % 400 : (n * 50) % 400 + 50]
            await queries.receive_webhooks(
                conn,
                [
                    processing_report(
                        r["id"],
                        r["vendor_task_id"],
                        delivery_id=f"growth-{uuid.uuid4().hex}",
                        progress=41 + n,
                    )
                    for r in rows
                ],
            )

        _, out["ingest (50 webhooks)"] = await timed(ingest, reps=15)

        async def claims() -> None:
            async with conn.transaction():
                await queries.claim_pending_registrations(conn, limit=50, lease_seconds=30)
                await queries.claim_due_polls(conn, vendor="replicate", limit=50, lease_seconds=30)
                await queries.claim_overdue(conn, vendor="replicate", limit=50, lease_seconds=30)
                await queries.claim_storing(
                    conn, limit=50, owner="growth", lease_seconds=0.001, storage_deadline=86400
                )
                raise _Rollback

        await run("claims", _rolled_back(claims))

        async def reconcile_pass() -> None:
            async with conn.transaction():
                for vendor in ("replicate", "fal", "midjourney"):
                    await queries.claim_due_polls(conn, vendor=vendor, limit=200, lease_seconds=30)
                    await queries.claim_overdue(conn, vendor=vendor, limit=200, lease_seconds=30)
                await queries.storing_overdue(conn, storage_deadline=86400, limit=200)
                await queries.prune_deliveries(
                    conn, older_than_seconds=7 * 86400, limit=10_000, unsigned_vendors=["mj"]
                )
                await queries.prune_rate_windows(conn)
                raise _Rollback

        await run("reconcile pass", _rolled_back(reconcile_pass))

        await run(
            "list active (heavy user)",
            lambda: queries.list_user_tasks(
                conn, user_id=heavy_user, status=None, active=True, after=None, limit=50
            ),
        )
        await run(
            "deep page 90% (heavy user)",
            lambda: queries.list_user_tasks(
                conn,
                user_id=heavy_user,
                status=None,
                active=False,
                after=(pos["created_at"], pos["id"]),
                limit=50,
            ),
        )
        await run("get task", lambda: queries.get_task(conn, task_id=some_task, user_id=None))
        await run(
            "list failed (heavy user)",
            lambda: queries.list_user_tasks(
                conn, user_id=heavy_user, status="failed", active=False, after=None, limit=50
            ),
        )

        async def overview() -> None:
            await admin_queries.count_by_state(conn)
            await admin_queries.stuck_tasks(conn, silent_seconds=600, limit=100)
            await admin_queries.dead_letters(conn, limit=100)
            await admin_queries.vendor_health(conn)
            await admin_queries.results_expired(conn)
            await admin_queries.recent_refunds(conn, limit=20)
            await admin_queries.user_credits(conn, limit=200)

        await run("admin overview", overview)
        await run("tasks list", lambda: queries.list_tasks(conn, status=None, limit=50))
        await run(
            "tasks list --status failed",
            lambda: queries.list_tasks(conn, status="failed", limit=50),
        )
        await run("metrics (queue depths)", lambda: _queue_depths(conn))

        if "incremental" in inspect.signature(run_audit).parameters:
            # The first incremental run covers what no run has seen yet: the whole history.
            await run_audit(conn, incremental=True)
            _, out["audit"] = await timed(lambda: run_audit(conn, incremental=True), reps=3)
        else:
            _, out["audit"] = await timed(lambda: run_audit(conn), reps=3)
        _, out["audit --full"] = await timed(lambda: run_audit(conn), reps=1)
        await run(
            "prune (nothing due)",
            lambda: queries.prune_deliveries(
                conn, older_than_seconds=7 * 86400, limit=10_000, unsigned_vendors=["mj"]
            ),
        )
        prune_history = _prune_history()
        if prune_history is not None:
            await run("prune events/results (nothing due)", lambda: prune_history(conn))

        await churn(conn)
        first, out["churn: claims"] = await timed(_rolled_back(claims))
        out["churn: claims (first)"] = first
        first, out["churn: metrics"] = await timed(lambda: _queue_depths(conn))
        out["churn: metrics (first)"] = first
        # A kept database stays as seeded (but for the webhooks ingested) for the next run.
        await conn.execute(
            "DELETE FROM tasks WHERE user_id IN (SELECT id FROM users WHERE email LIKE 'churn-%')"
        )
        await conn.execute("DELETE FROM users WHERE email LIKE 'churn-%'")
    finally:
        await conn.close()
    return out


class _Rollback(Exception):
    """Leaves a measured transaction's claims undone, so every repetition finds the same."""


def _rolled_back(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        try:
            await fn()
        except _Rollback:
            pass

    return call


async def _queue_depths(conn: Any) -> None:
    from db import metrics_queries

    await metrics_queries.queue_depths(conn)


def _prune_history() -> Callable[[Any], Awaitable[Any]] | None:
    """The history's pruning (events, stored results, counts), where this release has it: a
    round with retention longer than the history (nothing due)."""
    if "prune_events" not in queries.QUERIES:
        return None

    async def call(conn: Any) -> None:
        # As lifecycle/housekeeping.py runs them: each in a transaction, with custom plans.
        for step in (
            lambda: queries.prune_events(conn, older_than_seconds=90 * 86400, limit=1000),
            lambda: queries.results_due(conn, older_than_seconds=90 * 86400, limit=1000),
            lambda: queries.fold_state_counts(conn, settled_seconds=600, limit=10_000),
        ):
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                await step()

    return call


async def churn(conn: Any) -> None:
    """50k tasks through a whole life (8 updates each, as the transition makes them), with no
    VACUUM after: the dead rows the claims and counts then wade through."""
    user = await conn.fetchval(
        "INSERT INTO users (id, email, balance) VALUES (gen_random_uuid(), $1, 0) RETURNING id",
        f"churn-{uuid.uuid4().hex[:8]}@example.test",
    )
    ids = await conn.fetchval(
        "WITH t AS (INSERT INTO tasks (id, user_id, vendor, model, input, cost, trace_id,"
        " deadline_at, next_attempt_at) SELECT gen_random_uuid(), $1, 'replicate', 'm',"
        " '{}', 0, 'churn', now() + interval '1 hour', now() + interval '1 hour'"
        " FROM generate_series(1, $2) RETURNING id) SELECT array_agg(id) FROM t",
        user,
        CHURN,
    )
    steps = [
        "status = 'submitted', next_attempt_at = NULL, next_poll_at = now() + interval '1 hour'",
        "status = 'processing'",
        "progress = 20",
        "progress = 40",
        "progress = 60",
        "status = 'storing', next_poll_at = NULL",
        "status = 'completed', completed_at = now(), progress = 100",
    ]
    for step in steps:
        await conn.execute(f"UPDATE tasks SET {step} WHERE id = ANY($1)", ids)


async def sizes(dsn: str) -> dict[str, int]:
    conn = await connect(dsn)
    try:
        return {
            t: await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", t) for t in TABLES
        }
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2_000_000, help="tasks in the large db")
    parser.add_argument("--small", type=int, default=10_000, help="tasks in the small db")
    parser.add_argument("--live", type=int, default=5_000, help="live tasks in both")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--reuse", action="store_true", help="use kept databases as they are")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC  small {args.small}, large {args.tasks}")
    results: dict[str, dict[str, float]] = {}
    sized: dict[str, dict[str, int]] = {}
    names = {"small": args.small, "large": args.tasks}
    for label, count in names.items():
        name = f"taskhook_growth_{count}"
        dsn = await build(
            server, name, tasks=count, live=min(args.live, count // 2), reuse=args.reuse
        )
        sized[label] = await sizes(dsn)
        results[label] = await measure(dsn)
        if not args.keep:
            admin = await asyncpg.connect(server)
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.close()

    print(f"\n{'path':40} {'small ms':>10} {'large ms':>10} {'ratio':>7}")
    for path, small in results["small"].items():
        large = results["large"][path]
        print(f"{path:40} {small:10.2f} {large:10.2f} {large / max(small, 1e-6):6.2f}x")
    print(f"\n{'bytes per task':40} {'small':>10} {'large':>10}")
    for table in TABLES:
        small_b = sized["small"][table] / names["small"]
        large_b = sized["large"][table] / names["large"]
        print(f"{table:40} {small_b:10.0f} {large_b:10.0f}")


if __name__ == "__main__":
    asyncio.run(main())
