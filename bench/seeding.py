"""A fresh database, tasks and webhooks for benchmarks, made through the product's own queries.

Each worker connection has its own user, so charges do not queue on one user row, and commits
in batches. The tasks are `submitted` with the given vendor ids and due for a poll now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from common.states import TaskStatus
from db import queries
from db.migrate import migrate
from db.pool import connect, dsn_for_database
from db.transition import allowed_from, transition
from lifecycle.users import create_user

BATCH = 250
POLL_AFTER = timedelta(seconds=15)  # TASKHOOK_POLL_AFTER's default
REPORT_BODY = json.dumps({"id": "p", "status": "processing", "logs": "x" * 600}).encode()
REPORT_HEADERS = {
    "content-type": "application/json",
    "user-agent": "bench",
    "webhook-id": "msg_" + "x" * 24,
    "webhook-timestamp": "1700000000",
    "webhook-signature": "v1," + "a" * 44,
}


def processing_report(
    task_id: uuid.UUID, vendor_task_id: str, *, delivery_id: str, progress: int
) -> queries.InboundWebhook:
    """A verified Replicate "processing" delivery as the receiver hands it to the database,
    with the later poll date it asks for, as for real: the first report moves a submitted
    task (and its indexed next_poll_at); later ones keep the status and record the date in
    poll_not_before, a HOT update (0008_set_based.sql)."""
    return queries.InboundWebhook(
        vendor="replicate",
        delivery_id=delivery_id,
        task_id=task_id,
        headers=REPORT_HEADERS,
        body=REPORT_BODY,
        signed=True,
        vendor_task_id=vendor_task_id,
        to="processing",
        allowed_from=allowed_from(TaskStatus.PROCESSING),
        progress=progress,
        outputs=None,
        error=None,
        detail={"vendor": "replicate", "vendor_status": "processing"},
        next_poll_at=datetime.now(UTC) + POLL_AFTER,
    )


@contextlib.asynccontextmanager
async def fresh_database(
    server_dsn: str | None = None,
) -> AsyncIterator[tuple[asyncpg.Connection[Any], str, str]]:
    """(admin connection, database name, its DSN) on `server_dsn` (else DATABASE_URL's server):
    a new database, migrated, dropped on exit."""
    server_dsn = (
        server_dsn
        or os.environ.get("DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"taskhook_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_for_database(server_dsn, name)
    try:
        conn = await connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield admin, name, dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def insert_submitted_tasks(
    dsn: str, vendor_task_ids: list[str], *, model: str, workers: int = 8
) -> list[uuid.UUID]:
    """One submitted task per vendor id; returns the task ids in the same order."""
    now = datetime.now(UTC)
    ids: list[uuid.UUID | None] = [None] * len(vendor_task_ids)

    async def worker(positions: range) -> None:
        conn = await connect(dsn)
        try:
            user_id, _ = await create_user(
                conn, email=f"bench-{uuid.uuid4().hex[:8]}@example.test", credits=len(positions)
            )
            for start in range(0, len(positions), BATCH):
                async with conn.transaction():
                    for n in positions[start : start + BATCH]:
                        charged, task_id = await queries.create_task(
                            conn,
                            task_id=uuid.uuid4(),
                            user_id=user_id,
                            vendor="replicate",
                            model=model,
                            input={"prompt": vendor_task_ids[n]},
                            cost=1,
                            idempotency_key=None,
                            request_hash=None,
                            trace_id="bench",
                            deadline_seconds=86400,
                            registration_lease_seconds=3600,
                        )
                        assert charged and task_id is not None
                        await transition(
                            conn,
                            task_id=task_id,
                            to=TaskStatus.SUBMITTED,
                            event_key="bench-submitted",
                            cause="bench",
                            vendor_task_id=vendor_task_ids[n],
                            next_poll_at=now,
                        )
                        ids[n] = task_id
        finally:
            await conn.close()

    count = len(vendor_task_ids)
    await asyncio.gather(*(worker(range(i, count, workers)) for i in range(workers)))
    made = [i for i in ids if i is not None]
    assert len(made) == count
    return made
