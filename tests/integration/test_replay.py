"""Dead letters: kept when a signed body cannot be applied, replayable once it can."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from common.errors import NotFound
from db import queries
from lifecycle.replay import replay_delivery
from lifecycle.runtime import Runtime
from taskhook.cli import cli
from tests.conftest import S3Config
from tests.factories import make_task, make_user

Conn = asyncpg.Connection


async def dead_letter(conn: Conn, task_id: uuid.UUID, body: bytes, delivery_id: str) -> int:
    row_id = await queries.record_delivery(
        conn,
        vendor="replicate",
        delivery_id=delivery_id,
        task_id=task_id,
        status="rejected",
        outcome=None,
        error="could not parse",
        headers={},
        body=body,
    )
    assert row_id is not None
    return row_id


async def test_replay_applies_once(runtime: Runtime, conn: Conn) -> None:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    body = json.dumps({"id": "p1", "status": "failed", "error": "boom", "logs": ""}).encode()
    row_id = await dead_letter(conn, task_id, body, "msg_1")
    first = await replay_delivery(runtime, row_id)
    again = await replay_delivery(runtime, row_id)
    assert (first.status, again.status) == ("applied", "duplicate")
    assert (
        await conn.fetchval("SELECT status FROM webhook_deliveries WHERE id=$1", row_id)
        == "replayed"
    )
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status.value == "failed" and task.refunded
    assert (
        await conn.fetchval("SELECT cause FROM task_events WHERE event_key='webhook:msg_1'")
        == "replay"
    )


async def test_still_unreadable_stays_a_dead_letter(runtime: Runtime, conn: Conn) -> None:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    row_id = await dead_letter(conn, task_id, b"not json", "msg_2")
    result = await replay_delivery(runtime, row_id)
    assert result.status == "rejected"
    assert (
        await conn.fetchval("SELECT status FROM webhook_deliveries WHERE id=$1", row_id)
        == "rejected"
    )
    assert await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id) == "pending"
    with pytest.raises(NotFound):
        await replay_delivery(runtime, 999_999)


def test_replay_from_the_cli(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Config
) -> None:
    import asyncio

    async def setup() -> int:
        conn = await asyncpg.connect(db_url)
        try:
            from db.pool import _init_connection

            await _init_connection(conn)
            user_id, _ = await make_user(conn, credits=1)
            task_id = await make_task(conn, user_id)
            body = json.dumps({"id": "p9", "status": "starting", "logs": ""}).encode()
            return await dead_letter(conn, task_id, body, "msg_9")
        finally:
            await conn.close()

    row_id = asyncio.run(setup())
    for name, value in {
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path),
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "REPLICATE_API_TOKEN": "t",
        "REPLICATE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "TASKHOOK_PUBLIC_URL": "http://127.0.0.1:1",
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["deliveries", "list", "--rejected", "--json"]).output)
    assert [d["id"] for d in listed] == [row_id]
    result = runner.invoke(cli, ["deliveries", "replay", str(row_id)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "applied"
    assert (
        json.loads(runner.invoke(cli, ["deliveries", "list", "--rejected", "--json"]).output) == []
    )
    assert os.environ["DATABASE_URL"] == db_url
