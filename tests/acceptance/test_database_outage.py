"""PostgreSQL restarted mid-run: clients get 503 JSON, vendors get a 5xx and retry, and the whole
stack recovers by itself with nothing lost (issue 7, item 5).

The test runs a PostgreSQL of its own (the embedded one, under the test's tmp dir) so that it can
stop and start it without touching the server every other test shares. The web app, the worker
and the reconciler run in this event loop and are never restarted: whatever heals, heals by
itself.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from common.ids import parse_task_id
from common.settings import Settings
from db.migrate import migrate
from db.pool import connect
from lifecycle.audit import run_audit
from lifecycle.reconcile import run_reconciler
from lifecycle.runtime import Runtime
from lifecycle.users import create_user
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from simulator.signing import new_webhook_id, webhook_headers
from taskhook.app import create_app
from taskhook.embedded import EmbeddedPostgres, start_postgres
from taskhook.runtime import open_runtime
from taskhook.serving import bind, running_app, url_for
from taskhook.worker import Worker
from tests.acceptance.stack import TERMINAL, wait_all_terminal, wait_for
from tests.conftest import S3Config
from vendors.replicate import ReplicateSettings

T = TypeVar("T")
BODY = {"model": "black-forest-labs/flux-schnell", "input": {"prompt": "a fox in the dark"}}
CREDITS = 1000


class PrivatePostgres:
    """An embedded PostgreSQL only this test uses, stopped and started on the same data dir
    (so the same unix socket, i.e. the same DSN: what a restart looks like to clients)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: EmbeddedPostgres | None = None

    @property
    def dsn(self) -> str:
        assert self.server is not None
        return self.server.dsn

    async def start(self) -> str:
        self.server = await asyncio.to_thread(start_postgres, self.data_dir)
        return self.server.dsn

    async def stop(self) -> None:
        """Fast shutdown (SIGINT): every session is cut off, whatever it was doing."""
        server, self.server = self.server, None
        if server is not None:
            await asyncio.to_thread(server.stop)  # returns once the server has exited


@dataclass
class Loops:
    """The stack of tests/acceptance/stack.py, with handles on what must survive the outage."""

    url: str
    runtime: Runtime  # the worker's and the reconciler's; the web app opens its own
    web: Runtime
    sim: RunningSimulator
    worker: asyncio.Task[None]
    reconciler: asyncio.Task[None]
    webhook_secret: str
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def background(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task of the test's own, cancelled with the stack if the test fails first."""
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task


@asynccontextmanager
async def running_loops(settings: Settings, sim_config: SimulatorConfig) -> AsyncIterator[Loops]:
    sock = bind("127.0.0.1", 0)
    url = url_for(sock)
    async with running_simulator(sim_config) as sim:
        settings = replace(
            settings,
            public_url=url,
            vendor_settings={
                "replicate": ReplicateSettings(
                    api_token="tok",
                    api_base=f"{sim.url}/v1",
                    webhook_secrets=(sim_config.webhook_secret,),
                )
            },
        )
        stop = asyncio.Event()
        async with (
            running_app(create_app(settings), sock=sock) as app,
            open_runtime(settings) as rt,
        ):
            worker = asyncio.create_task(Worker(rt, idle_poll=0.1).run(stop))
            reconciler = asyncio.create_task(run_reconciler(rt, stop, interval=0.2))
            loops = Loops(
                url=url,
                runtime=rt,
                web=app.app.state.runtime,
                sim=sim,
                worker=worker,
                reconciler=reconciler,
                webhook_secret=sim_config.webhook_secret,
            )
            try:
                yield loops
            finally:
                for task in loops.tasks:
                    task.cancel()
                await asyncio.gather(*loops.tasks, return_exceptions=True)
                stop.set()
                ended = await asyncio.gather(worker, reconciler, return_exceptions=True)
    # Stopped as a process is stopped: both loops end cleanly, outage or not.
    assert list(ended) == [None, None], ended


@dataclass
class Prober:
    """Impatient clients: submit and read back to back through the whole outage, and record
    every answer. Anything but 202/200 or a well-formed 503 is a failure.

    Submits carry an Idempotency-Key and a refused one is retried with the same key once the
    database is back, as the API asks clients to: a submit whose transaction committed just
    before its connection died (answered 503) is then found, not charged twice."""

    client: httpx.AsyncClient
    watched: str
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # Idempotency-Keys answered 503
    replayed: int = 0
    submits: Counter[int] = field(default_factory=Counter)
    reads: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)

    def check(self, r: httpx.Response, ok: int) -> None:
        if r.status_code == ok:
            return
        what = f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text!r}"
        if r.status_code != 503:
            self.bad.append(what)
            return
        try:
            code = r.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if code != "unavailable" or not r.headers.get("retry-after", "").isdigit():
            self.bad.append(what)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"probe-{n}"
            post, get = await asyncio.gather(
                self.client.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": key}),
                self.client.get(f"/v1/tasks/{self.watched}"),
            )
            self.submits[post.status_code] += 1
            self.reads[get.status_code] += 1
            if post.status_code == 202:
                self.accepted.append(post.json()["id"])
            else:
                self.refused.append(key)
            self.check(post, 202)
            self.check(get, 200)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)

    async def retry_refused(self) -> None:
        for key in self.refused:
            r = await self.client.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": key})
            assert r.status_code == 202, r.text
            self.accepted.append(r.json()["id"])
            self.replayed += r.headers.get("idempotent-replayed") == "true"


async def read_stream(client: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with client.stream("GET", f"/v1/tasks/{task_id}/events", timeout=30) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def check(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain predicate as wait_for's async check."""

    async def run() -> bool:
        return predicate()

    return run


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SCRAPE_ERRORS = ("taskhook_queue_scrape_errors_total", ())
QUEUED_PENDING = ("taskhook_queue_tasks", (("status", "pending"),))


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def assert_running(stack: Loops) -> None:
    for loop in (stack.worker, stack.reconciler):
        if loop.done():
            raise AssertionError(f"{loop.get_coro()} has ended") from loop.exception()


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert r.headers["retry-after"].isdigit()


async def listening_sessions(rt: Runtime) -> int:
    """Sessions whose last statement was LISTEN: the web app's broker and the worker."""
    async with rt.pool.acquire() as conn:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        )
    return n


async def test_postgres_restart_mid_run(s3: S3Config, tmp_path: Path) -> None:
    pg = PrivatePostgres(tmp_path / "pg")
    await pg.start()
    try:
        conn = await connect(pg.dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        settings = Settings(
            data_dir=tmp_path,
            database_url=pg.dsn,
            secret="outage-secret",
            s3_endpoint_url=s3.endpoint_url,
            s3_bucket=s3.bucket,
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key,
            aws_region=s3.region,
            allow_private_urls=True,
            poll_after=0.5,
            registration_timeout=2.0,
            rate_limit=0,
        )
        sim_config = SimulatorConfig(job_seconds=2.0, steps=4, api_token="tok", seed=11)
        async with running_loops(settings, sim_config) as stack:
            await outage(stack, pg)
    finally:
        await pg.stop()


async def outage(stack: Loops, pg: PrivatePostgres) -> None:
    rt = stack.runtime
    sim_stats = stack.sim.simulator.stats
    async with rt.pool.acquire() as conn:
        _, key = await create_user(conn, email="outage@t.test", credits=CREDITS)
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=stack.url, timeout=30, headers=auth) as client,
        httpx.AsyncClient(base_url=stack.url, timeout=30) as vendor,
    ):
        before = []
        for _ in range(6):
            r = await client.post("/v1/tasks", json=BODY)
            assert r.status_code == 202, r.text
            before.append(r.json()["id"])
        watched = parse_task_id(before[1])
        assert watched is not None
        # A live stream opened before the outage must see its task to the end.
        stream = stack.background(read_stream(client, before[0]))
        probe_stop = asyncio.Event()
        prober = Prober(client, watched=before[1])
        probing = stack.background(prober.run(probe_stop))
        try:

            async def callbacks_arriving() -> bool:
                async with rt.pool.acquire() as conn:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM tasks WHERE status = 'processing' AND progress > 0"
                    )
                return bool(n >= 2) and prober.submits[202] >= 2

            await wait_for(callbacks_arriving, timeout=10, what="vendor callbacks to arrive")
            async with rt.pool.acquire() as conn:
                vendor_task_id = await conn.fetchval(
                    "SELECT vendor_task_id FROM tasks WHERE id = $1", watched
                )
            # The web app's broker (for the stream) and the worker LISTEN.
            await wait_for(check_listening(rt), timeout=5, what="two LISTEN sessions")

            up = await scrape(vendor)
            assert up[QUEUED_PENDING] >= 0

            # --- PostgreSQL goes away, with tasks in flight and callbacks arriving ---
            await pg.stop()

            assert_unavailable(await client.post("/v1/tasks", json=BODY))
            assert_unavailable(await client.get(f"/v1/tasks/{before[1]}"))
            # A genuine, correctly signed callback cannot be stored: the vendor must be told
            # to retry (a 2xx would make it drop the message for good).
            hook = "/hooks/replicate/" + rt.tokens.issue(task_id=watched, vendor="replicate")
            body = json.dumps({"id": vendor_task_id, "status": "processing", "logs": ""})
            headers = webhook_headers(stack.webhook_secret, new_webhook_id(), body.encode())
            r = await vendor.post(hook, content=body, headers=headers)
            assert r.status_code >= 500
            assert_unavailable(r)
            assert (await vendor.get("/healthz")).status_code == 200
            r = await vendor.get("/readyz")
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
            # Operators need their metrics most while the database is away: the process's own
            # are there, the queue depths (read from the database) are left out, and counted.
            down = await scrape(vendor)
            assert ("taskhook_refunds_total", ()) in down
            assert not any(name.startswith("taskhook_queue_tasks") for name, _ in down)
            assert down[SCRAPE_ERRORS] > up[SCRAPE_ERRORS]
            # The simulator's own callbacks are refused too; it retries a few times, then gives
            # up (the reconciler's poll finds later what those would have said).
            await wait_for(
                check(lambda: sim_stats.failed_deliveries > 0),
                timeout=5,
                what="the vendor to give up on a refused callback",
            )
            assert_running(stack)

            # --- PostgreSQL is back: same data dir, same socket, same DSN ---
            assert await pg.start() == rt.settings.database_url
            # Every pooled connection died with the server. The very first request must not
            # see one: a closed connection is replaced on acquire, so no 500 and not even a
            # 503 once the server accepts connections again.
            r = await client.get(f"/v1/tasks/{before[1]}")
            assert r.status_code == 200, r.text
            # The vendor's retry of the refused callback goes through now.
            headers = webhook_headers(stack.webhook_secret, headers["webhook-id"], body.encode())
            r = await vendor.post(hook, content=body, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["status"] in ("applied", "duplicate")
            assert (await vendor.get("/readyz")).status_code == 200
            again = await scrape(vendor)
            assert again[QUEUED_PENDING] >= 0 and again[SCRAPE_ERRORS] == down[SCRAPE_ERRORS]
        finally:
            probe_stop.set()
            await probing
        assert not prober.bad, prober.bad
        assert prober.submits[503] and prober.reads[503], (prober.submits, prober.reads)
        await prober.retry_refused()

        after = []
        for _ in range(3):
            r = await client.post("/v1/tasks", json=BODY)
            assert r.status_code == 202, r.text
            after.append(r.json()["id"])

        everyone = before + prober.accepted + after
        final = await wait_all_terminal(client, everyone, timeout=20)
        assert Counter(t["status"] for t in final.values()) == {"completed": len(everyone)}
        events = await asyncio.wait_for(stream, timeout=10)
        assert events and events[-1]["status"] in TERMINAL, events

        # The books balance, nothing is stuck open, and every task is one the client got a 202
        # for (first time or on its keyed retry) and paid for once.
        async with rt.pool.acquire() as conn:
            report = await run_audit(conn, grace_seconds=0)
            ids = {r["id"] for r in await conn.fetch("SELECT id FROM tasks")}
            balance = await conn.fetchval("SELECT balance FROM users")
        assert report.ok, report.as_dict()
        assert len(set(everyone)) == len(everyone)
        assert ids == {parse_task_id(i) for i in everyone}
        assert balance == CREDITS - len(everyone)

        # Nothing was restarted: the loops still run, and both LISTEN sessions are back.
        assert_running(stack)
        await wait_for(
            check_listening(rt), timeout=5, what="the broker and the worker to LISTEN again"
        )


def check_listening(rt: Runtime) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return await listening_sessions(rt) == 2

    return run
