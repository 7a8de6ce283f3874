"""`taskhook webhooks list|replay` against a real database (issue 18)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from common.states import TaskStatus
from db.transition import transition
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from taskhook.cli import cli
from tests.factories import make_task, make_user

Conn = asyncpg.Connection
Invoke = Callable[..., tuple[int, str]]


@pytest.fixture
def invoke(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TASKHOOK_DATA_DIR", str(tmp_path))

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        return result.exit_code, result.output

    return run


async def test_list_failed_and_replay(conn: Conn, invoke: Invoke) -> None:
    user_id, _ = await make_user(conn, credits=5)
    ok, bad = [await make_task(conn, user_id) for _ in range(2)]
    for task_id in (ok, bad):
        await client_webhooks.attach(
            conn,
            task_id=task_id,
            user_id=user_id,
            webhook=ClientWebhook("https://hooks.example.com/x", ("completed",)),
        )
        await transition(conn, task_id=task_id, to=TaskStatus.CANCELED, event_key="c", cause="t")
    await conn.execute(
        "UPDATE webhook_outbox SET state = 'failed', attempts = 8, last_status = 500"
        " WHERE task_id = $1",
        bad,
    )
    code, out = await asyncio.to_thread(invoke, "webhooks", "list")
    assert code == 0 and len(json.loads(out)) == 2
    code, out = await asyncio.to_thread(invoke, "webhooks", "list", "--failed")
    (failed,) = json.loads(out)
    assert failed["state"] == "failed" and failed["last_status"] == 500
    assert failed["task_id"].startswith("tsk_") and failed["webhook_id"].startswith("msg_")
    code, out = await asyncio.to_thread(invoke, "webhooks", "list", "--task", failed["task_id"])
    assert [e["id"] for e in json.loads(out)] == [failed["id"]]
    code, out = await asyncio.to_thread(invoke, "webhooks", "replay", str(failed["id"]))
    assert code == 0 and json.loads(out) == {"id": failed["id"], "state": "pending"}
    row = await conn.fetchrow(
        "SELECT state, attempts, webhook_id FROM webhook_outbox WHERE id = $1", failed["id"]
    )
    assert row is not None
    assert (row["state"], row["attempts"], row["webhook_id"]) == (
        "pending",
        0,
        failed["webhook_id"],
    )
    code, out = await asyncio.to_thread(invoke, "webhooks", "replay", "999999")
    assert code == 1 and "no webhook event 999999" in out
    code, out = await asyncio.to_thread(invoke, "webhooks", "list", "--task", "nope")
    assert code == 2
