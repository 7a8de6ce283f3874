"""Reconcilers as ops run them: separate processes, overlapping, and killed mid-pass."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from common.states import TaskStatus
from db.transition import transition
from lifecycle.audit import run_audit
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from tests.conftest import S3Config
from tests.factories import make_task, make_user

Conn = asyncpg.Connection
CONFIG = SimulatorConfig(job_seconds=0, api_token="tok")


def env_for(db_url: str, s3: S3Config, tmp_path: Path, vendor_base: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path),
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "REPLICATE_API_TOKEN": "tok",
        "REPLICATE_API_BASE": vendor_base,
        "REPLICATE_WEBHOOK_SECRET": CONFIG.webhook_secret,
        "TASKHOOK_VENDOR_TIMEOUT": "1",
        "TASKHOOK_POLL_RATE": "1000",
    }


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(CONFIG) as running:
        yield running


async def tasks_at_vendor(conn: Conn, sim: RunningSimulator, count: int) -> list[uuid.UUID]:
    """Submitted tasks whose callbacks were lost; every third one failed at the vendor."""
    ids = []
    async with httpx.AsyncClient(base_url=sim.url, headers={"Authorization": "Bearer tok"}) as c:
        for n in range(count):
            prompt = "fail-me" if n % 3 == 0 else f"fox {n}"
            r = await c.post("/v1/models/a/b/predictions", json={"input": {"prompt": prompt}})
            user_id, _ = await make_user(conn, credits=1)
            task_id = await make_task(conn, user_id)
            await transition(
                conn,
                task_id=task_id,
                to=TaskStatus.SUBMITTED,
                event_key="reg",
                cause="test",
                vendor_task_id=r.json()["id"],
                next_poll_at=datetime.now(UTC) - timedelta(seconds=1),
            )
            ids.append(task_id)
    return ids


def reconcile_once(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskhook.cli", "reconcile", "--once"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    summary: dict[str, Any] = json.loads(out)
    return summary


async def test_two_reconciler_processes_never_poll_a_task_twice(
    conn: Conn, db_url: str, s3: S3Config, tmp_path: Path, sim: RunningSimulator
) -> None:
    ids = await tasks_at_vendor(conn, sim, 24)
    env = env_for(db_url, s3, tmp_path, f"{sim.url}/v1")
    summaries = await asyncio.gather(*(finish(reconcile_once(env)) for _ in range(2)))
    assert sum(s["claimed"] for s in summaries) == 24
    assert sum(s["polled"] for s in summaries) == 24
    assert sum(s["refunded"] for s in summaries) == 8
    statuses = [
        str(await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", t)) for t in ids
    ]
    assert statuses.count("failed") == 8 and statuses.count("storing") == 16
    report = await run_audit(conn, grace_seconds=0)
    assert report.ok, report.as_dict()
    polls_per_task = await conn.fetch(
        "SELECT task_id, count(*) FROM task_events WHERE cause='reconciler' GROUP BY task_id"
    )
    assert all(r["count"] == 1 for r in polls_per_task) and len(polls_per_task) == 24


async def test_reconciler_killed_mid_pass_loses_nothing(
    conn: Conn, db_url: str, s3: S3Config, tmp_path: Path, sim: RunningSimulator
) -> None:
    ids = await tasks_at_vendor(conn, sim, 6)
    hung: list[asyncio.StreamWriter] = []

    async def black_hole(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)  # accept and never answer: the reconciler is stuck mid-poll

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stuck = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, "-m", "taskhook.cli", "reconcile"],
        env={
            **env_for(db_url, s3, tmp_path, f"http://127.0.0.1:{port}/v1"),
            "TASKHOOK_VENDOR_TIMEOUT": "2",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(hung) < 6:  # every task claimed and its poll in flight
            assert time.monotonic() < deadline, "the reconciler never reached the vendor"
            await asyncio.sleep(0.05)
        stuck.send_signal(signal.SIGKILL)
        await asyncio.to_thread(stuck.wait, 10)
    finally:
        if stuck.poll() is None:
            stuck.kill()
        server.close()
    # the dead process's claims lapse by themselves (three vendor timeouts); then a normal
    # pass, pointed at the real vendor, finishes the work
    deadline = time.monotonic() + 120
    while await conn.fetchval("SELECT count(*) FROM tasks WHERE next_poll_at > now()"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    summary = await finish(reconcile_once(env_for(db_url, s3, tmp_path, f"{sim.url}/v1")))
    assert summary["polled"] == 6
    statuses = {
        str(await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", t)) for t in ids
    }
    assert statuses == {"failed", "storing"}
    assert (await run_audit(conn, grace_seconds=0)).ok
