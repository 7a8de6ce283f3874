"""The deployment the chaos run drives: every taskhook process as its own OS process.

`ChaosStack` starts, through the real command line (`python -m taskhook.cli ...`), the vendor
simulator with faults, `taskhook migrate`, the users, N x `serve` (each on its own port with its
own TASKHOOK_PUBLIC_URL, so vendor callbacks reach the process that registered the task),
N x `reconcile` and N x `worker`, all against one PostgreSQL database and one S3 bucket. It can
SIGKILL and restart any of them and always cleans up: every child runs in its own process
group, which is killed on `stop()`, on Ctrl-C and, as a last resort, by an `atexit` hook.

Also here: reading Prometheus text (`scrape`), the simulator's counters, the database facts the
report is built from (`read_database`) and the checks that the web processes' `/metrics` agree
with the simulator and the database (`metrics_checks`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
CLI = (sys.executable, "-m", "taskhook.cli")
TERMINAL = ("completed", "failed", "canceled")
LIVE = ("pending", "submitted", "processing", "storing")
API_TOKEN = "chaos-token"
STOP_TIMEOUT = 15.0

# Every child process group still alive; the atexit hook kills what `stop()` did not reach.
_LIVE_GROUPS: set[int] = set()


def _kill_leftovers() -> None:
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE_GROUPS.discard(pgid)


atexit.register(_kill_leftovers)


@dataclass(frozen=True)
class S3Target:
    endpoint_url: str
    access_key_id: str | None
    secret_access_key: str | None
    region: str
    bucket: str


@dataclass(frozen=True)
class Faults:
    """`taskhook simulator` options (API.md); the defaults are the issue's chaos mix."""

    drop: float = 0.2
    duplicate: float = 0.3
    reorder: bool = True
    early: bool = True
    error_rate: float = 0.1
    fail: float = 0.1
    bad_signature: float = 0.1
    job_seconds: float = 2.0
    # The vendors' clocks shrink with the jobs: Replicate's ~30 s 429 wait becomes 1 s, its
    # minute of final-webhook retries 2 s (the retry policy itself is Replicate's: only the
    # final webhook, after any refusal), its hour of result retention 2 minutes.
    time_scale: float = 1 / 30

    def argv(self) -> list[str]:
        args = [
            *("--time-scale", str(self.time_scale)),
            *("--drop", str(self.drop), "--duplicate", str(self.duplicate)),
            *("--error-rate", str(self.error_rate), "--fail", str(self.fail)),
            *("--bad-signature", str(self.bad_signature), "--job-seconds", str(self.job_seconds)),
        ]
        return args + (["--reorder"] if self.reorder else []) + (["--early"] if self.early else [])


@dataclass
class Service:
    """One OS process of the deployment; `generation` counts (re)starts."""

    name: str
    kind: str  # simulator | web | reconciler | worker
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    proc: asyncio.subprocess.Process | None = None
    generation: int = 0
    pids: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0  # over every generation, read just before each one ended

    def _account_cpu(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
            self.cpu_seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.generation += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== chaos: start #{self.generation} of {self.name}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *CLI,
                *self.argv,
                env=self.env,
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: killpg reaches everything
            )
        _LIVE_GROUPS.add(self.proc.pid)
        self.pids.append(self.proc.pid)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group and wait for the process to be gone."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            self._account_cpu()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind in its group
        _LIVE_GROUPS.discard(proc.pid)

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; True when it exited on SIGTERM in time."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            if proc is not None:
                _LIVE_GROUPS.discard(proc.pid)
            return True
        self._account_cpu()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
            clean = True
        except TimeoutError:
            clean = False
        await self.kill()
        return clean

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


async def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """A one-shot `taskhook ...` command: (exit code, stdout); stderr joins stdout on failure."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    _LIVE_GROUPS.add(proc.pid)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        _LIVE_GROUPS.discard(proc.pid)
    code = proc.returncode if proc.returncode is not None else -1
    text = out.decode(errors="replace")
    if code != 0:
        text += err.decode(errors="replace")
    return code, text


@dataclass(frozen=True)
class StackConfig:
    database_url: str
    s3: S3Target
    data_dir: Path
    log_dir: Path
    faults: Faults = field(default_factory=Faults)
    seed: int = 7
    webs: int = 2
    reconcilers: int = 2
    workers: int = 2
    poll_after: float = 2.0
    task_deadline: float = 60.0
    vendor_timeout: float = 3.0
    poll_rate: float = 200.0
    create_rate: float = 200.0
    reconcile_interval: float = 1.0
    breaker_cooldown: float = 30.0
    max_active: int = 0


class ChaosStack:
    """Start, kill, restart and stop the processes; see the module docstring."""

    def __init__(self, config: StackConfig) -> None:
        from simulator.signing import generate_secret

        self.config = config
        self.webhook_secret = generate_secret()
        config.log_dir.mkdir(parents=True, exist_ok=True)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.sim_port = sim_port = free_port()  # first: every environment names it
        self.simulator = Service(
            "simulator",
            "simulator",
            [
                "simulator",
                *("--port", str(sim_port), "--seed", str(config.seed)),
                *config.faults.argv(),
                *("--webhook-secret", self.webhook_secret),
            ],
            self._env(),
            config.log_dir / "simulator.log",
            port=sim_port,
        )
        self.webs = [self._web(i) for i in range(config.webs)]
        self.reconcilers = [
            Service(
                f"reconciler-{i}",
                "reconciler",
                ["reconcile", "--interval", str(config.reconcile_interval)],
                self._env(public_url=self.webs[i % len(self.webs)].url),
                config.log_dir / f"reconciler-{i}.log",
            )
            for i in range(config.reconcilers)
        ]
        self.workers = [
            Service(
                f"worker-{i}",
                "worker",
                ["worker"],
                # registration retries from this worker put this web into the callback URL
                self._env(public_url=self.webs[i % len(self.webs)].url),
                config.log_dir / f"worker-{i}.log",
            )
            for i in range(config.workers)
        ]

    @property
    def services(self) -> list[Service]:
        return [self.simulator, *self.webs, *self.reconcilers, *self.workers]

    def _web(self, i: int) -> Service:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        return Service(
            f"web-{i}",
            "web",
            ["serve", "--host", "127.0.0.1", "--port", str(port)],
            self._env(public_url=url),
            self.config.log_dir / f"web-{i}.log",
            port=port,
        )

    def _env(self, *, public_url: str | None = None) -> dict[str, str]:
        c = self.config
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TASKHOOK_", "REPLICATE_", "FAL_", "MJ_", "AWS_"))
            and k not in ("DATABASE_URL", "PORT")
        }
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "DATABASE_URL": c.database_url,
                "TASKHOOK_DATA_DIR": str(c.data_dir),
                "TASKHOOK_SECRET": f"chaos-secret-{c.seed:0>32}",
                "TASKHOOK_ADMIN_KEY": f"chaos-admin-{c.seed:0>32}",
                "TASKHOOK_S3_ENDPOINT_URL": c.s3.endpoint_url,
                "TASKHOOK_S3_BUCKET": c.s3.bucket,
                "AWS_ACCESS_KEY_ID": c.s3.access_key_id or "",
                "AWS_SECRET_ACCESS_KEY": c.s3.secret_access_key or "",
                "AWS_REGION": c.s3.region,
                "REPLICATE_API_TOKEN": API_TOKEN,
                "REPLICATE_API_BASE": f"http://127.0.0.1:{self.sim_port}/v1",
                "REPLICATE_WEBHOOK_SECRET": self.webhook_secret,
                "TASKHOOK_ALLOW_PRIVATE_URLS": "1",  # results come from the local simulator
                "TASKHOOK_RATE_LIMIT": "0",
                "TASKHOOK_MAX_ACTIVE_TASKS": str(c.max_active),
                "TASKHOOK_POLL_AFTER": str(c.poll_after),
                "TASKHOOK_TASK_DEADLINE": str(c.task_deadline),
                "TASKHOOK_VENDOR_TIMEOUT": str(c.vendor_timeout),
                "TASKHOOK_POLL_RATE": str(c.poll_rate),
                "TASKHOOK_CREATE_RATE": str(c.create_rate),
                "TASKHOOK_BREAKER_COOLDOWN": str(c.breaker_cooldown),
                # Clients' webhooks (issue 18) go to a receiver that drops answers for 3 s:
                # give up on an attempt after 1 s, retry within seconds, many at once.
                "TASKHOOK_WEBHOOK_TIMEOUT": "1",
                "TASKHOOK_WEBHOOK_HOST_CONCURRENCY": "64",
                "TASKHOOK_WEBHOOK_RETRY_SCHEDULE": ",".join(["0.1", "0.2", "0.5"] + ["1"] * 12),
            }
        )
        if public_url:
            env["TASKHOOK_PUBLIC_URL"] = public_url
        return env

    @property
    def env(self) -> dict[str, str]:
        """The environment for one-shot commands (migrate, users create, audit)."""
        return self._env()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.simulator.start()
        await wait_until(
            lambda: self._answers(f"{self.simulator.url}/_sim/stats", self.simulator),
            timeout=60,
            what="the simulator",
        )
        code, out = await run_cli(self.env, "migrate")
        if code != 0:
            raise RuntimeError(f"taskhook migrate failed: {out}")
        for service in [*self.webs, *self.reconcilers, *self.workers]:
            await service.start()
        await asyncio.gather(*(self.wait_ready(s) for s in self.services))

    async def _answers(self, url: str, service: Service) -> bool:
        if not service.alive:
            raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_ready(self, service: Service, timeout: float = 90) -> None:
        """Web: /readyz answers 200. Worker: it logged `worker_started` in this generation.
        Reconciler: it is still running after its runtime opened (it logs nothing before)."""
        if service.kind in ("web", "simulator"):
            path = "/readyz" if service.kind == "web" else "/_sim/stats"
            await wait_until(
                lambda: self._answers(service.url + path, service),
                timeout=timeout,
                what=f"{service.name} to answer",
            )
            return
        marker = f"=== chaos: start #{service.generation} of {service.name}"
        ready_line = '"worker_started"' if service.kind == "worker" else None

        async def started() -> bool:
            if not service.alive:
                raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
            if ready_line is None:
                return True
            text = service.log_path.read_text(encoding="utf-8", errors="replace")
            return ready_line in text.rpartition(marker)[2]

        await wait_until(started, timeout=timeout, what=f"{service.name} to start")

    async def restart(self, service: Service) -> None:
        await service.start()
        await self.wait_ready(service)

    async def stop(self) -> dict[str, bool]:
        """SIGTERM everything (taskhook first, the vendor last); which exited in time."""
        ours = [*self.webs, *self.reconcilers, *self.workers]
        clean = await asyncio.gather(*(s.terminate() for s in ours))
        result = {s.name: ok for s, ok in zip(ours, clean, strict=True)}
        result[self.simulator.name] = await self.simulator.terminate()
        return result

    def kill_everything_now(self) -> None:
        """Synchronous last resort (Ctrl-C while the loop is gone)."""
        _kill_leftovers()


# -- observing -------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_sum(samples: Samples, name: str, **labels: str | tuple[str, ...]) -> float:
    """Sum of every sample called `name` whose labels match (a tuple = any of these)."""
    total = 0.0
    for (sample_name, sample_labels), value in samples.items():
        if sample_name != name:
            continue
        have = dict(sample_labels)
        if all(have.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in labels.items()):
            total += value
    return total


async def scrape(url: str) -> Samples | None:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{url}/metrics")
    except httpx.HTTPError:
        return None
    return parse_metrics(response.text) if response.status_code == 200 else None


async def simulator_stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        stats: dict[str, Any] = (await client.get(f"{url}/_sim/stats")).json()
        return stats


async def count_open(dsn: str) -> tuple[int, int, int]:
    """(tasks in the database, tasks not yet terminal, connections to the database)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status::text = ANY($1)) AS open,"
            " (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())"
            " AS connections FROM tasks",
            list(LIVE),
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["total"]), int(row["open"]), int(row["connections"])


@dataclass
class DatabaseFacts:
    tasks: dict[str, dict[str, Any]]  # public id -> status, error code, times, refunds, charges
    by_status: Counter[str]
    failed_by_code: Counter[str]
    refunds: int
    double_refunds: int
    charges_not_one: int
    refund_mismatches: int  # refunded completed/live tasks, or failed/canceled without refund
    malformed: int  # completed without a result, failed without an error
    balances: dict[str, dict[str, int]]  # email -> balance, granted, charged, refunded
    webhook_rows: Counter[str]  # (status or outcome) -> rows
    deliveries_received_at: list[float]  # epoch seconds of accepted rows


async def read_database(dsn: str) -> DatabaseFacts:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT 'tsk_' || replace(t.id::text, '-', '') AS id, t.status::text AS status,
                   t.idempotency_key, t.error->>'code' AS error_code,
                   extract(epoch FROM t.created_at)::float8 AS created,
                   extract(epoch FROM t.completed_at)::float8 AS ended,
                   t.last_error, t.lease_owner, t.attempts, t.storage_attempts,
                   t.result IS NOT NULL AS has_result, t.error IS NOT NULL AS has_error,
                   u.email,
                   count(l.id) FILTER (WHERE l.kind = 'refund') AS refunds,
                   count(l.id) FILTER (WHERE l.kind = 'charge') AS charges
              FROM tasks AS t JOIN users AS u ON u.id = t.user_id
              LEFT JOIN credit_ledger AS l ON l.task_id = t.id
             GROUP BY t.id, u.email
            """
        )
        balances = await conn.fetch(
            """
            SELECT u.email, u.balance,
                   COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'grant'), 0)::bigint AS granted,
                   COALESCE(-sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0)::bigint
                       AS charged,
                   COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'refund'), 0)::bigint
                       AS refunded,
                   (SELECT COALESCE(sum(t.cost), 0) FROM tasks AS t WHERE t.user_id = u.id)::bigint
                       AS task_costs,
                   (SELECT COALESCE(sum(t.cost), 0) FROM tasks AS t WHERE t.user_id = u.id
                       AND t.status IN ('failed', 'canceled'))::bigint AS ended_badly_costs
              FROM users AS u LEFT JOIN credit_ledger AS l ON l.user_id = u.id
             GROUP BY u.id
            """
        )
        deliveries = await conn.fetch(
            "SELECT status, COALESCE(outcome, '-') AS outcome, count(*) AS n"
            " FROM webhook_deliveries GROUP BY 1, 2"
        )
        received = await conn.fetch(
            "SELECT extract(epoch FROM received_at)::float8 AS at FROM webhook_deliveries"
            " WHERE status = 'accepted' AND outcome = 'applied'"
        )
    finally:
        await conn.close()
    tasks = {r["id"]: dict(r) for r in rows}
    refund_mismatches = sum(
        1 for r in rows if r["refunds"] != (1 if r["status"] in ("failed", "canceled") else 0)
    )
    webhook_rows: Counter[str] = Counter()
    for d in deliveries:
        webhook_rows[d["status"]] += d["n"]
        if d["status"] == "accepted":
            webhook_rows[f"accepted/{d['outcome']}"] += d["n"]
    return DatabaseFacts(
        tasks=tasks,
        by_status=Counter(r["status"] for r in rows),
        failed_by_code=Counter(r["error_code"] or "?" for r in rows if r["status"] == "failed"),
        refunds=sum(r["refunds"] for r in rows),
        double_refunds=sum(1 for r in rows if r["refunds"] > 1),
        charges_not_one=sum(1 for r in rows if r["charges"] != 1),
        refund_mismatches=refund_mismatches,
        malformed=sum(
            1
            for r in rows
            if (r["status"] == "completed" and not r["has_result"])
            or (r["status"] == "failed" and not r["has_error"])
        ),
        balances={
            b["email"]: {
                k: int(b[k]) for k in ("balance", "granted", "charged", "refunded", "task_costs")
            }
            | {"ended_badly_costs": int(b["ended_badly_costs"])}
            for b in balances
        },
        webhook_rows=webhook_rows,
        deliveries_received_at=[float(r["at"]) for r in received],
    )


def log_summary(log_dir: Path) -> dict[str, int]:
    """Warnings and errors the processes logged, as "level event (process kind)" -> count;
    lines that are not JSON (a traceback printed by a dying process) count as "raw"."""
    found: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        kind = path.stem.rsplit("-", 1)[0]
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip() or line.startswith("=== chaos:"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                if kind != "simulator":
                    found[f"raw ({kind})"] += 1
                continue
            if isinstance(event, dict) and event.get("level") in ("warning", "error", "critical"):
                found[f"{event['level']} {event.get('event')} ({kind})"] += 1
    return dict(found.most_common())


async def audit(env: dict[str, str]) -> tuple[bool, dict[str, Any]]:
    """`taskhook audit`: its exit code and its JSON report."""
    code, out = await run_cli(env, "audit")
    try:
        report: dict[str, Any] = json.loads(out[out.index("{") :])
    except ValueError:
        report = {"unparsed": out[-2000:]}
    return code == 0, report


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


async def simulator_quiet(url: str, timeout: float = 120.0) -> dict[str, Any]:
    """Late webhooks (duplicates, reordered batches) can still be on the way after every task is
    terminal: wait until the simulator's counters stop moving, then return them."""
    deadline = time.monotonic() + timeout
    before = await simulator_stats(url)
    while True:
        await asyncio.sleep(0.5)
        now = await simulator_stats(url)
        if (now["webhooks"] == before["webhooks"] and now["api"] == before["api"]) or (
            time.monotonic() > deadline
        ):
            return now
        before = now


def metrics_checks(
    before: dict[str, Samples | None],
    mid: dict[str, Samples],
    after: dict[str, Samples | None],
    killed_web: str,
    sim: dict[str, Any],
    facts: DatabaseFacts,
    *,
    moving: int = 0,
) -> list[Check]:
    """Do the web processes' /metrics agree with the simulator and the database?

    Counters restart at zero with a process, so the killed web process counts twice: its
    reading just before the SIGKILL plus the new process's at the end. What it counted in the
    few milliseconds between that scrape and the kill is unknown: the tolerance is what the
    database received in that window (three times over, plus 5)."""
    checks: list[Check] = []
    names = sorted(after)
    lives: list[Samples] = [s for s in after.values() if s is not None]
    if killed_web in mid:
        lives.append(mid[killed_web])
    killed_at = mid.get("killed_at", {}).get(("time", ()), 0.0)
    in_window = sum(
        1 for t in facts.deliveries_received_at if killed_at - 1.0 <= t <= killed_at + 1
    )
    tol = 5 + 3 * in_window + moving

    def total(name: str, **labels: str | tuple[str, ...]) -> float:
        return sum(metric_sum(s, name, **labels) for s in lives)

    answered = (
        all(after[n] is not None for n in names)
        and all(before[n] is not None for n in names)
        and (not mid or all(n in mid and mid[n] for n in names))
    )
    checks.append(
        Check("scraped", answered, "every web answered /metrics before, mid-run (kill), after")
    )
    fresh = all(
        metric_sum(s, name) == 0
        for s in before.values()
        if s is not None
        for name in {k[0] for k in s if k[0].startswith("taskhook_") and k[0].endswith("_total")}
    )
    checks.append(Check("fresh processes start at zero", fresh, "every *_total is 0 before load"))

    ok_2xx = total("taskhook_webhooks_total", outcome=("applied", "duplicate"))
    delivered = sim["webhooks"]["delivered"]
    checks.append(
        Check(
            "webhooks 2xx vs simulator delivered",
            delivered - tol <= ok_2xx <= delivered + tol,
            f"metrics {ok_2xx:.0f}, simulator {delivered}, tolerance {tol}",
        )
    )
    applied_metric = total("taskhook_webhooks_total", outcome="applied")
    applied_db = facts.webhook_rows.get("accepted/applied", 0)
    checks.append(
        Check(
            "webhooks applied vs database inbox",
            applied_metric <= applied_db <= applied_metric + tol,
            f"metrics {applied_metric:.0f}, database {applied_db}, tolerance {tol}",
        )
    )
    junk = total("taskhook_webhooks_total", outcome="invalid_signature")
    checks.append(
        Check(
            "wrongly signed webhooks rejected",
            0 < junk <= sim["webhooks"]["bad_signature"],
            f"metrics invalid_signature {junk:.0f}, simulator sent "
            f"{sim['webhooks']['bad_signature']} (the gap went to the killed process while down)",
        )
    )
    refunds = total("taskhook_refunds_total")
    canceled_metric = total("taskhook_transitions_total", to="canceled", outcome="applied")
    canceled_db = facts.by_status.get("canceled", 0)
    checks.append(
        Check(
            "refunds by web processes <= database refunds",
            canceled_metric <= refunds <= facts.refunds,
            f"web processes {refunds:.0f} (incl. {canceled_metric:.0f} cancels), "
            f"database {facts.refunds}; workers and reconcilers have no /metrics",
        )
    )
    checks.append(
        Check(
            "client cancels counted",
            canceled_db - 1 <= canceled_metric <= canceled_db,
            f"metrics {canceled_metric:.0f}, database canceled {canceled_db}",
        )
    )
    registered = total("taskhook_registrations_total", outcome="ok")
    with_vendor = sum(1 for t in facts.tasks.values() if t["status"] != "canceled") or 0
    checks.append(
        Check(
            "registrations by web processes <= tasks",
            0 < registered <= with_vendor + tol,
            f"metrics ok {registered:.0f}, tasks {len(facts.tasks)}",
        )
    )
    # Queue depths are read from PostgreSQL at each scrape: every web process must agree with
    # the database (at the end, nothing is left unfinished).
    gauge = "taskhook_queue_tasks"
    scraped = [s for s in after.values() if s is not None]
    for s in scraped:
        wrong = {
            status: (metric_sum(s, gauge, status=status), facts.by_status.get(status, 0))
            for status in ("pending", "submitted", "processing", "storing")
            if metric_sum(s, gauge, status=status) != facts.by_status.get(status, 0)
        }
        exposed = any(k[0] == gauge for k in s)
        checks.append(
            Check(
                f"{gauge} gauge = database",
                exposed and not wrong,
                f"(metric, db): {wrong or 'equal'}" if exposed else "not exposed",
            )
        )
    return checks
