"""Tasks submitted per second through `taskhook serve`, and whether vendor registration keeps up.

What is measured: POST /v1/tasks, the client's hot path. Each request costs, in the web process,

* **authentication + rate window**: one ``authenticate`` statement (the API key's user joined
  with an upsert of the per-minute rate window; with TASKHOOK_RATE_LIMIT=0, as here, the upsert
  is switched off inside the same statement);
* **charge + insert**: ``BEGIN``, one ``create_task`` statement (debit the balance, write the
  ledger row and the task together), ``COMMIT``;
* **get_task**: the row read back for the answer; then the 202 goes out. That is 5 round
  trips to PostgreSQL before the 202, over three pool checkouts (db/pool.py skips asyncpg's
  reset query on release; the ceiling's plain pool still sends it: 2 round trips);
* then, **in the background** (``rt.spawn``, after the answer; one task per submit, with no cap
  on how many run at once): ``begin_registration``, ``get_task``, ``circuit_permits`` (an
  UPDATE of the one ``vendor_state`` row), the vendor call (POST /v1/models/.../predictions to
  the simulator over the runtime's httpx pool of 100 connections, within
  TASKHOOK_VENDOR_TIMEOUT, 10 s), ``record_vendor_result`` (another UPDATE of that row) and the
  ``submitted`` transition;
* and, later, the vendor's own webhooks for the job (Replicate's ``start``, ``logs`` per log
  line, ``output``, ``completed``: about 7 signed POSTs per task from the simulator, each
  verified, recorded and applied). With a small ``--job-seconds`` (the default, 1 s) they arrive
  during the window, as they would in a steady state; ``--job-seconds 3600`` keeps all but
  ``start`` out of the window to isolate submit + registration. The table shows webhooks/s.

The baseline ("ceiling") is the one of bench/webhook_ingest.py, measured in the same run: a bare
Starlette app on the same uvicorn, a pool of 10, ONE prepared INSERT per POST (the submit body
is posted to it). Ratio = submits/s ÷ ceiling req/s at the same concurrency.

Method: a fresh database on DATABASE_URL's server (migrated); ``taskhook simulator`` (no faults,
``--job-seconds``) and ``taskhook serve`` (TASKHOOK_RATE_LIMIT=0, TASKHOOK_MAX_ACTIVE_TASKS=0,
REPLICATE_API_BASE = the simulator, TASKHOOK_ALLOW_PRIVATE_URLS=1, S3 as webhook_ingest.py), as
real subprocesses, a new pair for each concurrency (the database is kept); ``--users`` users
with plenty of credits (the load cycles over them, so concurrent charges rarely wait on one user
row). The load generator is webhook_ingest.py's own
(``--loadgen``: a separate process, raw HTTP/1.1 on uvloop, N keep-alive connections, closed
loop), driven through its ``drive``: ``--warmup`` s of load, then ``--seconds`` s measured, at
each ``--concurrency``. Submits/s = 202s completed in the window / window; latency = send to the
full 202. Errors = anything but a 2xx, answers without ``"status":"pending"``, and failed
connections.

Registration is counted in the database over the same window: reg/s = tasks that left
``pending`` for a live state (not ``failed``) during the window / window; vendor/s = predictions
the simulator created in the window (its ``/_sim/stats``), so a vendor that is itself the limit
shows; hooks/s = webhook deliveries stored. "backlog" is this run's tasks still pending when the
window closed; after each run the bench waits (up to ``--drain`` seconds, counted from the end
of the load) for it to empty and reports how long that took, and the time from a task's insert
to its leaving ``pending`` (p50/p99 over the window's tasks). Tasks still pending after the
drain (only ``taskhook worker``, not run here, retries a timed-out or deferred first attempt)
are reported with their last error. Before each run the bench closes the vendor's circuit in
``vendor_state`` (a bench-only reset), so that one run's opened breaker does not decide the
next. Columns srv/sim/gen CPU are the server's, the simulator's and the load generator's share
of one core over the window; "machine" is the whole machine (200 % = both cores).

The issue states no numeric goal for submits; the exit status is 1 when any run has errors,
registration falls behind (registered/s < 90 % of submits/s, or tasks still pending after the
drain), or a run is invalid.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/submit_throughput.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import httpx
from seeding import fresh_database
from webhook_ingest import (
    CALLBACK_SECRET,
    WEBHOOK_SECRET,
    Run,
    drive,
    free_port,
    http_request,
    proc_cpu,
    s3_env,
    spawn,
    stop,
    wait_http,
)

from db.pool import connect
from lifecycle.users import create_user

INGEST = Path(__file__).resolve().parent / "webhook_ingest.py"
MODEL = "black-forest-labs/flux-schnell"
CREDITS = 10_000_000
KEEP_UP = 0.90


# --------------------------------------------------------------------------------------------
# The deployment: the simulator and one `taskhook serve` (memory.py uses it).


@dataclass
class Stack:
    port: int
    sim_port: int
    server: asyncio.subprocess.Process
    simulator: asyncio.subprocess.Process
    logs: Path


@contextlib.asynccontextmanager
async def taskhook_stack(
    dsn: str, *, data_dir: Path, work: Path, job_seconds: float
) -> AsyncIterator[Stack]:
    """`taskhook simulator` (no faults) and `taskhook serve` registering with it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TASKHOOK_", "REPLICATE_", "FAL_", "MJ_", "AWS_"))
        and k not in ("DATABASE_URL", "PORT")
    }
    sim_port, port = free_port(), free_port()
    procs: list[asyncio.subprocess.Process] = []
    try:
        sim_log = work / "simulator.log"
        simulator = await spawn(
            [
                *("-m", "taskhook.cli", "simulator", "--port", str(sim_port)),
                *("--job-seconds", str(job_seconds), "--seed", "1"),
                *("--webhook-secret", WEBHOOK_SECRET),
            ],
            env,
            sim_log,
        )
        procs.append(simulator)
        await wait_http(sim_port, simulator, sim_log)
        env |= {
            "DATABASE_URL": dsn,
            "REPLICATE_API_TOKEN": "bench",
            "REPLICATE_API_BASE": f"http://127.0.0.1:{sim_port}/v1",
            "REPLICATE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TASKHOOK_SECRET": CALLBACK_SECRET,
            "TASKHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TASKHOOK_RATE_LIMIT": "0",
            "TASKHOOK_MAX_ACTIVE_TASKS": "0",
            # The simulator limits no creates; Replicate's 600 a minute would be the ceiling
            # measured instead of taskhook's own.
            "TASKHOOK_CREATE_RATE": "100000",
            "TASKHOOK_ALLOW_PRIVATE_URLS": "1",
            "TASKHOOK_DATA_DIR": str(data_dir),
            **(await s3_env(data_dir)),
        }
        log = work / "taskhook-serve.log"
        server = await spawn(["-m", "taskhook.cli", "serve", "--port", str(port)], env, log)
        procs.append(server)
        await wait_http(port, server, log)
        yield Stack(port=port, sim_port=sim_port, server=server, simulator=simulator, logs=work)
    finally:
        for proc in reversed(procs):
            await stop(proc)


async def create_users(dsn: str, count: int) -> list[str]:
    """API keys of `count` users with plenty of credits."""
    conn = await connect(dsn)
    try:
        return [
            (await create_user(conn, email=f"bench-{n}@example.test", credits=CREDITS))[1]
            for n in range(count)
        ]
    finally:
        await conn.close()


def submit_body(n: int = 0) -> bytes:
    prompt = f"a red fox in the snow, 35mm photograph #{n}"
    return json.dumps({"model": MODEL, "input": {"prompt": prompt}, "vendor": "replicate"}).encode()


def submit_request(port: int, key: str, n: int = 0) -> bytes:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return http_request(port, "/v1/tasks", headers, submit_body(n))


# --------------------------------------------------------------------------------------------
# Registration, counted in the database.

COUNTS = """
SELECT now() AS at, count(*) AS tasks,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status IN ('failed', 'canceled')) AS dead,
       (SELECT count(*) FROM webhook_deliveries) AS webhooks
  FROM tasks
"""

LAG = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag) AS p, count(*) AS n
  FROM (SELECT extract(epoch FROM min(e.created_at) - t.created_at) AS lag
          FROM tasks AS t JOIN task_events AS e ON e.task_id = t.id
         WHERE t.created_at BETWEEN $1 AND $2 AND e.from_status = 'pending' AND e.applied
         GROUP BY t.id, t.created_at) AS lags
"""


@dataclass
class Registration:
    registered: float = 0.0  # per second in the window
    webhooks: float = 0.0  # deliveries stored per second in the window
    vendor: float = 0.0  # predictions the simulator created per second in the window
    backlog: int = 0  # still pending when the window closed (this run's tasks)
    dead: int = 0  # failed during the window
    sim_cpu: float = 0.0
    drain: float | None = None  # seconds after the window until nothing was pending
    lag: tuple[float, float] | None = None  # p50, p99 s from insert to leaving pending
    stuck: list[str] = field(default_factory=list)


async def sim_created(client: httpx.AsyncClient, stack: Stack) -> int:
    stats = (await client.get(f"http://127.0.0.1:{stack.sim_port}/_sim/stats")).json()
    return int(stats["predictions"]["created"])


async def watch_window(
    conn: asyncpg.Connection[Any], stack: Stack, *, warmup: float, seconds: float, leftover: int
) -> tuple[Registration, Any, Any]:
    """Counts at the start and the end of drive()'s measured window (same sleeps)."""
    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.sleep(warmup)
        sim0, t0 = proc_cpu(stack.simulator.pid), time.monotonic()
        a, made0 = await conn.fetchrow(COUNTS), await sim_created(client, stack)
        await asyncio.sleep(seconds - 0.2)
        sim1, t1 = proc_cpu(stack.simulator.pid), time.monotonic()
        b, made1 = await conn.fetchrow(COUNTS), await sim_created(client, stack)
    assert a is not None and b is not None
    elapsed = t1 - t0
    left_pending = (b["tasks"] - b["pending"] - b["dead"]) - (a["tasks"] - a["pending"] - a["dead"])
    reg = Registration(
        registered=left_pending / elapsed,
        webhooks=(b["webhooks"] - a["webhooks"]) / elapsed,
        vendor=(made1 - made0) / elapsed,
        backlog=b["pending"] - leftover,
        dead=b["dead"] - a["dead"],
        sim_cpu=(sim1 - sim0) / elapsed,
    )
    return reg, a["at"], b["at"]


PENDING = "SELECT count(*) FROM tasks WHERE status = 'pending'"


async def drain(
    conn: asyncpg.Connection[Any], reg: Registration, *, timeout: float, since: Any
) -> None:
    """Wait for this run's backlog (tasks made after `since`) to clear; note what is left."""
    started = time.monotonic()
    query = PENDING + " AND created_at >= $1"
    while time.monotonic() - started < timeout:
        if await conn.fetchval(query, since) == 0:
            reg.drain = time.monotonic() - started
            return
        await asyncio.sleep(0.25)
    rows = await conn.fetch(
        "SELECT coalesce(last_error, '(none: its first attempt is still running)') AS error,"
        " count(*) AS n FROM tasks WHERE status = 'pending' AND created_at >= $1"
        " GROUP BY 1 ORDER BY 2 DESC LIMIT 3",
        since,
    )
    reg.stuck = [f"{r['n']} x {r['error'][:120]}" for r in rows]


# A run that opens the vendor's circuit must not decide the next one (bench-only reset).
RESET_BREAKER = """
UPDATE vendor_state SET circuit = 'closed', failures = 0, open_until = NULL, blocked_until = NULL
"""


# --------------------------------------------------------------------------------------------
# The driver.


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="submit-throughput-", dir=data_dir))
    runs: list[tuple[Run, Registration | None]] = []
    async with fresh_database() as (admin, name, dsn):
        keys = await create_users(dsn, args.users)
        # webhook_ingest's drive(): its load generator, closed loop over the requests, wrapped
        measure = functools.partial(drive, args, wrap=True, admin=admin, dbname=name, work=work)
        # 1. the ceiling (webhook_ingest.py --serve-ceiling), posted the submit body
        conn = await connect(dsn)
        try:
            await conn.execute("CREATE TABLE ceiling_hits (id bigserial PRIMARY KEY, body bytea)")
        finally:
            await conn.close()
        port = free_port()
        log = work / "ceiling.log"
        ceiling = await spawn([str(INGEST), "--serve-ceiling", dsn, str(port)], None, log)
        try:
            await wait_http(port, ceiling, log)
            one = http_request(port, "/hooks/replicate/x", {}, submit_body())
            for c in args.concurrency:
                run, _ = await measure(
                    scenario="ceiling",
                    concurrency=c,
                    port=port,
                    server_pid=ceiling.pid,
                    requests=[one],
                    expect="stored",
                )
                runs.append((run, None))
        finally:
            await stop(ceiling)

        # 2. taskhook serve + the simulator: a new pair for each concurrency, so that one run's
        # leftovers (the simulator's webhook backlog, registrations in flight) stay out of the next
        watcher = await connect(dsn)
        try:
            for c in args.concurrency:
                logs = work / f"c{c}"
                logs.mkdir()
                stack_cm = taskhook_stack(
                    dsn, data_dir=data_dir, work=logs, job_seconds=args.job_seconds
                )
                async with stack_cm as stack:
                    runs.append(await submit_run(args, measure, watcher, stack, keys, c))
        finally:
            await watcher.close()
    for path in await asyncio.to_thread(lambda: list(work.glob("*.requests"))):
        path.unlink()

    ok = print_table(args, runs)
    print(f"\nserver and simulator logs: {work}")
    return 0 if ok else 1


async def submit_run(
    args: argparse.Namespace,
    measure: Callable[..., Coroutine[Any, Any, tuple[Run, int]]],
    watcher: asyncpg.Connection[Any],
    stack: Stack,
    keys: list[str],
    c: int,
) -> tuple[Run, Registration]:
    """One concurrency: the load, the registration counts over its window, then the drain."""
    await watcher.execute(RESET_BREAKER)
    since = await watcher.fetchval("SELECT now()")
    leftover = await watcher.fetchval(PENDING)
    requests = [
        submit_request(stack.port, keys[n % len(keys)], n) for n in range(max(len(keys), c))
    ]
    (run, _), (reg, at0, at1) = await asyncio.gather(
        measure(
            scenario="submit",
            concurrency=c,
            port=stack.port,
            server_pid=stack.server.pid,
            requests=requests,
            expect='"status":"pending"',
        ),
        watch_window(watcher, stack, warmup=args.warmup, seconds=args.seconds, leftover=leftover),
    )
    await drain(watcher, reg, timeout=args.drain, since=since)
    lag = await watcher.fetchrow(LAG, at0, at1)
    if lag is not None and lag["n"]:
        reg.lag = (lag["p"][0], lag["p"][1])
    drained = f"{reg.drain:.1f} s" if reg.drain is not None else "never"
    print(
        f"  registration c{c:<3} {reg.registered:8.0f} /s  backlog {reg.backlog}"
        f"  drained in {drained}",
        file=sys.stderr,
    )
    return run, reg


def print_table(args: argparse.Namespace, runs: list[tuple[Run, Registration | None]]) -> bool:
    ceiling = {r.concurrency: r.rps for r, _ in runs if r.scenario == "ceiling"}
    print(
        f"\nsubmit throughput: window {args.seconds}s after {args.warmup}s warm-up, "
        f"{args.users} users, simulator --job-seconds {args.job_seconds}, {os.cpu_count()} CPUs "
        "(server, simulator, load generator and PostgreSQL share them)"
    )
    header = (
        f"{'scenario':>8}  {'conc':>4}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'max ms':>7}  {'errors':>6}  {'vs ceil':>7}  {'reg/s':>6}  {'vendor/s':>8}  "
        f"{'backlog':>7}  "
        f"{'hooks/s':>7}  {'xact/req':>8}  {'srv CPU':>7}  {'sim CPU':>7}  {'gen CPU':>7}  "
        f"{'machine':>7}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for r, reg in runs:
        ratio = r.rps / ceiling[r.concurrency] if ceiling.get(r.concurrency) else 0.0
        regs = (
            f"{reg.registered:>6.0f}  {reg.vendor:>8.0f}  {reg.backlog:>7}  {reg.webhooks:>7.0f}"
            if reg
            else f"{'':>6}  {'':>8}  {'':>7}  {'':>7}"
        )
        print(
            f"{r.scenario:>8}  {r.concurrency:>4}  {r.rps:>7.0f}  {r.p50:>7.2f}  {r.p99:>7.2f}  "
            f"{r.max:>7.1f}  {r.errors:>6}  {ratio:>7.2f}  {regs}  {r.xacts_per_request:>8.2f}  "
            f"{r.cpu.get('server', 0):>7.0%}  {(reg.sim_cpu if reg else 0):>7.0%}  "
            f"{r.cpu.get('loadgen', 0):>7.0%}  {r.cpu.get('machine', 0):>7.0%}"
        )
        ok = ok and not r.errors and not r.notes
    for r, reg in runs:
        where = f"  [{r.scenario} c{r.concurrency}]"
        for note in r.notes:
            print(f"{where} {note}")
        if r.errors:
            print(f"{where} statuses {r.statuses}")
        if reg is None:
            continue
        keeps_up = reg.registered >= KEEP_UP * r.rps and not reg.stuck
        ok = ok and keeps_up
        drained = f"{reg.drain:.1f} s" if reg.drain is not None else f"not within {args.drain} s"
        print(
            f"{where} registration {reg.registered / r.rps if r.rps else 0:.2f} of submits "
            f"({'keeps up' if keeps_up else 'FALLS BEHIND'}); backlog {reg.backlog} drained in "
            f"{drained}; insert -> left pending "
            + (
                f"p50 {reg.lag[0] * 1000:.0f} ms, p99 {reg.lag[1] * 1000:.0f} ms"
                if reg.lag
                else "(none of the window's tasks did)"
            )
            + f"; failed in window {reg.dead}"
        )
        for line in reg.stuck:
            print(f"{where} still pending: {line}")
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before the window")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[16, 64], help="connections per run"
    )
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait for the pending backlog"
    )
    stack_arguments(parser, users=64)
    args = parser.parse_args(argv)
    if args.seconds <= 1 or args.warmup < 0 or args.users < 1:
        parser.error("--seconds must be above 1, --warmup non-negative, --users positive")
    return args


def stack_arguments(parser: argparse.ArgumentParser, *, users: int) -> None:
    """Options of the deployment, shared with memory.py."""
    parser.add_argument("--users", type=int, default=users, help="users the submits cycle over")
    parser.add_argument(
        "--job-seconds", type=float, default=1.0, help="simulator: create to final state"
    )
    parser.add_argument(
        "--data-dir",
        default=str(Path(tempfile.gettempdir()) / "taskhook-bench"),
        help="TASKHOOK_DATA_DIR and server logs",
    )


def run_main(
    entry: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: Any
) -> NoReturn:
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    import uvloop

    sys.exit(uvloop.run(entry(args)))


if __name__ == "__main__":
    run_main(main, parse_args())
