"""The storing step on real PostgreSQL and real S3: success, retries, giving up, leases."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from common.net import public_only_client
from common.states import TaskStatus
from db import queries
from db.pool import connect
from db.transition import transition
from lifecycle.results import store_result
from lifecycle.runtime import Runtime
from simulator.png import gradient_png
from taskhook.worker import Worker
from tests.factories import make_task, make_user

Conn = asyncpg.Connection
PNG = gradient_png("pred", 0, "a fox")


def guarded(handler: Any, *, allow_private: bool = False) -> httpx.AsyncClient:
    """The runtime's download client (public addresses only) in front of a fake file server."""
    return public_only_client(
        allow_private=allow_private,
        timeout=httpx.Timeout(10.0),
        inner=httpx.MockTransport(handler),
    )


def vendor_files(
    status: int = 200, content_type: str = "image/png", *, allow_private: bool = False
) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=PNG, headers={"content-type": content_type})

    return guarded(handler, allow_private=allow_private)


async def storing_task(conn: Conn, outputs: list[str], vendor: str = "replicate") -> uuid.UUID:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id, vendor=vendor)
    await transition(
        conn,
        task_id=task_id,
        to=TaskStatus.STORING,
        event_key="done",
        cause="t",
        vendor_task_id="pred",
        outputs=outputs,
    )
    return task_id


async def test_result_is_stored_under_a_deterministic_key(runtime: Runtime, conn: Conn) -> None:
    task_id = await storing_task(conn, ["http://93.184.216.34/out/0.png"])
    rt = replace(runtime, downloads=vendor_files())
    await store_result(rt, task_id=task_id, attempt=1, owner="me")
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status is TaskStatus.COMPLETED
    (stored,) = task.result["files"]  # type: ignore[index]
    assert stored["key"] == f"results/{task_id.hex}/0.png"
    assert stored["sha256"] == hashlib.sha256(PNG).hexdigest() and stored["bytes"] == len(PNG)
    assert await runtime.store.read(stored["key"]) == PNG
    # a retried upload overwrites the same key instead of leaving a second copy
    again = await asyncio.to_thread(
        runtime.store._client.list_objects_v2,
        Bucket=runtime.store.bucket,
        Prefix=f"results/{task_id.hex}/",
    )
    assert again["KeyCount"] == 1


@pytest.mark.parametrize(
    ("client", "url", "reason"),
    [
        (vendor_files(status=500), "http://93.184.216.34/x.png", "HTTP 500"),
        (vendor_files(content_type="text/html"), "http://93.184.216.34/x.png", "content type"),
        (vendor_files(), "file:///etc/passwd", "scheme"),
    ],
)
async def test_failed_attempt_backs_off_and_keeps_the_task(
    runtime: Runtime, conn: Conn, client: httpx.AsyncClient, url: str, reason: str
) -> None:
    task_id = await storing_task(conn, [url])
    (claimed,) = await queries.claim_storing(
        conn, limit=5, owner="me", lease_seconds=60, storage_deadline=600
    )
    await store_result(
        replace(runtime, downloads=client), task_id=task_id, attempt=claimed.attempt, owner="me"
    )
    row = await conn.fetchrow(
        "SELECT status::text, lease_owner, lease_expires_at > now() AS "
        "later, last_error FROM tasks WHERE id = $1",
        task_id,
    )
    assert row is not None
    assert row["status"] == "storing" and row["lease_owner"] is None and row["later"]
    assert reason in row["last_error"]


# Issue 16.4: Replicate deletes an API prediction's files an hour after it ends, fal a result
# 6 minutes after. A file such a vendor answers 404 (or 410) for is gone for good.


@pytest.mark.parametrize("status", [404, 410])
async def test_a_result_the_vendor_deleted_fails_at_once_as_result_expired(
    runtime: Runtime, conn: Conn, status: int
) -> None:
    from prometheus_client import REGISTRY

    def expired() -> float:
        labels = {"vendor": "replicate"}
        return REGISTRY.get_sample_value("taskhook_results_expired_total", labels) or 0.0

    before = expired()
    task_id = await storing_task(conn, ["http://93.184.216.34/x.png"])
    await queries.claim_storing(conn, limit=5, owner="me", lease_seconds=60, storage_deadline=600)
    await store_result(
        replace(runtime, downloads=vendor_files(status=status)),
        task_id=task_id,
        attempt=1,
        owner="me",
    )
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status is TaskStatus.FAILED and task.refunded
    assert task.error is not None and task.error["code"] == "result_expired"
    assert expired() == before + 1


async def test_a_404_from_a_vendor_that_keeps_its_results_is_retried(
    runtime: Runtime, conn: Conn
) -> None:
    """A vendor with no retention window (here a scripted one): a 404 may pass, so it backs off
    like any failed download."""
    from tests.scripted_vendor import ScriptedVendor

    rt = replace(
        runtime, downloads=vendor_files(status=404), vendors={"keeper": ScriptedVendor("keeper")}
    )
    task_id = await storing_task(conn, ["http://93.184.216.34/x.png"], vendor="keeper")
    await queries.claim_storing(conn, limit=5, owner="me", lease_seconds=60, storage_deadline=600)
    await store_result(rt, task_id=task_id, attempt=1, owner="me")
    assert await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id) == "storing"


async def test_results_kept_for_the_shortest_time_are_stored_first(conn: Conn) -> None:
    """fal keeps a result 6 minutes at worst, Replicate an hour: a fal task that finished
    after a Replicate one still goes first; vendors that keep results count as a day."""
    keeper = await storing_task(conn, ["http://93.184.216.34/k.png"], vendor="midjourney")
    replicate = await storing_task(conn, ["http://93.184.216.34/r.png"], vendor="replicate")
    fal = await storing_task(conn, ["http://93.184.216.34/f.png"], vendor="fal")
    retention = {"replicate": 3600.0, "fal": 360.0}
    claimed = [
        await queries.claim_storing(
            conn, limit=1, owner="me", lease_seconds=60, storage_deadline=600, retention=retention
        )
        for _ in range(3)
    ]
    assert [c[0].task_id for c in claimed] == [fal, replicate, keeper]


async def test_private_address_refused_unless_allowed(runtime: Runtime, conn: Conn) -> None:
    task_id = await storing_task(conn, ["http://127.0.0.1:9/secret.png"])
    strict = replace(runtime, downloads=vendor_files())
    await queries.claim_storing(conn, limit=1, owner="me", lease_seconds=60, storage_deadline=600)
    await store_result(strict, task_id=task_id, attempt=1, owner="me")
    assert "non-public" in await conn.fetchval("SELECT last_error FROM tasks WHERE id=$1", task_id)
    await store_result(
        replace(runtime, downloads=vendor_files(allow_private=True)),
        task_id=task_id,
        attempt=2,
        owner="me",
    )
    assert await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id) == "completed"


async def test_last_attempt_fails_with_storage_failed_and_refunds(
    runtime: Runtime, conn: Conn
) -> None:
    task_id = await storing_task(conn, ["http://93.184.216.34/x.png"])
    rt = replace(runtime, downloads=vendor_files(status=500))
    await store_result(
        rt, task_id=task_id, attempt=runtime.settings.max_storage_attempts, owner="me"
    )
    task = await queries.get_task(conn, task_id=task_id, user_id=None)
    assert task is not None and task.status is TaskStatus.FAILED and task.refunded
    assert task.error is not None and task.error["code"] == "storage_failed"


async def test_two_workers_never_claim_the_same_task(
    runtime: Runtime, conn: Conn, db_url: str
) -> None:
    ids = {await storing_task(conn, ["http://93.184.216.34/x.png"]) for _ in range(10)}
    a, b = await connect(db_url), await connect(db_url)
    try:
        claims = await asyncio.gather(
            queries.claim_storing(a, limit=6, owner="a", lease_seconds=60, storage_deadline=600),
            queries.claim_storing(b, limit=6, owner="b", lease_seconds=60, storage_deadline=600),
        )
    finally:
        await a.close()
        await b.close()
    got_a, got_b = ({claim.task_id for claim in c} for c in claims)
    assert not got_a & got_b
    assert got_a | got_b == ids
    # leased: nobody else gets them until the lease lapses
    assert (
        await queries.claim_storing(
            conn, limit=10, owner="c", lease_seconds=60, storage_deadline=600
        )
        == []
    )


async def test_worker_pass_stores_and_registers(runtime: Runtime, conn: Conn) -> None:
    task_id = await storing_task(conn, ["http://93.184.216.34/x.png"])
    worker = Worker(replace(runtime, downloads=vendor_files()))
    assert await worker.run_once() == 1
    await worker.wait_idle()
    assert await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id) == "completed"
    assert await worker.run_once() == 0


async def test_worker_is_woken_by_notify(runtime: Runtime, conn: Conn) -> None:
    rt = replace(runtime, downloads=vendor_files())
    worker = Worker(rt, idle_poll=30)  # only a NOTIFY can wake it in time
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0)  # let it reach its first idle wait
        task_id = await storing_task(conn, ["http://93.184.216.34/x.png"])

        async def done() -> Any:
            return await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id)

        for _ in range(200):
            if await done() == "completed":
                break
            await asyncio.sleep(0.025)
        assert await done() == "completed"
    finally:
        stop.set()
        await running


async def test_worker_survives_a_database_outage(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that fails because PostgreSQL is gone is logged and retried, not fatal."""
    worker = Worker(runtime, idle_poll=0.01)
    stop = asyncio.Event()
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.CannotConnectNowError("the database system is starting up")
        if calls == 2:
            raise asyncpg.InterfaceError("connection is closed")
        stop.set()
        return 0

    monkeypatch.setattr(worker, "run_once", flaky)
    await asyncio.wait_for(worker.run(stop), timeout=10)
    assert calls == 3


async def test_a_worker_stopped_mid_download_hands_its_lease_back(
    runtime: Runtime, conn: Conn
) -> None:
    started, never = asyncio.Event(), asyncio.Event()

    async def stalled(request: httpx.Request) -> httpx.Response:
        started.set()
        await never.wait()  # the vendor's file server hangs
        return httpx.Response(500)

    client = guarded(stalled)
    task_id = await storing_task(conn, ["http://93.184.216.34/x.png"])
    worker = Worker(replace(runtime, downloads=client))
    job = asyncio.create_task(worker.run(asyncio.Event()))
    await asyncio.wait_for(started.wait(), timeout=10)
    assert await conn.fetchval("SELECT lease_owner FROM tasks WHERE id=$1", task_id)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    row = await conn.fetchrow(
        "SELECT status::text, lease_owner, lease_expires_at <= now() "
        "AS free FROM tasks WHERE id=$1",
        task_id,
    )
    assert row is not None
    assert tuple(row) == ("storing", None, True)
    # another worker can take it at once
    claimed = await queries.claim_storing(
        conn, limit=1, owner="next", lease_seconds=60, storage_deadline=600
    )
    assert [c.task_id for c in claimed] == [task_id]


async def test_a_working_worker_keeps_renewing_its_short_lease(
    runtime: Runtime, conn: Conn
) -> None:
    """The lease was 120 s and never renewed, so a SIGKILLed worker's claims sat for two
    minutes (chaos run). Now it is short and renewed while the download runs."""
    started, never = asyncio.Event(), asyncio.Event()

    async def stalled(request: httpx.Request) -> httpx.Response:
        started.set()
        await never.wait()
        return httpx.Response(500)

    task_id = await storing_task(conn, ["http://93.184.216.34/x.png"])
    worker = Worker(replace(runtime, downloads=guarded(stalled)), lease=0.3)
    job = asyncio.create_task(worker.run(asyncio.Event()))
    await asyncio.wait_for(started.wait(), timeout=10)
    first = await conn.fetchval("SELECT lease_expires_at FROM tasks WHERE id=$1", task_id)
    deadline = time.monotonic() + 10
    while await conn.fetchval("SELECT lease_expires_at FROM tasks WHERE id=$1", task_id) <= first:
        assert time.monotonic() < deadline, "the lease was never renewed"
        await asyncio.sleep(0.02)
    assert (
        await queries.claim_storing(
            conn, limit=1, owner="other", lease_seconds=60, storage_deadline=600
        )
        == []
    )
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job


async def test_a_dead_workers_claims_go_first_once_their_lease_lapses(
    runtime: Runtime, conn: Conn
) -> None:
    """Claims were ordered by lease, unleased first: under steady load a dead worker's tasks
    waited behind every newer one (74 s in the chaos run, with the storing deadline running).
    Oldest in storing first."""
    orphan = await storing_task(conn, ["http://93.184.216.34/x.png"])
    await conn.execute(
        "UPDATE tasks SET updated_at = now() - interval '20 seconds', lease_owner = 'dead',"
        " lease_expires_at = now() - interval '1 second' WHERE id = $1",
        orphan,
    )
    for _ in range(3):
        await storing_task(conn, ["http://93.184.216.34/x.png"])
    (first,) = await queries.claim_storing(
        conn, limit=1, owner="alive", lease_seconds=60, storage_deadline=600
    )
    assert first.task_id == orphan
