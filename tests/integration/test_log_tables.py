"""task_events and webhook_deliveries carry no foreign keys (0009_log_tables.sql): the state
machine's functions write them under the task's row lock, and `taskhook audit` checks that no
event or accepted delivery names a task that does not exist."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from db import queries
from lifecycle.audit import run_audit
from lifecycle.runtime import Runtime
from tests.factories import make_task, make_user
from tests.integration.test_receiver import deliveries, hook_url, post_hook, prediction

Conn = asyncpg.Connection


async def test_a_clean_history_audits_clean(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn
) -> None:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    r = await post_hook(client, hook_url(runtime, task_id), prediction())
    assert r.status_code == 200, r.text
    assert await conn.fetchval("SELECT count(*) FROM task_events") >= 1
    report = await run_audit(conn)
    assert report.ok and report.orphan_log_rows == []


async def test_audit_finds_log_rows_naming_a_missing_task(conn: Conn) -> None:
    ghost = uuid.uuid4()
    await conn.execute(
        "INSERT INTO task_events (task_id, event_key, from_status, to_status, applied, cause)"
        " VALUES ($1, 'k', 'pending', 'submitted', true, 'test')",
        ghost,
    )
    for status in ("accepted", "rejected"):
        await queries.record_delivery(
            conn,
            vendor="replicate",
            delivery_id=f"msg_{status}",
            task_id=ghost,
            status=status,
            outcome=None,
            error=None,
            headers={},
            body=b"{}",
        )
    report = await run_audit(conn)
    assert not report.ok
    # The dead letter ("rejected") may name a task we never had; the others may not.
    assert report.orphan_log_rows == [
        {"log": "task_events", "task_id": "tsk_" + ghost.hex, "rows": 1},
        {"log": "webhook_deliveries", "task_id": "tsk_" + ghost.hex, "rows": 1},
    ]


async def test_a_dead_letter_for_a_task_we_do_not_have_is_kept(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn
) -> None:
    """A token signed with our secret for a task this database lacks (another environment
    sharing the secret, a restored backup): an unreadable payload is still a 400 kept as a dead
    letter. With the foreign key, its insert failed and the vendor got a 500 to retry forever."""
    ghost = uuid.uuid4()
    r = await post_hook(client, hook_url(runtime, ghost), b"not json", webhook_id="msg_ghost")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_payload")
    assert await deliveries(conn) == [("msg_ghost", "rejected")]
    assert (await run_audit(conn)).ok
