"""Starting processes as an operator does: what they refuse, how they say it, what they log.

Every process runs as `python -m taskhook.cli ...` with an environment of its own, against the
real PostgreSQL and the S3-compatible server reached by endpoint; nothing is embedded unless a
test says so. Long-running processes are read line by line until the line the test waits for.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from db.pool import dsn_for_database
from tests.conftest import S3Config
from tests.ports import free_port

SECRET = "startup-secret-" + "s" * 32
ADMIN_KEY = "startup-admin-" + "a" * 32
WAIT = 60.0


def base_env(db_url: str, s3: S3Config, data_dir: Path, **extra: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TASKHOOK_", "REPLICATE_", "FAL_", "MJ_", "AWS_", "DATABASE_URL"))
    }
    return {
        **keep,
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(data_dir),
        "TASKHOOK_SECRET": SECRET,
        "TASKHOOK_ADMIN_KEY": ADMIN_KEY,
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "AWS_REGION": s3.region,
        "REPLICATE_API_TOKEN": "r8-unused",
        "REPLICATE_API_BASE": "http://127.0.0.1:9/v1",
        "REPLICATE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        **extra,
    }


def taskhook(
    env: dict[str, str], *args: str, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "taskhook.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    """The last line is the error; nothing on stderr is a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), stderr
    return lines[-1]


class Process:
    """A long-running taskhook process whose stderr lines are read as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "taskhook.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.found_at = -1

    def wait_for(
        self, predicate: Any, *, what: str, timeout: float = WAIT, after: int = 0
    ) -> dict[str, Any]:
        """The first JSON line from line `after` on (read already or still to come) for which
        `predicate` holds; `self.found_at` is its index."""
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for line in self.lines[seen:]:
                seen += 1
                event: dict[str, Any] | None = json.loads(line) if line.startswith("{") else None
                if event is not None and predicate(event):
                    self.found_at = seen - 1
                    return event
            assert time.monotonic() < deadline, f"no {what} after {timeout} s: {self.lines}"
            assert self.proc.stderr is not None
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"exited ({self.proc.wait()}) before {what}: {self.lines}")
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        self.proc.terminate()
        try:
            _, rest = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, rest = self.proc.communicate()
        self.lines.extend(rest.splitlines())
        return self.proc.returncode


@contextmanager
def running(env: dict[str, str], *args: str) -> Iterator[Process]:
    process = Process(env, *args)
    try:
        yield process
    finally:
        process.stop()


@asynccontextmanager
async def empty_database(server_dsn: str) -> AsyncIterator[str]:
    """A database no migration ever ran in."""
    name = f"taskhook_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_for_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# --- settings -----------------------------------------------------------------------------


def test_production_names_every_missing_setting_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKHOOK_", "AWS_"))}
    env.pop("DATABASE_URL", None)
    env.update(TASKHOOK_ENV="production", TASKHOOK_DATA_DIR=str(tmp_path / "data"))
    for command in (["serve"], ["worker"], ["reconcile", "--once"], ["migrate"]):
        done = taskhook(env, *command)
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert done.stderr.strip() == line  # that line and nothing else
        for name in (
            "DATABASE_URL",
            "TASKHOOK_SECRET",
            "TASKHOOK_PUBLIC_URL",
            "TASKHOOK_S3_BUCKET",
            "TASKHOOK_ADMIN_KEY",
        ):
            assert name in line
    assert not (tmp_path / "data").exists()  # nothing generated, nothing embedded


# --- the schema gate ----------------------------------------------------------------------


async def test_an_unmigrated_database_stops_every_process_in_one_line(
    server_dsn: str, s3: S3Config, tmp_path: Path
) -> None:
    async with empty_database(server_dsn) as dsn:
        env = base_env(dsn, s3, tmp_path, TASKHOOK_PUBLIC_URL="http://127.0.0.1:1")
        for command in (
            ["serve", "--port", str(free_port())],
            ["worker"],
            ["reconcile", "--once"],
            ["users", "create", "a@example.com"],
        ):
            done = await asyncio.to_thread(taskhook, env, *command)
            assert done.returncode == 3, (command, done.stderr)
            line = one_error_line(done.stderr)
            assert "schema is behind" in line and "run `taskhook migrate`" in line
            assert "0001" in line and "0009" in line
        done = await asyncio.to_thread(taskhook, env, "migrate")
        assert done.returncode == 0, done.stderr
        done = await asyncio.to_thread(taskhook, env, "users", "create", "a@example.com")
        assert done.returncode == 0, done.stderr


async def test_told_to_wait_a_process_starts_once_migrated(
    server_dsn: str, s3: S3Config, tmp_path: Path
) -> None:
    async with empty_database(server_dsn) as dsn:
        env = base_env(dsn, s3, tmp_path, TASKHOOK_SCHEMA_WAIT="120")
        with running(env, "worker") as worker:
            await asyncio.to_thread(
                worker.wait_for, lambda e: e["event"] == "schema_behind", what="schema_behind"
            )
            done = await asyncio.to_thread(taskhook, env, "migrate")
            assert done.returncode == 0, done.stderr
            started = await asyncio.to_thread(
                worker.wait_for, lambda e: e["event"] == "taskhook_started", what="the start"
            )
            assert started["process"] == "worker"


async def test_a_schema_ahead_of_this_release_says_so(
    db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')"
        )
    finally:
        await conn.close()
    done = await asyncio.to_thread(taskhook, base_env(db_url, s3, tmp_path), "worker")
    assert done.returncode == 3
    line = one_error_line(done.stderr)
    assert "ahead of this taskhook" in line and "9999" in line and "rollback" in line


# --- unreachable services -----------------------------------------------------------------


def test_an_unreachable_database_is_retried_then_one_line(s3: S3Config, tmp_path: Path) -> None:
    dsn = f"postgresql://taskhook:pw-not-shown@127.0.0.1:{free_port()}/taskhook"
    env = base_env(dsn, s3, tmp_path, TASKHOOK_STARTUP_RETRY="1")
    started = time.monotonic()
    done = taskhook(env, "worker")
    assert done.returncode == 4
    line = one_error_line(done.stderr)
    assert "the database at 127.0.0.1:" in line and "is unreachable after" in line
    assert "TASKHOOK_STARTUP_RETRY" in line and "pw-not-shown" not in done.stderr
    retries = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    assert retries and all(r["event"] == "database_unreachable" for r in retries)
    assert len(done.stderr.splitlines()) == len(retries) + 1
    assert time.monotonic() - started < 30


def test_unreachable_storage_is_one_line(db_url: str, tmp_path: Path) -> None:
    s3 = S3Config(f"http://127.0.0.1:{free_port()}", "k", "s", "us-east-1", "results")
    env = base_env(db_url, s3, tmp_path, TASKHOOK_STARTUP_RETRY="0")
    done = taskhook(env, "reconcile", "--once")
    assert done.returncode == 4
    line = one_error_line(done.stderr)
    assert "S3 storage is unreachable" in line and "'results'" in line
    assert done.stdout == ""


# --- what a started process says ----------------------------------------------------------


def test_one_startup_line_and_the_development_defaults(
    db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    env = base_env(db_url, s3, tmp_path)
    del env["TASKHOOK_SECRET"], env["TASKHOOK_ADMIN_KEY"]  # development: generated
    port = free_port()
    with running(env, "worker", "--metrics-port", str(port)) as worker:
        started = worker.wait_for(lambda e: e["event"] == "taskhook_started", what="the start")
        defaults = worker.wait_for(
            lambda e: e["event"] == "development_defaults", what="the defaults"
        )
    assert started["process"] == "worker"
    assert started["env"] == "development"
    assert started["listen"] == f"127.0.0.1:{port}"  # its metrics
    assert started["vendors"] == ["replicate"]
    assert started["storage"] == f"bucket {s3.bucket!r} at {s3.endpoint_url}"
    assert started["database"].startswith(("127.0.0.1:", "localhost:", "unix:"))
    assert started["version"] and started["level"] == "info"
    assert defaults["filled_in"] == [
        f"TASKHOOK_SECRET generated, kept in {tmp_path / 'secret'}",
        f"TASKHOOK_ADMIN_KEY generated, kept in {tmp_path / 'admin_key'}",
        "TASKHOOK_PUBLIC_URL set to http://127.0.0.1:8000",
    ]
    events = [json.loads(x)["event"] for x in worker.lines if x.startswith("{")]
    assert events.count("taskhook_started") == 1


def test_log_level_warning_leaves_the_info_lines_out(
    db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    env = base_env(db_url, s3, tmp_path, TASKHOOK_LOG_LEVEL="warning")
    del env["TASKHOOK_SECRET"]
    with running(env, "reconcile", "--interval", "0.05") as reconciler:
        reconciler.wait_for(lambda e: e["event"] == "development_defaults", what="the defaults")
        time.sleep(0.5)  # several passes' worth: none of their info lines may appear
    levels = {json.loads(x)["level"] for x in reconciler.lines if x.startswith("{")}
    assert levels == {"warning"}


def test_the_reconciler_logs_every_pass(db_url: str, s3: S3Config, tmp_path: Path) -> None:
    env = base_env(db_url, s3, tmp_path)
    with running(env, "reconcile", "--interval", "0.05") as reconciler:
        passes: list[dict[str, Any]] = []
        while len(passes) < 3:  # idle passes too: a reconciler that stopped shows by silence
            passes.append(
                reconciler.wait_for(
                    lambda e: e["event"] == "reconcile_pass",
                    what="a pass",
                    after=reconciler.found_at + 1,
                )
            )
    assert all(p["claimed"] == 0 and "duration" in p for p in passes)


async def test_serve_writes_json_only_with_request_ids(
    db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    port = free_port()
    env = base_env(
        db_url,
        s3,
        tmp_path,
        TASKHOOK_ACCESS_LOG="1",
        TASKHOOK_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    with running(env, "serve", "--port", str(port)) as web:
        started = await asyncio.to_thread(
            web.wait_for, lambda e: e["event"] == "taskhook_started", what="the start"
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    mine = await client.get("/healthz", headers={"X-Request-Id": "order-42.a"})
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            theirs = await client.get("/v1/tasks/tsk_nope?key=secret-key", headers={})
        # uvicorn's own complaint about a request that is not HTTP at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
        invalid = await asyncio.to_thread(
            web.wait_for, lambda e: e.get("logger") == "uvicorn.error", what="uvicorn's line"
        )
        access = await asyncio.to_thread(
            web.wait_for, lambda e: e["event"] == "http_request", what="an access line"
        )
        other = await asyncio.to_thread(
            web.wait_for,
            lambda e: e["event"] == "http_request" and e["status"] == 401,
            what="the second access line",
        )
    assert started["process"] == "web" and started["listen"] == f"127.0.0.1:{port}"
    assert started["metrics"] == "web port"
    assert mine.headers["x-request-id"] == "order-42.a"
    assert len(theirs.headers["x-request-id"]) == 32  # made for a request that sent none
    assert access["request_id"] == "order-42.a" and access["route"] == "/healthz"
    assert access["status"] == 200 and access["method"] == "GET"
    assert other["request_id"] == theirs.headers["x-request-id"]
    assert other["route"] == "/v1/tasks/{task_id}"
    assert "secret-key" not in json.dumps(other)  # the query string is never logged
    assert invalid["level"] == "warning" and "Invalid HTTP request" in invalid["event"]
    not_json = [line for line in web.lines if line and not line.startswith("{")]
    assert not_json == []


def test_a_bucket_alone_is_aws_s3_through_boto3s_own_chain(
    db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    """No endpoint setting: boto3 finds endpoint, credentials and region itself (here the test
    server stands in for AWS through AWS_ENDPOINT_URL_S3, boto3's own variable)."""
    env = base_env(
        db_url,
        s3,
        tmp_path,
        AWS_ENDPOINT_URL_S3=s3.endpoint_url,
        TASKHOOK_PUBLIC_URL="https://hooks.example.com",
    )
    del env["TASKHOOK_S3_ENDPOINT_URL"]
    with running(env, "worker") as worker:
        started = worker.wait_for(lambda e: e["event"] == "taskhook_started", what="the start")
    assert started["storage"] == f"bucket {s3.bucket!r} at AWS S3"
    assert not (tmp_path / "s3").exists()  # no embedded server was started
    assert not any("development_defaults" in line for line in worker.lines)


async def test_serve_with_two_workers_counts_every_request_once(
    db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    """Each scrape reaches one of the processes (the metrics port is shared with
    SO_REUSEPORT); each must answer for all of them, so no counter ever goes backwards."""
    port, metrics_port = free_port(), free_port()
    env = base_env(
        db_url,
        s3,
        tmp_path,
        TASKHOOK_PUBLIC_URL=f"http://127.0.0.1:{port}",
        TASKHOOK_METRICS_PORT=str(metrics_port),
    )
    web = Process(env, "serve", "--port", str(port), "--workers", "2")
    try:
        started = await asyncio.to_thread(
            web.wait_for, lambda e: e["event"] == "taskhook_started", what="the start"
        )
        assert started["workers"] == 2 and started["metrics"] == f"127.0.0.1:{metrics_port}"
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection, any process
        async with httpx.AsyncClient(limits=fresh, timeout=10) as client:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{metrics_port}/healthz")).is_success:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "both listeners never came up"
                await asyncio.sleep(0.05)
            # The web port may take a moment longer than the metrics port (refused meanwhile on
            # a loaded machine): its first answered request is the first of the 60 counted.
            while True:
                try:
                    first = await client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the web port never came up"
                    await asyncio.sleep(0.05)
            assert first.is_success
            for _ in range(59):
                assert (await client.get(f"http://127.0.0.1:{port}/healthz")).is_success
            off = await client.get(f"http://127.0.0.1:{port}/metrics")
            seen = []
            for _ in range(12):
                text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                seen.append(healthz_count(text))
    finally:
        assert web.stop() in (0, -15, 143)
    assert off.status_code == 404  # served on the metrics port only
    assert seen == [60.0] * 12


def healthz_count(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        if family.name == "taskhook_http_request_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_count") and s.labels["route"] == "/healthz":
                    return s.value
    return 0.0
