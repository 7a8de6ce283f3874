"""The operator CLI against a real database, as ops would run it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from taskhook.cli import cli
from tests.conftest import S3Config
from tests.ports import free_port

# The `invoke` fixture: run the CLI in-process, (exit code, output).
Invoke = Callable[..., tuple[int, str]]


@pytest.fixture
def invoke(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TASKHOOK_DATA_DIR", str(tmp_path))
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        return result.exit_code, result.output

    return run


def test_help_names_the_environment(invoke) -> None:  # type: ignore[no-untyped-def]
    code, out = invoke("--help")
    assert code == 0 and "DATABASE_URL" in out
    for command in [
        "demo",
        "serve",
        "worker",
        "reconcile",
        "migrate",
        "simulator",
        "users",
        "credits",
        "tasks",
        "deliveries",
        "webhooks",
        "audit",
        "prune",
        "check",
    ]:
        assert command in out
        assert invoke(*command.split(), "--help")[0] == 0


def test_migrate_is_idempotent(invoke) -> None:  # type: ignore[no-untyped-def]
    code, out = invoke("migrate")
    assert code == 0 and json.loads(out) == {"applied": [], "functions": []}


def test_users_and_credits(invoke) -> None:  # type: ignore[no-untyped-def]
    code, out = invoke("users", "create", "ops@example.com", "--credits", "5")
    created = json.loads(out)
    assert code == 0 and created["user_id"].startswith("usr_")
    assert created["api_key"].startswith("thk_")
    code, out = invoke("users", "create", "ops@example.com")
    assert code == 1 and "already exists" in out
    assert json.loads(invoke("credits", "grant", "ops@example.com", "3")[1])["credits"] == 8
    assert json.loads(invoke("credits", "show", "ops@example.com")[1])["credits"] == 8
    code, out = invoke("credits", "grant", "nobody@example.com", "3")
    assert code == 1 and "no user" in out
    assert invoke("credits", "grant", "ops@example.com", "0")[0] == 2
    assert invoke("credits", "grant", "ops@example.com", "-4")[0] == 2


def test_tasks_and_deliveries_views(invoke) -> None:  # type: ignore[no-untyped-def]
    assert json.loads(invoke("tasks", "list", "--json")[1]) == []
    assert json.loads(invoke("deliveries", "list", "--rejected", "--json")[1]) == []
    code, out = invoke("tasks", "show", "nope")
    assert code == 1 and "not a task id" in out


def test_audit_reports_a_broken_ledger(invoke, db_url: str) -> None:  # type: ignore[no-untyped-def]
    invoke("users", "create", "a@example.com", "--credits", "5")
    code, out = invoke("audit")
    assert code == 0 and json.loads(out)["ok"] is True

    async def corrupt() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute("UPDATE users SET balance = balance + 1")  # money from nowhere
        finally:
            await conn.close()

    asyncio.run(corrupt())
    code, out = invoke("audit")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert report["balance_mismatches"][0]["email"] == "a@example.com"


def test_audit_full_finds_what_the_incremental_one_cannot(invoke, db_url: str) -> None:  # type: ignore[no-untyped-def]
    invoke("users", "create", "a@example.com", "--credits", "5")
    assert json.loads(invoke("audit")[1])["since"] is None  # the first run checks everything

    async def corrupt_long_ago() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            # The grant a day old, then money from nowhere with no ledger row to point at it.
            await conn.execute("UPDATE credit_ledger SET created_at = now() - interval '1 day'")
            await conn.execute("UPDATE users SET balance = balance + 1")
        finally:
            await conn.close()

    asyncio.run(corrupt_long_ago())
    code, out = invoke("audit")
    assert code == 0 and json.loads(out)["since"] is not None
    code, out = invoke("audit", "--full")
    report = json.loads(out)
    assert code == 1 and report["since"] is None
    assert report["balance_mismatches"][0]["email"] == "a@example.com"


def test_deliveries_list_merges_the_inbox_and_its_dead_letters_newest_first(
    invoke: Invoke, db_url: str
) -> None:
    async def record() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            for n, status in enumerate(["accepted", "rejected", "replayed", "accepted"]):
                await conn.execute(
                    "INSERT INTO webhook_deliveries (vendor, delivery_id, status, headers, body,"
                    " received_at) VALUES ('replicate', $1, $2, '{}', '', now() + $3 * interval"
                    " '1 second')",
                    f"d{n}",
                    status,
                    n,
                )
        finally:
            await conn.close()

    asyncio.run(record())
    listed = json.loads(invoke("deliveries", "list", "--json")[1])
    assert [d["delivery_id"] for d in listed] == ["d3", "d2", "d1", "d0"]
    rejected = json.loads(invoke("deliveries", "list", "--rejected", "--json")[1])
    assert [d["delivery_id"] for d in rejected] == ["d1"]


def test_prune_reports_what_it_did(invoke, s3: S3Config, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TASKHOOK_S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("TASKHOOK_S3_BUCKET", s3.bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id or "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key or "")
    monkeypatch.setenv("AWS_REGION", s3.region)
    monkeypatch.setenv("TASKHOOK_EVENT_RETENTION", "86400")
    code, out = invoke("prune")
    assert code == 0, out
    # Log lines may come first; the summary is one JSON document on the last line.
    assert json.loads(out.strip().splitlines()[-1]) == {
        "deliveries": 0,
        "events": 0,
        "event_tasks": 0,
        "results": 0,
        "files": 0,
        "counted": 0,
        "webhook_events": 0,
        "skipped": False,
    }


def test_bad_setting_is_one_clear_line(invoke, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TASKHOOK_TASK_DEADLINE", "soon")
    code, out = invoke("migrate")
    assert code == 2 and "TASKHOOK_TASK_DEADLINE" in out


def test_demo_runs_the_main_job(db_url: str, s3: S3Config, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path),
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "AWS_REGION": s3.region,
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "taskhook.cli", "demo", "--tasks", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit" in done.stdout and "clean" in done.stdout
    assert "still open" in done.stdout
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in done.stdout.splitlines()
        if line.count("│") == 3
    }
    assert (rows["completed"], rows["failed"], rows["refunded"], rows["still open"]) == (
        "9",
        "1",
        "1",
        "0",
    )
    lines = (tmp_path / "demo.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert "stored" in events


@pytest.mark.parametrize("command", [["worker"], ["reconcile"]])
def test_workers_and_reconcilers_can_be_scraped(
    command: list[str], db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    """Their refunds, polls and storage attempts were counted where nobody could read them."""
    import time

    import httpx

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path),
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "AWS_REGION": s3.region,
        "TASKHOOK_METRICS_PORT": str(port),
    }
    proc = subprocess.Popen([sys.executable, "-m", "taskhook.cli", *command], env=env)  # noqa: S603
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "the process exited"
                assert time.monotonic() < deadline, "no metrics endpoint after 30 s"
                time.sleep(0.05)
        assert answer.status_code == 200
        assert "taskhook_refunds_total" in answer.text
        assert "taskhook_polls_total" in answer.text or "taskhook_storage_total" in answer.text
    finally:
        proc.terminate()  # may land before start-up finished: then it ends with 128 + 15
        assert proc.wait(timeout=30) in (0, 143)


# --- a TASKHOOK_PUBLIC_URL Replicate will not call (issue 16.6) ------------------------------


@pytest.mark.parametrize("command", ["migrate", "check"])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://hooks.example.com", "TASKHOOK_PUBLIC_URL must be the https://"),
        ("https://10.0.0.5", "points at 10.0.0.5, which Replicate cannot reach"),
    ],
)
def test_production_refuses_a_public_url_replicate_will_not_call(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch, command: str, url: str, says: str
) -> None:
    """`check` included: a setting that cannot work is a refusal to start (one line, exit 2)
    in production, not a failed check."""
    for name, value in {
        "TASKHOOK_ENV": "production",
        "TASKHOOK_SECRET": "s" * 32,
        "TASKHOOK_ADMIN_KEY": "a" * 32,
        "TASKHOOK_S3_BUCKET": "results",
        "REPLICATE_API_TOKEN": "r8_x",
        "TASKHOOK_PUBLIC_URL": url,
    }.items():
        monkeypatch.setenv(name, value)
    code, out = invoke(command)
    assert code == 2 and says in out
    assert len(out.strip().splitlines()) == 1


def test_check_finds_a_redirect_in_front_of_the_deployment(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch, s3: S3Config
) -> None:
    """An https URL that answers a webhook with a redirect (here a local server doing what an
    http-to-https or www redirect does): Replicate follows none."""
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(301)
            self.send_header("Location", "https://www.example.com" + self.path)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from vendors import replicate

        # The static rule refuses loopback; this test is about the probe behind it.
        monkeypatch.setattr(replicate, "webhook_base_problem", lambda url: None)
        monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_x")
        monkeypatch.setenv("TASKHOOK_PUBLIC_URL", f"http://127.0.0.1:{server.server_port}")
        for name, value in {
            "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
            "TASKHOOK_S3_BUCKET": s3.bucket,
            "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
            "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        }.items():
            monkeypatch.setenv(name, value)
        code, out = invoke("check", "--json")
    finally:
        server.shutdown()
    report = json.loads(out)
    (url_check,) = [c for c in report["checks"] if c["name"] == "replicate webhook url"]
    assert code == 1 and "follows no redirect" in url_check["detail"]
