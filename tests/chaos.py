"""The chaos run (issue 7): a real deployment on this machine, a faulty vendor, SIGKILLs, books.

What runs, each as its own OS process started through the real CLI (`tests/chaos_stack.py`):
the vendor simulator with the issue's faults (20 % of callbacks dropped, 30 % duplicated,
reordered, early, 10 % API errors, 10 % failed jobs, 10 % preceded by a wrongly signed copy),
2 x `taskhook serve`, 2 x `taskhook reconcile`, 2 x `taskhook worker`, one PostgreSQL database
and one S3 bucket. A client (4 users) submits `--tasks` tasks over HTTP with bounded
concurrency, spread over both web processes, every one with an Idempotency-Key (retried on the
other web process when one fails; every 10th is replayed on purpose and must return the same
task); 1 % are canceled by the client soon after submitting. Each user may have `--max-active`
unfinished tasks (TASKHOOK_MAX_ACTIVE_TASKS); the client answers a 429 `active_task_limit` by
trying again shortly, so the offered load follows what the deployment completes instead of
piling up in the simulator's webhook outbox. When 40 % are submitted, one web process, one
reconciler and one worker are SIGKILLed and restarted. Then it waits (a condition on the
database, with a timeout) until every task is terminal and builds the report from the database,
`taskhook audit`, the client's own records, the simulator's counters and `/metrics` of the web
processes, scraped before the load, just before the kill and at the end.

    .venv/bin/python -m tests.chaos --tasks 10000            # add --json for machine output

Without DATABASE_URL the embedded PostgreSQL is started under --data-dir (a temp dir by default);
without TASKHOOK_S3_ENDPOINT_URL the embedded S3 as well. Each run gets a fresh database
(dropped afterwards unless --keep). Exit status 1 when a task was lost, a task was refunded
twice, the audit failed or another invariant of the report did not hold.
`tests/acceptance/test_chaos.py` runs the same thing with 1,000 tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.chaos_stack import (
    TERMINAL,
    ChaosStack,
    Check,
    DatabaseFacts,
    Faults,
    S3Target,
    Samples,
    Service,
    StackConfig,
    audit,
    count_open,
    log_summary,
    metrics_checks,
    read_database,
    run_cli,
    scrape,
    simulator_quiet,
    simulator_stats,
)
from tests.client_receiver import ClientFaults, ClientReceiver, ClientWebhookReport

MODEL = "black-forest-labs/flux-schnell"
REPLAY_EVERY = 10  # every 10th task: the client sends the same request again on purpose
CANCEL_EVERY = 100  # 1 %: canceled by the client soon after submitting
RETRYABLE = {500, 502, 503, 504}


@dataclass(frozen=True)
class ChaosConfig:
    database_url: str  # an existing database; `taskhook migrate` runs on it first
    s3: S3Target
    data_dir: Path
    tasks: int = 10_000
    seed: int = 7
    users: int = 4
    concurrency: int = 16  # client requests in flight
    kill_at: float | None = 0.4  # fraction submitted when the SIGKILLs happen; None: no kills
    faults: Faults = field(default_factory=Faults)
    poll_after: float = 3.0  # TASKHOOK_POLL_AFTER
    task_deadline: float = 600.0  # TASKHOOK_TASK_DEADLINE
    vendor_timeout: float = 10.0  # TASKHOOK_VENDOR_TIMEOUT
    poll_rate: float = 200.0  # TASKHOOK_POLL_RATE
    # TASKHOOK_CREATE_RATE: Replicate's own 600 creates a minute would make 1,000 tasks take
    # 100 s of registrations alone; the simulator has no such limit, so neither has the run.
    create_rate: float = 200.0
    reconcile_interval: float = 1.0  # taskhook reconcile --interval
    breaker_cooldown: float = 30.0  # TASKHOOK_BREAKER_COOLDOWN
    # TASKHOOK_MAX_ACTIVE_TASKS per user (0: no cap). The client answers its 429s by trying
    # again a little later, so the offered load follows what the machine completes; without a
    # cap the simulator's webhook backlog grows without bound (RESULTS.md "Chaos run").
    max_active: int = 40
    # "any": SIGKILL worker-0 whatever it is doing. "idle": freeze workers (SIGSTOP) until one
    # holds no `storing` lease and kill that one: a storing claim of a dead worker lapses only
    # after the worker's lease (30 s since it is renewed while alive), long for the CI run.
    worker_kill: str = "any"
    timeout: float = 900.0  # for every task to be terminal, counted from the first submit
    verify_files: int = 20
    progress: bool = True
    # Every task gets a client webhook (issue 18) to a receiver with these faults; None: none.
    client_faults: ClientFaults | None = field(default_factory=ClientFaults)
    webhook_timeout: float = 120.0  # all terminal -> every terminal event delivered


@dataclass
class Submission:
    n: int
    key: str
    user: int
    submitted_at: float = 0.0  # wall clock of the attempt that was accepted
    task_id: str | None = None
    error: str | None = None


@dataclass
class Kill:
    service: str
    pid: int
    at: float  # seconds since the first submit
    downtime: float = 0.0  # SIGKILL until the new process answered / started
    orphaned_storing: int = 0  # storing claims the dead worker held
    orphaned: list[str] = field(default_factory=list)
    orphaned_ended_after: float | None = None  # kill -> the last of them terminal (s)
    new_pid: int = 0


@dataclass
class ChaosReport:
    tasks: int
    submitted: int = 0
    submit_errors: int = 0
    completed: int = 0
    failed: int = 0
    canceled: int = 0
    refunded: int = 0
    missing_in_db: int = 0
    still_open: int = 0
    extra_in_db: int = 0
    double_refunds: int = 0
    refund_mismatches: int = 0
    charges_not_one: int = 0
    malformed: int = 0
    credits_ok: bool = False
    credits: dict[str, dict[str, int]] = field(default_factory=dict)
    audit_ok: bool = False
    audit: dict[str, Any] = field(default_factory=dict)
    failed_by_code: dict[str, int] = field(default_factory=dict)
    replays: int = 0
    replay_mismatches: int = 0
    cancels_requested: int = 0
    cancels_ok: int = 0
    cancels_too_late: int = 0
    canceled_not_requested: int = 0
    files_checked: int = 0
    files_good: int = 0
    submit_seconds: float = 0.0
    all_terminal_seconds: float | None = None
    p50: float = 0.0
    p99: float = 0.0
    max_latency: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    simulator: dict[str, Any] = field(default_factory=dict)
    metrics: list[Check] = field(default_factory=list)
    webhook_rows: dict[str, int] = field(default_factory=dict)
    clean_shutdown: dict[str, bool] = field(default_factory=dict)
    stuck: list[dict[str, Any]] = field(default_factory=list)
    log_events: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    peak_db_connections: int = 0
    throttled: int = 0
    client_retries: dict[str, int] = field(default_factory=dict)
    log_dir: str = ""
    client_webhooks: ClientWebhookReport | None = None

    @property
    def lost(self) -> int:
        return self.missing_in_db + self.still_open

    @property
    def metrics_ok(self) -> bool:
        return all(c.ok for c in self.metrics)

    @property
    def problems(self) -> list[str]:
        found = [
            f"{name} = {value}"
            for name, value in (
                ("lost", self.lost),
                ("double refunds", self.double_refunds),
                ("refund mismatches", self.refund_mismatches),
                ("charges not exactly one", self.charges_not_one),
                ("completed without result / failed without error", self.malformed),
                ("tasks in the database nobody submitted", self.extra_in_db),
                ("idempotent replays answered with another task", self.replay_mismatches),
                ("canceled without a client cancel", self.canceled_not_requested),
                ("submits that failed for good", self.submit_errors),
                ("stored files that did not verify", self.files_checked - self.files_good),
            )
            if value
        ]
        hooks = self.client_webhooks
        if hooks is not None:
            found += [
                f"client webhooks: {name} = {value}"
                for name, value in (
                    ("terminal events never delivered", hooks.missing_terminal),
                    ("older states received after newer ones", hooks.out_of_order),
                    ("signatures that did not verify", hooks.bad_signatures),
                )
                if value
            ]
        if not self.audit_ok:
            found.append("taskhook audit failed")
        if not self.credits_ok:
            found.append("a user's credits do not add up")
        found += [f"metrics: {c.name}: {c.detail}" for c in self.metrics if not c.ok]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(lost=self.lost, ok=self.ok, problems=self.problems, metrics_ok=self.metrics_ok)
        return doc


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def log(config: ChaosConfig, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)


class Client:
    """The tenants: their keys, their requests and what they were told."""

    def __init__(
        self, config: ChaosConfig, webs: list[Service], webhook_url: str | None = None
    ) -> None:
        self.config = config
        self.webs = webs
        self.webhook_url = webhook_url
        self.rng = random.Random(config.seed)
        self.keys: list[str] = []
        self.emails: list[str] = []
        self.granted: dict[str, int] = {}
        self.subs = [
            Submission(n, f"chaos-{config.seed}-{n}", n % config.users) for n in range(config.tasks)
        ]
        self.acked = 0
        self.throttled = 0  # 429 active_task_limit answers
        self.retried = {"transport error": 0, "5xx": 0}  # requests sent again elsewhere
        self.peak_connections = 0  # to the database, seen while waiting for all-terminal
        self.reached = asyncio.Event()  # the kill threshold
        self.cancel_jobs: list[asyncio.Task[None]] = []
        self.cancel_requested: set[str] = set()
        self.counts = {"replays": 0, "replay_mismatches": 0, "cancel_ok": 0, "cancel_409": 0}
        self.http = [
            httpx.AsyncClient(
                base_url=w.url,
                timeout=30,
                limits=httpx.Limits(max_connections=config.concurrency),
            )
            for w in webs
        ]

    async def close(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.http))

    async def create_users(self, env: dict[str, str]) -> None:
        per_user = -(-self.config.tasks // self.config.users) + 10
        run = secrets.token_hex(3)

        async def one(i: int) -> None:
            email = f"chaos-{run}-{i}@taskhook.test"
            code, out = await run_cli(env, "users", "create", email, "--credits", str(per_user))
            if code != 0:
                raise RuntimeError(f"taskhook users create failed: {out}")
            self.emails[i] = email
            self.keys[i] = json.loads(out.strip().splitlines()[-1])["api_key"]
            self.granted[email] = per_user

        self.emails = [""] * self.config.users
        self.keys = [""] * self.config.users
        await asyncio.gather(*(one(i) for i in range(self.config.users)))

    async def webhook_secrets(self) -> list[str]:
        """Each user's webhook signing secret, by user number."""
        found = []
        for user in range(self.config.users):
            response, error = await self.request(0, "GET", "/v1/webhooks/secret", user=user)
            if response is None or response.status_code != 200:
                raise RuntimeError(f"GET /v1/webhooks/secret failed: {error}")
            found.append(str(response.json()["key"]))
        return found

    async def request(
        self,
        first_web: int,
        method: str,
        path: str,
        *,
        user: int,
        give_up_after: float = 120,
        **kw: Any,
    ) -> tuple[httpx.Response | None, str]:
        """Send, moving to the next web process after a transport error or a 5xx."""
        headers = {"Authorization": f"Bearer {self.keys[user]}", **kw.pop("headers", {})}
        deadline = time.monotonic() + give_up_after
        web, error = first_web, ""
        for attempt in range(1000):
            try:
                response = await self.http[web].request(method, path, headers=headers, **kw)
                if response.status_code not in RETRYABLE:
                    return response, ""
                error = f"{response.status_code} {response.text[:200]}"
                self.retried["5xx"] += 1
            except httpx.TransportError as exc:
                error = repr(exc)
                self.retried["transport error"] += 1
            if time.monotonic() > deadline:
                break
            web = (web + 1) % len(self.http)
            await asyncio.sleep(min(1.0, 0.05 * (attempt + 1)))  # a client's retry backoff
        return None, error

    async def submit_all(self) -> None:
        gate = asyncio.Semaphore(self.config.concurrency)
        threshold = (self.config.kill_at or 2.0) * self.config.tasks

        async def submit(sub: Submission) -> None:
            body: dict[str, Any] = {
                "model": MODEL,
                "input": {"prompt": f"chaos {sub.n}", "seed": sub.n},
            }
            if self.webhook_url is not None:
                # Every task tells its client when it ends; every 4th also when it starts and
                # progresses (the ordering check needs several events per task, the CI run's
                # two cores the fewer POSTs).
                body["webhook"] = self.webhook_url
                body["webhook_events_filter"] = (
                    ["start", "progress", "completed"] if sub.n % 4 == 0 else ["completed"]
                )
            web = sub.n % len(self.http)
            async with gate:
                for attempt in range(100_000):
                    sub.submitted_at = time.time()
                    response, error = await self.request(
                        web,
                        "POST",
                        "/v1/tasks",
                        user=sub.user,
                        json=body,
                        headers={"Idempotency-Key": sub.key},
                    )
                    if not (
                        response is not None
                        and response.status_code == 429
                        and response.json()["error"]["code"] == "active_task_limit"
                    ):
                        break
                    # at TASKHOOK_MAX_ACTIVE_TASKS: "submit more when some have finished"
                    self.throttled += 1
                    await asyncio.sleep(min(1.0, 0.05 * 1.5**attempt))
                if response is None or response.status_code != 202:
                    sub.error = error or f"{response.status_code if response else '?'}"
                    if response is not None:
                        sub.error += f" {response.text[:200]}"
                    return
                sub.task_id = str(response.json()["id"])
                self.acked += 1
                if self.acked >= threshold:
                    self.reached.set()
                if sub.n % REPLAY_EVERY == 3:
                    await self.replay(sub, body, (web + 1) % len(self.http))
            if sub.n % CANCEL_EVERY == CANCEL_EVERY // 2:
                self.cancel_jobs.append(asyncio.create_task(self.cancel(sub)))

        await asyncio.gather(*(submit(s) for s in self.subs))
        await asyncio.gather(*self.cancel_jobs)

    async def replay(self, sub: Submission, body: dict[str, Any], web: int) -> None:
        response, _ = await self.request(
            web,
            "POST",
            "/v1/tasks",
            user=sub.user,
            json=body,
            headers={"Idempotency-Key": sub.key},
        )
        self.counts["replays"] += 1
        if (
            response is None
            or response.status_code != 202
            or response.json().get("id") != sub.task_id
            or response.headers.get("idempotent-replayed") != "true"
        ):
            self.counts["replay_mismatches"] += 1

    async def cancel(self, sub: Submission) -> None:
        assert sub.task_id
        # the client changes its mind at some point while the job runs
        await asyncio.sleep(self.rng.random() * self.config.faults.job_seconds * 1.5)
        self.cancel_requested.add(sub.task_id)
        response, _ = await self.request(
            (sub.n + 1) % len(self.http), "POST", f"/v1/tasks/{sub.task_id}/cancel", user=sub.user
        )
        if response is not None and response.status_code == 200:
            self.counts["cancel_ok"] += 1
        elif response is not None and response.status_code == 409:
            self.counts["cancel_409"] += 1

    async def verify_files(self, ids: list[str], user_of: dict[str, int]) -> tuple[int, int]:
        """Read stored results back through the API's presigned URLs; (checked, good)."""
        checked = good = 0
        async with httpx.AsyncClient(timeout=30) as plain:
            for task_id in ids:
                response, _ = await self.request(
                    len(self.http) - 1, "GET", f"/v1/tasks/{task_id}", user=user_of[task_id]
                )
                result = response.json().get("result") if response is not None else None
                for f in (result or {}).get("files", [result] if result else []):
                    body = (await plain.get(f["url"])).content
                    checked += 1
                    good += int(
                        hashlib.sha256(body).hexdigest() == f["sha256"]
                        and body.startswith(b"\x89PNG")
                    )
        return checked, good


STORING_LEASES = (
    "SELECT 'tsk_' || replace(id::text, '-', '') FROM tasks WHERE status = 'storing'"
    " AND lease_owner LIKE $1 AND lease_expires_at > now()"
)


async def storing_leases(dsn: str, pid: int) -> list[str]:
    """The tasks a worker process holds a live `storing` lease on (its owner names its pid)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(STORING_LEASES, f"%:{pid}:%")]
    finally:
        await conn.close()


IDLE_SEARCH_SECONDS = 10.0


async def idle_worker(config: ChaosConfig, stack: ChaosStack) -> Service:
    """A worker frozen (SIGSTOP) while it holds no storing lease; the caller kills it.

    A statement sent just before the freeze still commits, so the leases are read after a
    short settle; a worker found holding some is let go on (SIGCONT) and the next one tried.
    The search is short: a worker runs each storing job on its own and claims the next as a
    slot frees (issue 14.4), so under load it is seldom without a claim, and every freeze slows
    it; one killed with claims costs their lease (30 s), less than a long search."""
    deadline = time.monotonic() + IDLE_SEARCH_SECONDS
    while True:
        for worker in stack.workers:
            assert worker.proc is not None
            pid, idle = worker.proc.pid, False
            os.killpg(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(0.2)  # settle: let a claim already in flight commit
                idle = not await storing_leases(config.database_url, pid)
            finally:
                if not idle:
                    os.killpg(pid, signal.SIGCONT)
            if idle:
                return worker
            if time.monotonic() > deadline:
                log(
                    config,
                    f"no worker without storing claims found in {IDLE_SEARCH_SECONDS:g} s: "
                    "killing one anyway",
                )
                return worker
            await asyncio.sleep(0.05)  # let it run on before the next look


async def kill_and_restart(
    config: ChaosConfig, stack: ChaosStack, started: float, mid_scrapes: dict[str, Samples]
) -> list[Kill]:
    """SIGKILL one process of each kind at once, then start each again."""
    worker = await idle_worker(config, stack) if config.worker_kill == "idle" else stack.workers[0]
    victims = [stack.webs[0], stack.reconcilers[0], worker]
    for web in stack.webs:  # the killed web's counters as late as possible before it dies
        mid_scrapes[web.name] = await scrape(web.url) or {}
    kills = []
    for service in victims:
        assert service.proc is not None
        kills.append(Kill(service.name, service.proc.pid, round(time.time() - started, 2)))
    t0 = time.monotonic()
    mid_scrapes["killed_at"] = {("time", ()): time.time()}
    await asyncio.gather(*(v.kill() for v in victims))
    kills[2].orphaned = await storing_leases(config.database_url, kills[2].pid)
    kills[2].orphaned_storing = len(kills[2].orphaned)
    log(config, f"[{time.time() - started:7.1f}s] SIGKILLed {', '.join(v.name for v in victims)}")

    async def back(kill: Kill, service: Service) -> None:
        await stack.restart(service)
        kill.downtime = round(time.monotonic() - t0, 2)
        assert service.proc is not None
        kill.new_pid = service.proc.pid

    await asyncio.gather(*(back(k, v) for k, v in zip(kills, victims, strict=True)))
    log(
        config,
        f"[{time.time() - started:7.1f}s] restarted: {[(k.service, k.downtime) for k in kills]}",
    )
    return kills


async def wait_all_terminal(config: ChaosConfig, client: Client, started: float) -> float | None:
    """Seconds from the first submit until the database holds every acknowledged task and none
    is open; None after the timeout."""
    acked = sum(1 for s in client.subs if s.task_id)
    last_note = 0.0
    while True:
        total, still_open, connections = await count_open(config.database_url)
        client.peak_connections = max(client.peak_connections, connections)
        now = time.time()
        if total >= acked and still_open == 0:
            return now - started
        if now - started > config.timeout:
            return None
        if now - last_note > 5:
            log(config, f"[{now - started:7.1f}s] waiting: {still_open} of {total} tasks open")
            last_note = now
        await asyncio.sleep(0.25)


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    report = ChaosReport(tasks=config.tasks)
    log_dir = config.data_dir / "logs"
    report.log_dir = str(log_dir)
    stack = ChaosStack(
        StackConfig(
            database_url=config.database_url,
            s3=config.s3,
            data_dir=config.data_dir,
            log_dir=log_dir,
            faults=config.faults,
            seed=config.seed,
            poll_after=config.poll_after,
            task_deadline=config.task_deadline,
            vendor_timeout=config.vendor_timeout,
            poll_rate=config.poll_rate,
            create_rate=config.create_rate,
            reconcile_interval=config.reconcile_interval,
            breaker_cooldown=config.breaker_cooldown,
            max_active=config.max_active,
        )
    )
    client: Client | None = None
    kill_job: asyncio.Task[list[Kill]] | None = None
    receiver = ClientReceiver(config.client_faults, config.seed) if config.client_faults else None
    try:
        t0 = time.monotonic()
        await stack.start()
        log(config, f"deployment up in {time.monotonic() - t0:.1f} s; logs in {log_dir}")
        if receiver is not None:
            await receiver.start()
        client = Client(config, stack.webs, receiver.url if receiver else None)
        await client.create_users(stack.env)
        if receiver is not None:
            receiver.set_secrets(await client.webhook_secrets())
        before = {w.name: await scrape(w.url) for w in stack.webs}
        mid: dict[str, Samples] = {}
        started = time.time()

        async def killer() -> list[Kill]:
            await client.reached.wait()
            return await kill_and_restart(config, stack, started, mid)

        kill_job = asyncio.create_task(killer()) if config.kill_at is not None else None
        await client.submit_all()
        report.submit_seconds = round(time.time() - started, 2)
        log(config, f"[{report.submit_seconds:7.1f}s] all {config.tasks} submits answered")
        if kill_job is not None and client.reached.is_set():
            report.kills = await kill_job  # else: too few submits succeeded; no kills
        report.all_terminal_seconds = await wait_all_terminal(config, client, started)
        if receiver is not None:
            users = {sub.task_id: sub.user for sub in client.subs if sub.task_id}
            waited = await receiver.wait_delivered(set(users), config.webhook_timeout)
            log(config, f"client webhooks: every terminal event delivered after {waited} s")
            report.client_webhooks = receiver.report(users)
            report.client_webhooks.wait_seconds = round(waited or -1.0, 1)
        quiet = await simulator_quiet(stack.simulator.url)
        after = {w.name: await scrape(w.url) for w in stack.webs}
        sim = await simulator_stats(stack.simulator.url)
        # webhooks still arriving while the web processes were scraped widen the tolerance
        moving = sim["webhooks"]["sent"] - quiet["webhooks"]["sent"]
        facts = await read_database(config.database_url)
        report.audit_ok, report.audit = await audit(stack.env)
        fill_report(report, client, facts, sim)
        for kill in report.kills:
            ended = [facts.tasks[i]["ended"] for i in kill.orphaned if i in facts.tasks]
            if ended and None not in ended:
                kill.orphaned_ended_after = round(max(ended) - started - kill.at, 1)
        report.metrics = metrics_checks(
            before, mid, after, stack.webs[0].name, sim, facts, moving=moving
        )
        completed = [i for i, t in facts.tasks.items() if t["status"] == "completed"]
        user_of = {s.task_id: s.user for s in client.subs if s.task_id}
        sample = random.Random(config.seed).sample(
            completed, min(config.verify_files, len(completed))
        )
        report.files_checked, report.files_good = await client.verify_files(sample, user_of)
        await check_credits(report, client, facts)
    finally:
        if kill_job is not None and not kill_job.done():
            kill_job.cancel()
            await asyncio.gather(kill_job, return_exceptions=True)
        if client is not None:
            await client.close()
        report.clean_shutdown = await stack.stop()
        if receiver is not None:
            await receiver.stop()
        report.log_events = log_summary(log_dir)
        report.cpu_seconds = {s.name: round(s.cpu_seconds, 1) for s in stack.services}
    return report


def fill_report(
    report: ChaosReport, client: Client, facts: DatabaseFacts, sim: dict[str, Any]
) -> None:
    acked = {s.task_id: s for s in client.subs if s.task_id}
    report.submitted = len(acked)
    report.submit_errors = sum(1 for s in client.subs if s.error)
    report.completed = facts.by_status.get("completed", 0)
    report.failed = facts.by_status.get("failed", 0)
    report.canceled = facts.by_status.get("canceled", 0)
    report.refunded = facts.refunds
    report.double_refunds = facts.double_refunds
    report.refund_mismatches = facts.refund_mismatches
    report.charges_not_one = facts.charges_not_one
    report.malformed = facts.malformed
    report.failed_by_code = dict(facts.failed_by_code)
    report.missing_in_db = sum(1 for i in acked if i not in facts.tasks)
    report.extra_in_db = sum(1 for i in facts.tasks if i not in acked)
    open_tasks = [t for t in facts.tasks.values() if t["status"] not in TERMINAL]
    report.still_open = len(open_tasks)
    report.stuck = [
        {k: t[k] for k in ("id", "status", "last_error", "lease_owner", "attempts")}
        for t in open_tasks[:20]
    ]
    report.replays = client.counts["replays"]
    report.replay_mismatches = client.counts["replay_mismatches"]
    report.cancels_requested = len(client.cancel_requested)
    report.cancels_ok = client.counts["cancel_ok"]
    report.cancels_too_late = client.counts["cancel_409"]
    report.canceled_not_requested = sum(
        1
        for i, t in facts.tasks.items()
        if t["status"] == "canceled" and i not in client.cancel_requested
    )
    latencies = [
        t["ended"] - acked[i].submitted_at
        for i, t in facts.tasks.items()
        if i in acked and t["ended"] is not None
    ]
    report.p50 = round(percentile(latencies, 50), 2)
    report.p99 = round(percentile(latencies, 99), 2)
    report.max_latency = round(max(latencies, default=0.0), 2)
    report.simulator = sim
    report.peak_db_connections = client.peak_connections
    report.throttled = client.throttled
    report.client_retries = dict(client.retried)
    report.webhook_rows = dict(facts.webhook_rows)


async def check_credits(report: ChaosReport, client: Client, facts: DatabaseFacts) -> None:
    """balance = granted - charges + refunds, from three sides: what the client granted and
    what became of its tasks, the ledger, and what GET /v1/me tells the client."""
    report.credits_ok = True
    for user, email in enumerate(client.emails):
        b = facts.balances.get(email, {})
        response, _ = await client.request(0, "GET", "/v1/me", user=user)
        me = response.json().get("credits") if response is not None else None
        expected = client.granted[email] - b.get("task_costs", 0) + b.get("ended_badly_costs", 0)
        ledger = b.get("granted", 0) - b.get("charged", 0) + b.get("refunded", 0)
        ok = (
            b.get("balance") == expected == ledger == me
            and b.get("granted") == client.granted[email]
        )
        report.credits[email] = {
            **b,
            "expected": expected,
            "me": me if me is not None else -1,
            "ok": int(ok),
        }
        report.credits_ok &= ok


def _kills(report: ChaosReport) -> str:
    parts = []
    for k in report.kills:
        text = f"{k.service} at {k.at:.1f} s, back after {k.downtime:.1f} s"
        if k.service.startswith("worker"):
            text += f", held {k.orphaned_storing} storing claims"
            if k.orphaned_ended_after is not None:
                text += f" (done {k.orphaned_ended_after:.0f} s after the kill)"
        parts.append(text)
    return "; ".join(parts) or "none"


def _client_webhooks(hooks: ClientWebhookReport | None) -> str:
    if hooks is None:
        return "off"
    return (
        f"terminal delivered {hooks.tasks_with_terminal} (missing {hooks.missing_terminal}), "
        f"out of order {hooks.out_of_order}, duplicates {hooks.duplicates}, bad signatures "
        f"{hooks.bad_signatures}; {hooks.received} POSTs received, {hooks.dropped} dropped, "
        f"{hooks.failed_answers} answered with an error; all delivered "
        f"{hooks.wait_seconds} s after all-terminal"
    )


def table(report: ChaosReport) -> str:
    sim = report.simulator
    wh, api, jobs = sim.get("webhooks", {}), sim.get("api", {}), sim.get("predictions", {})
    failed = ", ".join(f"{k} {v}" for k, v in sorted(report.failed_by_code.items()))
    terminal = (
        f"{report.all_terminal_seconds:.1f} s"
        if report.all_terminal_seconds is not None
        else "NOT REACHED (timeout)"
    )
    circuit = sum(v for k, v in report.log_events.items() if " circuit_open " in k)
    not_clean = [k for k, v in report.clean_shutdown.items() if not v]
    rows: list[tuple[str, Any]] = [
        (
            "submitted (202)",
            f"{report.submitted} of {report.tasks} "
            f"({report.throttled} x 429 active_task_limit on the way)",
        ),
        ("completed", report.completed),
        ("failed", f"{report.failed} ({failed})" if failed else report.failed),
        (
            "canceled (by the client)",
            f"{report.canceled} (cancel asked {report.cancels_requested}: "
            f"{report.cancels_ok} x 200, {report.cancels_too_late} x 409 already terminal)",
        ),
        ("refunded", report.refunded),
        (
            "lost (not in DB + not terminal)",
            f"{report.lost} ({report.missing_in_db} + {report.still_open})",
        ),
        ("double refunds", report.double_refunds),
        ("refund/charge mismatches", report.refund_mismatches + report.charges_not_one),
        ("tasks in DB nobody submitted", report.extra_in_db),
        ("completed w/o result, failed w/o error", report.malformed),
        (
            "client requests retried on the other web",
            ", ".join(f"{v} after a {k}" for k, v in report.client_retries.items()),
        ),
        ("submits given up", report.submit_errors),
        (
            "idempotent replays -> same task",
            f"{report.replays - report.replay_mismatches} of {report.replays}",
        ),
        (
            "credits (balance = granted - charges + refunds)",
            "ok, every user (DB, ledger, GET /v1/me)" if report.credits_ok else "MISMATCH",
        ),
        ("audit (taskhook audit)", "ok" if report.audit_ok else "FAILED"),
        ("stored files re-read (sha256, PNG)", f"{report.files_good}/{report.files_checked}"),
        ("time to submit all", f"{report.submit_seconds:.1f} s"),
        ("time to all-terminal", terminal),
        (
            "p50 / p99 / max submit->terminal",
            f"{report.p50:.2f} / {report.p99:.2f} / {report.max_latency:.2f} s",
        ),
        ("SIGKILLed + restarted", _kills(report)),
        ("vendor jobs / failed by the vendor", f"{jobs.get('created')} / {jobs.get('failed')}"),
        (
            "webhooks: messages / dropped / duplicated / junk-signed",
            f"{wh.get('messages')} / {wh.get('dropped')} / {wh.get('duplicated')} / "
            f"{wh.get('bad_signature')}",
        ),
        (
            "webhook POSTs answered 2xx / given up",
            f"{wh.get('delivered')} / {wh.get('failed_deliveries')}",
        ),
        (
            "vendor API calls / 503 / 429",
            f"{api.get('requests')} / {api.get('errors_503')} / {api.get('errors_429')}",
        ),
        ("vendor polls (GET prediction)", sim.get("fetches", {}).get("total")),
        ("circuit breaker opened (log lines)", circuit),
        ("client webhooks", _client_webhooks(report.client_webhooks)),
        ("metrics checks", "ok" if report.metrics_ok else "FAILED"),
        ("clean SIGTERM shutdown", "all" if not not_clean else f"NOT: {', '.join(not_clean)}"),
        ("peak DB connections (while waiting)", report.peak_db_connections),
        ("CPU seconds", ", ".join(f"{k} {v:.0f}" for k, v in report.cpu_seconds.items())),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'':<{width}} | |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {label:<{width}} | {value} |" for label, value in rows]
    lines.append("")
    lines += [f"metrics: [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in report.metrics]
    events = ", ".join(f"{k}: {v}" for k, v in report.log_events.items())
    lines.append(f"warnings/errors logged: {events or 'none'}")
    if report.stuck:
        lines.append(f"still open (first 20): {report.stuck}")
    if not report.audit_ok:
        lines.append(f"audit report: {json.dumps(report.audit)[:2000]}")
    lines.append("RESULT: " + ("ok" if report.ok else "FAILED: " + "; ".join(report.problems)))
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    from db.pool import dsn_for_database
    from taskhook.embedded import start_postgres, start_s3

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="taskhook-chaos-"))
    server_dsn = (
        os.environ.get("DATABASE_URL")
        or (await asyncio.to_thread(start_postgres, data_dir / "embedded")).dsn
    )
    if os.environ.get("TASKHOOK_S3_ENDPOINT_URL"):
        s3 = S3Target(
            os.environ["TASKHOOK_S3_ENDPOINT_URL"],
            os.environ.get("AWS_ACCESS_KEY_ID"),
            os.environ.get("AWS_SECRET_ACCESS_KEY"),
            os.environ.get("AWS_REGION", "us-east-1"),
            os.environ.get("TASKHOOK_S3_BUCKET", "taskhook-chaos"),
        )
    else:
        embedded = await asyncio.to_thread(start_s3, data_dir / "embedded", bucket="taskhook-chaos")
        s3 = S3Target(
            embedded.endpoint_url,
            embedded.access_key_id,
            embedded.secret_access_key,
            embedded.region,
            embedded.bucket,
        )
    name = f"taskhook_chaos_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        config = ChaosConfig(
            database_url=dsn_for_database(server_dsn, name),
            s3=s3,
            data_dir=data_dir / name,
            tasks=args.tasks,
            seed=args.seed,
            users=args.users,
            concurrency=args.concurrency,
            kill_at=None if args.no_kill else args.kill_at,
            faults=Faults(job_seconds=args.job_seconds),
            poll_after=args.poll_after,
            task_deadline=args.deadline,
            vendor_timeout=args.vendor_timeout,
            poll_rate=args.poll_rate,
            reconcile_interval=args.interval,
            breaker_cooldown=args.breaker_cooldown,
            worker_kill=args.worker_kill,
            max_active=args.max_active,
            timeout=args.timeout or args.deadline + 300,
            progress=not args.quiet,
            client_faults=None if args.no_client_webhooks else ClientFaults(),
        )
        report = await run_chaos(config)
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(
            f"\nchaos run: {args.tasks} tasks, seed {args.seed}, {os.cpu_count()} CPUs, "
            f"database {name}{' (kept)' if args.keep else ''}, logs {report.log_dir}"
        )
        print(table(report))
    return 0 if report.ok else 1


def _default(name: str) -> Any:
    return ChaosConfig.__dataclass_fields__[name].default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--tasks", type=int, default=_default("tasks"))
    add("--seed", type=int, default=_default("seed"), help="simulator faults, client choices")
    add("--json", action="store_true", help="print the report as JSON")
    add("--users", type=int, default=_default("users"))
    add("--concurrency", type=int, default=_default("concurrency"), help="requests in flight")
    add("--max-active", type=int, default=_default("max_active"), help="per user, 0: no cap")
    add("--kill-at", type=float, default=_default("kill_at"), help="fraction submitted")
    add("--no-kill", action="store_true")
    add("--worker-kill", choices=("any", "idle"), default=_default("worker_kill"))
    add("--job-seconds", type=float, default=Faults().job_seconds, help="simulator")
    add("--poll-after", type=float, default=_default("poll_after"), help="TASKHOOK_POLL_AFTER")
    add("--deadline", type=float, default=_default("task_deadline"), help="TASKHOOK_TASK_DEADLINE")
    add("--vendor-timeout", type=float, default=_default("vendor_timeout"))
    add("--poll-rate", type=float, default=_default("poll_rate"), help="TASKHOOK_POLL_RATE")
    add("--interval", type=float, default=_default("reconcile_interval"), help="reconcile")
    add("--breaker-cooldown", type=float, default=_default("breaker_cooldown"))
    add("--timeout", type=float, default=0, help="for all-terminal (s); 0: deadline + 300")
    add("--data-dir", default="", help="default: a new temp dir")
    add("--keep", action="store_true", help="keep the database")
    add("--quiet", action="store_true", help="no progress lines on stderr")
    add("--no-client-webhooks", action="store_true", help="tasks without a client webhook")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.users < 1 or args.concurrency < 1:
        parser.error("--tasks, --users and --concurrency must be at least 1")
    return args


async def _main_until_signal(args: argparse.Namespace) -> int:
    """SIGTERM/SIGHUP cancel the run like Ctrl-C does, so every child is stopped on the way
    out (and the database dropped); the atexit hook in chaos_stack covers the rest."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await main(args)
    except asyncio.CancelledError:
        print("chaos run interrupted; processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(_main_until_signal(parse_args())))
