"""Webhooks out as ops run them: the delivering worker is SIGKILLed mid-attempt, and the
event is delivered after a restart under the same webhook-id (issue 18)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
from standardwebhooks import Webhook

from common.states import TaskStatus
from db.transition import transition
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from tests.conftest import S3Config
from tests.factories import make_task, make_user
from tests.webhook_receiver import Received, Reply, WebhookReceiver, eventually

Conn = asyncpg.Connection


def worker(db_url: str, s3: S3Config, tmp_path: Path) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKHOOK_")},
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path),
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "TASKHOOK_ALLOW_PRIVATE_URLS": "1",  # the receiver listens on 127.0.0.1
        "TASKHOOK_WEBHOOK_TIMEOUT": "2",  # the lease: this plus 5 s
    }
    return subprocess.Popen(
        [sys.executable, "-m", "taskhook.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "worker.log").open("a"),
        text=True,
    )


async def test_sigkill_mid_attempt_is_delivered_after_restart_with_the_same_id(
    conn: Conn, db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    first_seen = asyncio.Event()

    def decide(got: Received) -> Reply:
        if not first_seen.is_set():
            first_seen.set()
            return Reply(200, delay=120)  # the attempt hangs until the worker dies
        return Reply(200)

    receiver = WebhookReceiver(decide=decide)
    await receiver.start()
    user_id, _ = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    await client_webhooks.attach(
        conn, task_id=task_id, user_id=user_id, webhook=ClientWebhook(receiver.url, ("completed",))
    )
    secret = await client_webhooks.current_secret(conn, user_id=user_id)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.FAILED,
        event_key="fail",
        cause="test",
        error={"code": "vendor_failed"},
    )
    proc = worker(db_url, s3, tmp_path)
    restarted = None
    try:
        await receiver.wait_for(lambda r: len(r) == 1, timeout=60)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        restarted = worker(db_url, s3, tmp_path)
        await receiver.wait_for(lambda r: len(r) == 2, timeout=60)

        async def delivered() -> bool:
            state = await conn.fetchval(
                "SELECT state FROM webhook_outbox WHERE task_id = $1", task_id
            )
            return bool(state == "delivered")

        await eventually(delivered, timeout=30, what="the event delivered")
    finally:
        for p in (proc, restarted):
            if p is not None and p.poll() is None:
                p.terminate()
                await asyncio.to_thread(p.wait, 30)
        await receiver.close()
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert Webhook(secret).verify(second.body, second.headers)["status"] == "failed"
    attempts = await conn.fetch(
        "SELECT attempt, status_code FROM webhook_attempts WHERE task_id = $1", task_id
    )
    # The killed attempt left no answer; the one after the restart is attempt 2.
    assert [(r["attempt"], r["status_code"]) for r in attempts] == [(2, 200)]
