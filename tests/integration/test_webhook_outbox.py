"""Webhooks out, the outbox: every move of a task with a client webhook writes its event in the
move's own transaction, whichever code path moves it (issue 18)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from common.states import TaskStatus
from db import queries
from db import webhooks_out as outbox
from db.transition import allowed_from, transition
from tests.factories import make_task, make_user

Conn = asyncpg.Connection

URL = "https://hooks.example.com:8443/taskhook?x=1"


async def task_with_webhook(conn: Conn, events: list[str]) -> uuid.UUID:
    user_id, _ = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    await outbox.set_task_webhook(conn, task_id=task_id, url=URL, events=events)
    return task_id


async def rows(conn: Conn, task_id: uuid.UUID) -> list[dict[str, Any]]:
    records = await conn.fetch(
        "SELECT event, task_status::text AS status, progress, state, host, url, webhook_id"
        " FROM webhook_outbox WHERE task_id = $1 ORDER BY id",
        task_id,
    )
    return [dict(r) for r in records]


async def move(conn: Conn, task_id: uuid.UUID, to: TaskStatus, key: str, **kw: Any) -> None:
    result = await transition(conn, task_id=task_id, to=to, event_key=key, cause="test", **kw)
    assert result.applied, result


async def test_only_the_terminal_event_by_default(conn: Conn) -> None:
    task_id = await task_with_webhook(conn, ["completed"])
    await move(conn, task_id, TaskStatus.PROCESSING, "p", progress=40)
    await move(conn, task_id, TaskStatus.STORING, "s")
    assert await rows(conn, task_id) == []
    await move(conn, task_id, TaskStatus.COMPLETED, "c")
    (row,) = await rows(conn, task_id)
    assert row["event"] == "completed" and row["status"] == "completed"
    assert row["state"] == "pending" and row["url"] == URL
    assert row["host"] == "hooks.example.com:8443"
    assert row["webhook_id"].startswith("msg_") and len(row["webhook_id"]) == 36


async def test_a_rolled_back_move_writes_no_event(conn: Conn) -> None:
    task_id = await task_with_webhook(conn, ["completed"])
    tx = conn.transaction()
    await tx.start()
    await move(conn, task_id, TaskStatus.FAILED, "f", error={"code": "vendor_failed"})
    assert len(await rows(conn, task_id)) == 1  # written with the move ...
    await tx.rollback()
    assert await rows(conn, task_id) == []  # ... and gone with it
    assert await conn.fetchval("SELECT status::text FROM tasks WHERE id = $1", task_id) == (
        "pending"
    )


async def test_newer_states_supersede_older_undelivered_ones(conn: Conn) -> None:
    task_id = await task_with_webhook(conn, ["start", "progress", "completed"])
    await move(conn, task_id, TaskStatus.SUBMITTED, "sub")
    await move(conn, task_id, TaskStatus.PROCESSING, "p10", progress=10)
    await move(conn, task_id, TaskStatus.PROCESSING, "p60", progress=60)
    # A repeated or stale report changes nothing and writes nothing.
    stale = await transition(
        conn, task_id=task_id, to=TaskStatus.PROCESSING, event_key="p30", cause="t", progress=30
    )
    assert not stale.applied
    await move(conn, task_id, TaskStatus.CANCELED, "cancel")
    got = [(r["event"], r["status"], r["progress"], r["state"]) for r in await rows(conn, task_id)]
    assert got == [
        ("start", "submitted", 0, "superseded"),
        ("progress", "processing", 10, "superseded"),
        ("progress", "processing", 60, "superseded"),
        ("completed", "canceled", 60, "pending"),
    ]
    assert len({r["webhook_id"] for r in await rows(conn, task_id)}) == 4


async def test_filter_start_only(conn: Conn) -> None:
    task_id = await task_with_webhook(conn, ["start"])
    await move(conn, task_id, TaskStatus.PROCESSING, "p", progress=5)
    await move(conn, task_id, TaskStatus.PROCESSING, "p2", progress=50)
    await move(conn, task_id, TaskStatus.FAILED, "f", error={"code": "vendor_failed"})
    assert [(r["event"], r["status"]) for r in await rows(conn, task_id)] == [
        ("start", "processing")
    ]


async def test_tasks_without_a_webhook_write_nothing(conn: Conn) -> None:
    user_id, _ = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    await move(conn, task_id, TaskStatus.FAILED, "f", error={"code": "vendor_failed"})
    assert await conn.fetchval("SELECT count(*) FROM webhook_outbox") == 0


async def test_webhook_batches_write_events_too(conn: Conn) -> None:
    """taskhook_receive_many moves tasks through taskhook_transition_many: the same trigger."""
    a = await task_with_webhook(conn, ["completed"])
    b = await task_with_webhook(conn, ["progress", "completed"])
    common: dict[str, Any] = {
        "vendor": "replicate",
        "body": b"{}",
        "signed": True,
        "outputs": None,
        "detail": None,
        "next_poll_at": None,
    }
    batch = [
        queries.InboundWebhook(
            delivery_id="a1",
            task_id=a,
            headers={},
            vendor_task_id=None,  # type: ignore[arg-type]  # no job named: the SQL allows it
            to="failed",
            allowed_from=allowed_from(TaskStatus.FAILED),
            progress=None,
            error={"code": "vendor_failed"},
            **common,
        ),
        queries.InboundWebhook(
            delivery_id="b1",
            task_id=b,
            headers={},
            vendor_task_id=None,  # type: ignore[arg-type]  # no job named: the SQL allows it
            to="processing",
            allowed_from=allowed_from(TaskStatus.PROCESSING),
            progress=30,
            error=None,
            **common,
        ),
    ]
    await queries.receive_webhooks(conn, batch)
    assert [(r["event"], r["status"]) for r in await rows(conn, a)] == [("completed", "failed")]
    # pending -> processing is the task's start; this client did not ask for it.
    assert await rows(conn, b) == []
    batch2 = [
        queries.InboundWebhook(
            delivery_id="b2",
            task_id=b,
            headers={},
            vendor_task_id=None,  # type: ignore[arg-type]  # no job named: the SQL allows it
            to="processing",
            allowed_from=allowed_from(TaskStatus.PROCESSING),
            progress=70,
            error=None,
            **common,
        )
    ]
    await queries.receive_webhooks(conn, batch2)
    assert [(r["event"], r["progress"]) for r in await rows(conn, b)] == [("progress", 70)]


async def test_a_gone_url_stops_the_tasks_later_events(conn: Conn) -> None:
    task_id = await task_with_webhook(conn, ["progress", "completed"])
    await move(conn, task_id, TaskStatus.PROCESSING, "p1", progress=10)
    await move(conn, task_id, TaskStatus.PROCESSING, "p2", progress=20)
    (claim,) = await outbox.claim_outbox(conn, limit=5, owner="me", lease_seconds=30, busy_hosts=[])
    assert claim.attempt == 1
    state = await outbox.finish_attempt(
        conn,
        event_id=claim.id,
        owner="me",
        attempt=1,
        started_at=claim.created_at,
        duration_ms=3,
        status_code=410,
        error=None,
        response_body="gone",
        verdict="gone",
        retry_in=0,
    )
    assert state == "gone"
    await move(conn, task_id, TaskStatus.COMPLETED, "c")
    # p1 was the task's start, which this client did not ask for; nothing after the 410.
    assert [(r["progress"], r["state"]) for r in await rows(conn, task_id)] == [(20, "gone")]


async def test_finished_events_are_pruned_after_the_retention(conn: Conn) -> None:
    done = await task_with_webhook(conn, ["progress", "completed"])
    await move(conn, done, TaskStatus.PROCESSING, "p1", progress=10)
    await move(conn, done, TaskStatus.PROCESSING, "p2", progress=20)  # supersedes p1's
    await move(conn, done, TaskStatus.FAILED, "f", error={"code": "vendor_failed"})
    waiting = await task_with_webhook(conn, ["completed"])
    await move(conn, waiting, TaskStatus.CANCELED, "c")
    await conn.execute(
        "UPDATE webhook_outbox SET state = 'delivered' WHERE task_id = $1 AND state = 'pending'",
        done,
    )
    await conn.execute("UPDATE webhook_outbox SET updated_at = now() - interval '2 days'")
    assert await outbox.prune_outbox(conn, older_than_seconds=86400, limit=1) == 1
    assert await outbox.prune_outbox(conn, older_than_seconds=86400, limit=10) == 1
    assert await outbox.prune_outbox(conn, older_than_seconds=86400, limit=10) == 0
    assert await rows(conn, done) == []
    assert [r["state"] for r in await rows(conn, waiting)] == ["pending"]  # never before sent
