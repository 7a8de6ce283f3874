"""The CLI lines up (issue 17.5): task ids are `tsk_...` everywhere `tasks show` takes them,
timestamps are the API's ISO 8601 `Z`, `tasks list --status active` works, `tasks show` tells
the whole story, JSON is one document on one line, and people get tables."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.states import TaskStatus
from db.queries import Conn
from db.transition import transition
from taskhook.cli import cli
from tests.factories import make_task, make_user

Invoke = Callable[..., Awaitable[tuple[int, str]]]
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def invoke(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TASKHOOK_DATA_DIR", str(tmp_path))
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        return result.exit_code, result.output

    async def in_thread(*args: str) -> tuple[int, str]:
        # The CLI runs its own event loop: not inside the test's.
        return await asyncio.to_thread(run, *args)

    return in_thread


async def _seed(conn: Conn) -> tuple[uuid.UUID, uuid.UUID]:
    """One failed (refunded) task with a rejected webhook naming it, one still pending."""
    user_id, _ = await make_user(conn, credits=5, email="owner@example.com")
    failed = await make_task(conn, user_id, cost=2, input={"prompt": "a quiet harbour"})
    async with conn.transaction():
        await transition(
            conn,
            task_id=failed,
            to=TaskStatus.FAILED,
            event_key="test:fail",
            cause="test",
            error={"code": "vendor_failed", "message": "ConnectError('[Errno -2] Name')"},
        )
    await conn.execute(
        "INSERT INTO webhook_deliveries"
        " (vendor, delivery_id, task_id, status, error, headers, body)"
        " VALUES ('replicate', 'msg_1', $1, 'rejected', 'bad payload', '{}', 'x')",
        failed,
    )
    pending = await make_task(conn, user_id)
    return failed, pending


async def test_ids_times_and_the_whole_story(invoke: Invoke, conn: Conn) -> None:
    failed, pending = await _seed(conn)
    failed_id, pending_id = "tsk_" + failed.hex, "tsk_" + pending.hex

    code, out = await invoke("tasks", "list", "--status", "active", "--json")
    assert code == 0 and [t["id"] for t in json.loads(out)] == [pending_id]
    assert len(out.strip().splitlines()) == 1  # one document, one line
    code, out = await invoke("tasks", "list")  # people: a table
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "status", "progress"]
    assert {line.split()[0] for line in lines[1:]} == {failed_id, pending_id}
    assert "failed (refunded)" in out

    # deliveries list names the task as tasks show takes it.
    code, out = await invoke("deliveries", "list", "--rejected", "--json")
    (delivery,) = json.loads(out)
    assert delivery["task_id"] == failed_id and ISO_Z.match(delivery["received_at"])
    assert failed_id in (await invoke("deliveries", "list"))[1]

    code, out = await invoke("tasks", "show", delivery["task_id"], "--json")
    shown = json.loads(out)
    assert code == 0 and shown["owner"]["email"] == "owner@example.com"
    assert shown["owner"]["id"].startswith("usr_")
    assert shown["input"] == {"prompt": "a quiet harbour"} and shown["cost"] == 2
    assert [(r["kind"], r["amount"]) for r in shown["ledger"]] == [("charge", -2), ("refund", 2)]
    assert [e["to_status"] for e in shown["events"]] == ["failed"]
    assert shown["error"]["message"].startswith("ConnectError")  # operators see the detail
    assert [d["delivery_id"] for d in shown["deliveries"]] == ["msg_1"]
    for stamp in [shown["created_at"], shown["ledger"][0]["created_at"]]:
        assert ISO_Z.match(stamp), stamp

    code, out = await invoke("tasks", "show", failed_id)  # people: fields and tables
    assert code == 0 and "owner@example.com" in out and "a quiet harbour" in out
    assert "\nledger\n" in out and "\nevents\n" in out and "\nwebhooks\n" in out


async def test_audit_names_tasks_as_tasks_show_takes_them(invoke: Invoke, conn: Conn) -> None:
    _, pending = await _seed(conn)
    await conn.execute(
        "UPDATE tasks SET deadline_at = now() - interval '1 hour' WHERE id = $1", pending
    )
    code, out = await invoke("audit")
    report = json.loads(out)
    assert code == 1 and [t["id"] for t in report["overdue_open_tasks"]] == ["tsk_" + pending.hex]
    assert ISO_Z.match(report["overdue_open_tasks"][0]["deadline_at"])
    code, _ = await invoke("tasks", "show", report["overdue_open_tasks"][0]["id"])
    assert code == 0
