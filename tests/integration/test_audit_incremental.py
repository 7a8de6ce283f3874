"""`taskhook audit` checks what changed since its last clean run (issue 20.4), on real
PostgreSQL: what it finds, what only --full finds, and when its mark moves."""

from __future__ import annotations

import asyncpg

from common.ids import format_user_id  # ids as the CLI prints them (issue 17.5)
from db import queries
from lifecycle.audit import SETTLE, run_audit
from tests.factories import make_task, make_user

Conn = asyncpg.Connection


async def age_everything(conn: Conn) -> None:
    """Move the history a day back, before the audit's mark and its settle window, as a
    history of months would be."""
    await conn.execute("UPDATE credit_ledger SET created_at = created_at - interval '1 day'")
    await conn.execute(
        "UPDATE tasks SET created_at = created_at - interval '1 day',"
        " completed_at = completed_at - interval '1 day'"
    )
    await conn.execute("UPDATE task_events SET created_at = created_at - interval '1 day'")


async def test_the_first_run_checks_everything_and_a_clean_one_sets_the_mark(
    conn: Conn,
) -> None:
    user_id, _ = await make_user(conn, credits=3)
    await make_task(conn, user_id)
    await conn.execute("UPDATE users SET balance = balance + 1")  # money from nowhere
    first = await run_audit(conn, incremental=True)
    assert first.since is None and not first.ok
    assert await queries.audit_mark(conn) is None  # not clean: the mark stays unset
    await conn.execute("UPDATE users SET balance = balance - 1")
    clean = await run_audit(conn, incremental=True)
    assert clean.ok and clean.since is None
    mark = await queries.audit_mark(conn)
    assert mark is not None
    again = await run_audit(conn, incremental=True)
    assert again.ok and again.since == mark - SETTLE


async def test_changes_since_the_mark_are_checked(conn: Conn) -> None:
    old_user, _ = await make_user(conn, credits=3)
    await make_task(conn, old_user)
    assert (await run_audit(conn, incremental=True)).ok
    await age_everything(conn)

    # A new ledger row the balance never got, and a live-task count that drifted for a user
    # who submitted since: both found.
    user_id, _ = await make_user(conn, credits=3)
    await make_task(conn, user_id)
    await conn.execute(
        "INSERT INTO credit_ledger (user_id, kind, amount) VALUES ($1, 'grant', 5)", user_id
    )
    await conn.execute("UPDATE users SET active_tasks = 7 WHERE id = $1", user_id)
    report = await run_audit(conn, incremental=True)
    assert [r["id"] for r in report.balance_mismatches] == [format_user_id(user_id)]
    assert [r["id"] for r in report.active_count_mismatches] == [format_user_id(user_id)]
    mark = await queries.audit_mark(conn)
    # Not clean: the mark stays, so the next run finds the same again.
    assert not (await run_audit(conn, incremental=True)).ok
    assert await queries.audit_mark(conn) == mark


async def test_what_no_new_row_points_at_needs_the_full_audit(conn: Conn) -> None:
    user_id, _ = await make_user(conn, credits=3)
    assert (await run_audit(conn, incremental=True)).ok
    await age_everything(conn)
    # A balance changed by hand, with no ledger row: nothing since the mark names this user.
    await conn.execute("UPDATE users SET balance = balance + 100 WHERE id = $1", user_id)
    assert (await run_audit(conn, incremental=True)).ok
    full = await run_audit(conn)
    assert [r["id"] for r in full.balance_mismatches] == [format_user_id(user_id)]
