"""Polls per second reached by `taskhook reconcile` against the simulator, versus the limit.

What is measured: the reconciler's only job under load is to ask the vendor about tasks whose
callbacks never came, without exceeding the vendor's rate limit (TASKHOOK_POLL_RATE, shared by
every reconciler through the token bucket in PostgreSQL) and without two reconcilers asking
about the same task in one round. So this benchmark

* starts the Replicate simulator in this process and creates ``--tasks`` predictions that stay
  ``starting`` for an hour and send no webhook (nothing but polling moves anything);
* inserts one task per prediction in a fresh database, ``submitted`` and due now;
* runs ``--reconcilers`` real ``taskhook reconcile`` processes with TASKHOOK_POLL_RATE = ``--rate``
  and TASKHOOK_POLL_AFTER = 3600, so a task once polled is not due again during the run: any
  second GET of one prediction is a duplicate poll;
* after a warm-up (every reconciler has finished a pass, then 2 s more, which also spends the
  bucket's initial burst) counts the simulator's ``GET /v1/predictions/{id}`` answers over
  ``--seconds``: polls/s = delta / elapsed, ratio = polls/s / configured rate.

The baseline is the configured limit itself; ``--also-one`` repeats the run with one reconciler.
The goal (issue text) is a ratio of at least 0.95 with 2 reconcilers and zero duplicate polls.
A run also fails when it polls faster than a correct bucket allows over the window (rate x T
plus one burst; the runtime sets burst = rate), when due work ran out before the window ended
(the number would then measure the backlog, not the pacing) or when a reconciler does not exit
within 10 s of SIGTERM. The exit status is 1 when any run fails, so the script doubles as a
check. Alongside, it prints GETs per second, each process's CPU share and what the reconcilers'
own ``reconcile_pass`` log lines say (tasks claimed per pass, pass duration).

The simulator runs on uvloop by default, as every taskhook process does (``taskhook.cli.run``):
on the stock asyncio loop, ``taskhook.serving.bind`` leaves TCP_NODELAY off on accepted
connections, so every keep-alive response stalls ~40 ms (Nagle + delayed ACK) and the bench
would measure that instead of the reconciler; ``--loop asyncio`` reproduces it (RESULTS.md).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/reconcile_rate.py --rate 40 --seconds 20 --also-one

Without DATABASE_URL the embedded PostgreSQL is used. The embedded S3 is always started (the
reconciler does not store results, but its runtime checks the bucket at start). Both live under
``--data-dir``, outside the repository by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from seeding import fresh_database, insert_submitted_tasks

from simulator import RunningSimulator, SimulatorConfig, running_simulator
from taskhook.embedded import EmbeddedS3, start_postgres, start_s3

WARMUP_SECONDS = 2.0
STOP_TIMEOUT = 10.0
GOAL_RATIO = 0.95
API_TOKEN = "bench"  # noqa: S105 - the local simulator's token, not a secret
POLL_AFTER = 3600.0  # a polled task is not due again during the run
POLLED_MARGIN = "600 seconds"  # next_poll_at this far out: polled and rescheduled, not a lease
REPO = Path(__file__).resolve().parent.parent

# Polled = rescheduled past the lease; due = still waiting for its first poll.
DB_SNAPSHOT_SQL = f"""
SELECT count(*) FILTER (WHERE next_poll_at > now() + interval '{POLLED_MARGIN}') AS polled,
       count(*) FILTER (WHERE next_poll_at <= now()) AS due
  FROM tasks WHERE status IN ('submitted', 'processing')
"""


@dataclass
class Snapshot:
    at: float
    fetches: dict[str, int]
    polled: int
    due: int
    cpu: dict[str, float]  # CPU seconds used so far: each reconciler, this process, the machine


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """utime + stime from /proc (Linux); empty where unavailable. "busy" is the whole machine's
    non-idle time summed over all CPUs, "self" this process (the simulator and the sampler)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {"self": sum(os.times()[:2])}
    for i, pid in enumerate(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            out[f"reconciler-{i}"] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    try:
        cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        out["busy"] = (sum(cpu) - cpu[3] - cpu[4]) / tick  # minus idle and iowait
    except (OSError, IndexError, ValueError):
        pass
    return out


@dataclass
class Result:
    reconcilers: int
    rate: float
    tasks: int
    elapsed: float = 0.0
    polls: int = 0
    db_polled: int = 0
    duplicates: int = 0
    max_per_prediction: int = 0
    due_left: int = 0
    per_second: list[int] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # share of one CPU during the window
    api_errors: int = 0
    stuck: list[int] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def polls_per_second(self) -> float:
        return self.polls / self.elapsed if self.elapsed else 0.0

    @property
    def ratio(self) -> float:
        return self.polls_per_second / self.rate

    @property
    def bound(self) -> float:
        """The most a correct token bucket allows over the window: rate x T plus one burst
        (taskhook's runtime sets burst = rate), per second."""
        return self.rate * (1 + 1 / self.elapsed) if self.elapsed else self.rate

    @property
    def ok(self) -> bool:
        return (
            self.ratio >= GOAL_RATIO
            and self.polls_per_second <= self.bound
            and self.duplicates == 0
            and self.due_left > 0
            and not self.stuck
        )


async def create_predictions(sim: RunningSimulator, count: int) -> list[str]:
    """`count` predictions with no webhook: they stay `starting` for job_seconds."""
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(
        base_url=sim.url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
    ) as client:

        async def one(n: int) -> str:
            async with limit:
                response = await client.post(
                    "/v1/models/a/b/predictions", json={"input": {"prompt": f"bench {n}"}}
                )
            response.raise_for_status()
            prediction_id: str = response.json()["id"]
            return prediction_id

        return await asyncio.gather(*(one(n) for n in range(count)))


async def snapshot(client: httpx.AsyncClient, dsn: str, pids: list[int]) -> Snapshot:
    stats = (await client.get("/_sim/stats")).json()
    at = time.monotonic()
    cpu = cpu_seconds(pids)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(DB_SNAPSHOT_SQL)
    finally:
        await conn.close()
    assert row is not None
    return Snapshot(at=at, fetches=stats["fetches"], polled=row["polled"], due=row["due"], cpu=cpu)


def read_passes(log_path: Path) -> list[dict[str, Any]]:
    passes = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "reconcile_pass":
            passes.append(event)
    return passes


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def stop_processes(procs: list[asyncio.subprocess.Process]) -> list[int]:
    """SIGTERM every reconciler; the indexes of those still running after STOP_TIMEOUT."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    stuck = []
    for i, proc in enumerate(procs):
        try:
            await asyncio.wait_for(proc.wait(), timeout=STOP_TIMEOUT)
        except TimeoutError:
            stuck.append(i)
            proc.kill()
            await proc.wait()
    return stuck


async def run_scenario(
    args: argparse.Namespace, *, reconcilers: int, server_dsn: str, s3: EmbeddedS3
) -> Result:
    tasks = args.tasks
    result = Result(reconcilers=reconcilers, rate=args.rate, tasks=tasks)
    async with fresh_database(server_dsn) as (_admin, name, dsn):
        log_dir = Path(args.data_dir) / "logs" / name
        log_dir.mkdir(parents=True, exist_ok=True)
        procs: list[asyncio.subprocess.Process] = []
        try:
            config = SimulatorConfig(job_seconds=3600, api_token=API_TOKEN)
            async with running_simulator(config) as sim:
                started = time.monotonic()
                prediction_ids = await create_predictions(sim, tasks)
                await insert_submitted_tasks(dsn, prediction_ids, model="a/b")
                print(
                    f"[{reconcilers} reconciler(s)] {tasks} predictions and tasks ready in "
                    f"{time.monotonic() - started:.1f}s; logs in {log_dir}",
                    file=sys.stderr,
                )
                env = {
                    **os.environ,
                    "DATABASE_URL": dsn,
                    "REPLICATE_API_TOKEN": API_TOKEN,
                    "REPLICATE_API_BASE": f"{sim.url}/v1",
                    "REPLICATE_WEBHOOK_SECRET": config.webhook_secret,
                    "TASKHOOK_POLL_RATE": str(args.rate),
                    "TASKHOOK_POLL_AFTER": str(POLL_AFTER),
                    "TASKHOOK_DATA_DIR": str(args.data_dir),
                    "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
                    "AWS_ACCESS_KEY_ID": s3.access_key_id,
                    "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                    "AWS_REGION": s3.region,
                }
                logs = [log_dir / f"reconciler-{i}.log" for i in range(reconcilers)]
                for path in logs:
                    with path.open("wb") as out:
                        procs.append(
                            await asyncio.create_subprocess_exec(
                                sys.executable,
                                *(
                                    "-m",
                                    "taskhook.cli",
                                    "reconcile",
                                    "--interval",
                                    str(args.interval),
                                ),
                                env=env,
                                cwd=REPO,
                                stdin=asyncio.subprocess.DEVNULL,
                                stdout=out,
                                stderr=out,
                            )
                        )

                async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
                    passed: set[Path] = set()

                    async def all_passed() -> bool:
                        for proc in procs:
                            if proc.returncode is not None:
                                raise SystemExit(f"a reconciler exited early; see {log_dir}")
                        passed.update(
                            path for path in logs if path not in passed and read_passes(path)
                        )
                        return len(passed) == len(logs)

                    await wait_until(all_passed, 60, "every reconciler to finish a pass")
                    await asyncio.sleep(WARMUP_SECONDS)
                    pids = [proc.pid for proc in procs]
                    first = await snapshot(client, dsn, pids)
                    last_total = first.fetches["total"]
                    for _ in range(math.ceil(args.seconds)):
                        await asyncio.sleep(args.seconds / math.ceil(args.seconds))
                        total = (await client.get("/_sim/stats")).json()["fetches"]["total"]
                        result.per_second.append(total - last_total)
                        last_total = total
                    end = await snapshot(client, dsn, pids)
                    result.stuck = await stop_processes(procs)
                    final = (await client.get("/_sim/stats")).json()
                result.elapsed = end.at - first.at
                result.cpu = {
                    k: (end.cpu[k] - first.cpu[k]) / result.elapsed
                    for k in end.cpu.keys() & first.cpu.keys()
                }
                result.polls = end.fetches["total"] - first.fetches["total"]
                result.db_polled = end.polled - first.polled
                result.due_left = end.due
                result.duplicates = final["fetches"]["fetched_more_than_once"]
                result.max_per_prediction = final["fetches"]["max_per_prediction"]
                result.api_errors = final["api"]["errors_503"] + final["api"]["errors_429"]
                result.passes = [p for path in logs for p in read_passes(path)]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    return result


def describe_passes(result: Result) -> str:
    """What the reconcilers' own pass logs say: how many tasks a pass claims, how long it takes."""
    passes = result.passes
    if not passes:
        return "no passes logged"
    claimed = Counter(int(p["claimed"]) for p in passes)
    durations = sorted(float(p["duration"]) for p in passes)
    median = durations[len(durations) // 2]
    common = ", ".join(f"{k}x{n}" for k, n in sorted(claimed.most_common(5)))
    return (
        f"{len(passes)} passes logged, claimed per pass (value x passes, top 5): {common}; "
        f"median pass {median * 1000:.0f} ms, max {durations[-1] * 1000:.0f} ms"
    )


def print_table(results: list[Result]) -> None:
    header = (
        f"{'reconcilers':>11}  {'limit/s':>7}  {'polls/s':>7}  {'ratio':>6}  "
        f"{'bound':>7}  {'dup polls':>9}  {'db polled':>9}  {'goal':>4}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.reconcilers:>11}  {r.rate:>7.1f}  {r.polls_per_second:>7.2f}  {r.ratio:>6.3f}  "
            f"{r.bound:>7.2f}  {r.duplicates:>9}  {r.db_polled:>9}  {'ok' if r.ok else 'MISS':>4}"
        )
    for r in results:
        print(
            f"\n[{r.reconcilers} reconciler(s)] window {r.elapsed:.2f}s, {r.polls} GETs "
            f"(database: {r.db_polled} tasks rescheduled), max GETs of one prediction "
            f"{r.max_per_prediction}, vendor errors {r.api_errors}, tasks still due at the end "
            f"{r.due_left} of {r.tasks}"
        )
        print(f"  GETs per second: {r.per_second}")
        if r.cpu:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r.cpu.items()))
            print(f"  CPU during the window (100% = one core; busy = whole machine): {shares}")
        if r.polls_per_second > r.bound:
            print(f"  OVER THE LIMIT: more than the bucket allows ({r.bound:.2f}/s)")
        print(f"  {describe_passes(r)}")
        if r.due_left == 0:
            print("  INVALID: the due tasks ran out during the window; raise --tasks")
        if r.stuck:
            print(f"  FINDING: reconciler(s) {r.stuck} did not exit within {STOP_TIMEOUT:.0f}s")


async def main(args: argparse.Namespace) -> int:
    # Burst (= rate) before the window, the warm-up and the window itself, with room to spare.
    needed = math.ceil(args.rate * (args.seconds + WARMUP_SECONDS + 10) + args.rate)
    if args.tasks < needed:
        print(f"--tasks {args.tasks} could run out at {args.rate}/s; using {needed}")
        args.tasks = needed
    data_dir = Path(args.data_dir)
    server_dsn = (
        os.environ.get("DATABASE_URL") or (await asyncio.to_thread(start_postgres, data_dir)).dsn
    )
    s3 = await asyncio.to_thread(start_s3, data_dir)
    counts = [args.reconcilers] + ([1] if args.also_one and args.reconcilers != 1 else [])
    results = []
    for reconcilers in counts:
        results.append(
            await run_scenario(args, reconcilers=reconcilers, server_dsn=server_dsn, s3=s3)
        )
    print(
        f"\nreconcile rate: limit {args.rate}/s, --interval {args.interval}, "
        f"simulator on {args.loop}, "
        f"window {args.seconds}s after {WARMUP_SECONDS:.0f}s warm-up, {args.tasks} tasks, "
        f"{os.cpu_count()} CPUs"
    )
    print_table(results)
    return 0 if all(r.ok for r in results) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=40.0, help="TASKHOOK_POLL_RATE, polls/s")
    parser.add_argument("--tasks", type=int, default=3000, help="due tasks (raised if too few)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window")
    parser.add_argument("--reconcilers", type=int, default=2, help="reconciler processes")
    parser.add_argument(
        "--interval", type=float, default=0.2, help="`taskhook reconcile --interval` (idle pause)"
    )
    parser.add_argument(
        "--also-one", action="store_true", help="also run with 1 reconciler for comparison"
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of this process, which serves the simulator (see RESULTS.md: under "
        "asyncio every keep-alive GET to it stalls ~40 ms)",
    )
    parser.add_argument(
        "--data-dir",
        default=str(Path(tempfile.gettempdir()) / "taskhook-bench"),
        help="TASKHOOK_DATA_DIR: embedded servers, generated secrets, reconciler logs",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.reconcilers < 1:
        parser.error("--rate and --seconds must be positive, --reconcilers at least 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.loop == "uvloop":
        import uvloop

        sys.exit(uvloop.run(main(arguments)))
    sys.exit(asyncio.run(main(arguments)))
