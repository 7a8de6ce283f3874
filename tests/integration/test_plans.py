"""The plans that keep live paths off the history (issue 20), pinned on a database with
history: every statement a client, the dashboard, the reconciler's housekeeping or the
incremental audit runs reads its index, in the plan PostgreSQL makes for the values at hand
and in the generic plan asyncpg's prepared statements switch to from their sixth execution.

The database is seeded set-based by bench/growth_seed.sql (the growth benchmark's own history,
smaller): 40k tasks over 60 days, 2000 of them live, one heavy user with 2000 (100 live).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from db import queries
from db.migrate import migrate
from db.pool import connect, dsn_for_database
from db.queries import QUERIES
from web import admin_queries
from web.admin_queries import QUERIES as ADMIN_QUERIES

SEED = Path(__file__).resolve().parents[2] / "bench" / "growth_seed.sql"
TASKS, LIVE, USERS, HEAVY = 40_000, 2_000, 2_000, 2_000
HEAVY_USER = uuid.UUID("00000000-0000-0000-0000-000000000000")  # replaced by the fixture
BIG_TABLES = {"tasks", "task_events", "credit_ledger", "webhook_deliveries"}
MODES = ("force_custom_plan", "force_generic_plan")
# The partial indexes that hold only live tasks: a plan along any of them reads no history.
LIVE_INDEXES = {
    "tasks_user_live",
    "tasks_deadline_open",
    "tasks_pending_due",
    "tasks_poll_due",
    "tasks_storing_due",
}


@pytest.fixture(scope="module")
async def history(server_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    name = f"taskhook_plans_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await connect(dsn_for_database(server_dsn, name))
    try:
        await migrate(conn)
        sql = SEED.read_text(encoding="utf-8")
        for key, value in {
            "tasks": TASKS,
            "live": LIVE,
            "users": USERS,
            "heavy": HEAVY,
            "days": 60,
        }.items():
            sql = sql.replace(f":{key}", str(value))
        await conn.execute(sql)
        await conn.execute("VACUUM ANALYZE")
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "'{" + ",".join(str(v) for v in value) + "}'"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


async def plan(
    conn: asyncpg.Connection[Any], sql: str, args: list[Any], *, mode: str
) -> dict[str, Any]:
    """EXPLAIN ANALYZE of `sql` prepared as asyncpg prepares it (parameters, not values) and
    executed with `args`, under `mode`; rolled back, so deletes delete nothing."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        await conn.execute(f"PREPARE pinned AS {sql}")
        values = f"({', '.join(_literal(a) for a in args)})" if args else ""
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE pinned{values}")
    finally:
        await tr.rollback()
        await conn.execute("DEALLOCATE pinned")
    doc = json.loads(raw) if isinstance(raw, str) else raw
    top: dict[str, Any] = doc[0]["Plan"]
    return top


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def indexes(top: dict[str, Any]) -> set[str]:
    return {n["Index Name"] for n in nodes(top) if "Index Name" in n}


def seq_scans(top: dict[str, Any]) -> set[str]:
    return {
        n["Relation Name"]
        for n in nodes(top)
        if n["Node Type"] == "Seq Scan" and n["Relation Name"] in BIG_TABLES
    }


def rows_read(top: dict[str, Any]) -> int:
    """Rows every scan of a big table produced or threw away: what the statement read."""
    total = 0
    for n in nodes(top):
        if n.get("Relation Name") in BIG_TABLES or "Index Name" in n:
            loops = n.get("Actual Loops", 1)
            total += int((n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * loops)
    return total


async def assert_reads(
    conn: asyncpg.Connection[Any],
    sql: str,
    args: list[Any],
    *,
    index: str | set[str],
    most_rows: int,
) -> None:
    """Under either plan: `index` is read (or one of them), no big table is scanned whole,
    and no more than `most_rows` rows are read from the big tables."""
    wanted = {index} if isinstance(index, str) else index
    for mode in MODES:
        top = await plan(conn, sql, args, mode=mode)
        assert wanted & indexes(top), (mode, indexes(top), json.dumps(top)[:3000])
        assert not seq_scans(top), (mode, seq_scans(top))
        assert rows_read(top) <= most_rows, (mode, rows_read(top), json.dumps(top)[:3000])


async def heavy_user(conn: asyncpg.Connection[Any]) -> uuid.UUID:
    found: uuid.UUID = await conn.fetchval("SELECT md5('user0')::uuid")
    return found


START = (datetime.max.replace(tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))


async def test_active_list_reads_only_live_tasks(history: asyncpg.Connection[Any]) -> None:
    user = await heavy_user(history)
    await assert_reads(
        history,
        QUERIES["list_user_tasks_live"],
        [user, *START, 50],
        index="tasks_user_live",
        most_rows=400,
    )
    await assert_reads(
        history,
        QUERIES["list_user_tasks_live_status"],
        [user, *START, "pending", 50],
        index=LIVE_INDEXES,
        most_rows=LIVE,
    )


async def test_deep_cursor_page_starts_at_the_cursor(history: asyncpg.Connection[Any]) -> None:
    user = await heavy_user(history)
    row = await history.fetchrow(
        "SELECT created_at, id FROM tasks WHERE user_id = $1"
        " ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
        user,
        int(HEAVY * 0.9),
    )
    assert row is not None
    created_at, task_id = row
    await assert_reads(
        history,
        QUERIES["list_user_tasks"],
        [user, created_at, task_id, 50],
        index="tasks_user_created",
        most_rows=200,
    )


async def test_failed_and_canceled_lists_read_a_page(history: asyncpg.Connection[Any]) -> None:
    user = await heavy_user(history)
    for status in ("failed", "canceled"):
        await assert_reads(
            history,
            QUERIES["list_user_tasks_refunded"],
            [user, *START, status, 50],
            index="tasks_user_refunded",
            most_rows=200,
        )
        await assert_reads(
            history,
            QUERIES["list_tasks_refunded"],
            [status, 50],
            index="tasks_refunded",
            most_rows=200,
        )


async def test_operator_list_reads_a_page(history: asyncpg.Connection[Any]) -> None:
    await assert_reads(history, QUERIES["list_tasks"], [50], index="tasks_created", most_rows=200)
    await assert_reads(
        history,
        QUERIES["list_tasks_live"],
        ["storing", 50],
        index="tasks_deadline_open",
        most_rows=2 * LIVE,
    )


async def test_dashboard_counts_and_refunds_skip_history(
    history: asyncpg.Connection[Any],
) -> None:
    # The reconciler's housekeeping folds ended tasks into the counts (lifecycle/housekeeping.py).
    await queries.fold_state_counts(history, settled_seconds=600, limit=10 * TASKS)
    mark = await history.fetchrow(ADMIN_QUERIES["counts_mark"])
    assert mark is not None
    await assert_reads(
        history,
        ADMIN_QUERIES["count_by_state"],
        [mark["at"], mark["task_id"]],
        index="tasks_ended",
        most_rows=4 * LIVE,
    )
    counted = await admin_queries.count_by_state(history)
    actual = {
        r["status"]: r["n"]
        for r in await history.fetch("SELECT status::text, count(*) AS n FROM tasks GROUP BY 1")
    }
    assert {k: v for k, v in counted.items() if v} == actual
    await assert_reads(
        history,
        ADMIN_QUERIES["recent_refunds"],
        [20],
        index="credit_ledger_refunds",
        most_rows=200,
    )
    top = await plan(history, ADMIN_QUERIES["user_credits"], [200], mode="force_generic_plan")
    assert not any(n.get("Relation Name") == "tasks" for n in nodes(top))


async def test_the_inbox_lists_a_page(history: asyncpg.Connection[Any]) -> None:
    for mode in MODES:
        top = await plan(history, QUERIES["list_deliveries"], [50], mode=mode)
        assert {"webhook_deliveries_received", "webhook_deliveries_rejected"} <= indexes(top)
        assert not seq_scans(top) and rows_read(top) <= 300, (mode, rows_read(top))
    await assert_reads(
        history,
        QUERIES["list_dead_letters"],
        [50],
        index="webhook_deliveries_rejected",
        most_rows=100,
    )


async def test_pruning_with_nothing_due_reads_an_index_page(
    history: asyncpg.Connection[Any],
) -> None:
    await assert_reads(
        history,
        QUERIES["prune_deliveries"],
        [7 * 86400, 1000, ["midjourney"]],
        index="webhook_deliveries_received",
        most_rows=10,
    )
    # Events and results: the marks sit at the start, so only tasks ended long ago count.
    start = (datetime.min, uuid.UUID(int=0))
    for name in ("results_due", "prune_events", "fold_state_counts"):
        await assert_reads(
            history,
            QUERIES[name],
            [365 * 86400, 1000, *start],
            index="tasks_ended",
            most_rows=10,
        )


async def test_incremental_audit_reads_what_changed(history: asyncpg.Connection[Any]) -> None:
    """Custom plans only: the audit runs them so (SET LOCAL plan_cache_mode, lifecycle/audit.py),
    as a generic plan cannot know that `since` is recent."""
    since = datetime.now(UTC) - timedelta(hours=1)
    # The seeded history adds a task every 130 s: an hour holds ~28 of them.
    for name in (
        "audit_balances_since",
        "audit_refunds_since",
        "audit_active_counts_since",
        "audit_orphans_since",
    ):
        top = await plan(history, QUERIES[name], [since], mode="force_custom_plan")
        assert not seq_scans(top), (name, seq_scans(top))
        assert rows_read(top) <= 20_000, (name, rows_read(top))
