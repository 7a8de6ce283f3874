"""Resident memory of one `taskhook serve` process under a steady mixed load, and its growth.

What is measured: the RSS of the web process (psutil when installed, else ``VmRSS`` from
/proc/<pid>/status) every ``--sample`` seconds while, for ``--minutes`` (default 5), it takes
a steady, open-loop mix at fixed rates:

* ``POST /v1/tasks`` at ``--submit-rate`` per second (charge + insert, 202, then the vendor
  registration in the background, against ``taskhook simulator``);
* the signed webhooks that follow: the simulator (no faults, ``--job-seconds``) runs each job
  and posts Replicate's Standard-Webhooks-signed ``start``, ``logs`` (one per log line),
  ``output`` and ``completed`` to the task's callback URL, about 7 per task, each verified,
  recorded and applied by the web process;
* ``GET /v1/tasks/{id}`` at ``--read-rate`` per second, over the 500 newest tasks submitted.

The rates are meant to stay below what the machine sustains: an overloaded server holds more
requests in flight, and that memory is queueing, not a leak. Requests that would exceed
``--max-in-flight`` per kind are not sent and are counted as "skipped" (a sign of overload).
The load is made in this process (httpx, keep-alive); the deployment is submit_throughput.py's
(a fresh database on DATABASE_URL's server, the simulator and ``taskhook serve`` as real
subprocesses, TASKHOOK_RATE_LIMIT=0, TASKHOOK_MAX_ACTIVE_TASKS=0, S3 as webhook_ingest.py).

Baseline: the RSS of the same server idle after start-up (median of 3 samples a second apart,
taken 5 s after it first answered, before any request but the readiness check).

Printed: idle RSS, peak RSS (highest sample, and the kernel's VmHWM), RSS at 1 min and at the
end, RSS 10 s after the load stopped, and the growth slope in MiB per minute: a least-squares
line through the samples taken after the first minute (for runs shorter than 2 minutes,
through the second half). Verdict: **flat when the slope is below 1 MiB/min** (5 MiB over the
5-minute run, a rate that would reach ~1.4 GiB a day), else GROWING. The exit status is 1 when
the growth is not flat or any request failed.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/memory.py --minutes 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import textwrap
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from seeding import fresh_database
from submit_throughput import (
    MODEL,
    create_users,
    run_main,
    stack_arguments,
    taskhook_stack,
)
from webhook_ingest import proc_cpu

FLAT_MIB_PER_MIN = 1.0
MIB = 1024 * 1024
RECENT = 500


def rss_bytes(pid: int) -> int:
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        return _status_kib(pid, "VmRSS") * 1024


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_m = statistics.fmean(m for _, m in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (m - mean_m) for t, m in points)
    return cov / var * 60


@dataclass
class Kind:
    """One stream of requests: what was sent, how it went."""

    name: str
    sent: int = 0
    skipped: int = 0
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    in_flight: int = 0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss: float  # MiB
    submits: int
    reads: int
    webhooks: int
    fds: int


async def paced(
    kind: Kind,
    rate: float,
    until: float,
    cap: int,
    request: Callable[[], Awaitable[httpx.Response | None]],
    ok: int,
    tasks: set[asyncio.Task[None]],
) -> None:
    """Open loop: start a request every 1/rate seconds, whatever the previous ones do."""
    if rate <= 0:
        return

    async def one() -> None:
        kind.in_flight += 1
        started = time.perf_counter()
        try:
            response = await request()
            if response is None:  # nothing to read yet: not a request
                kind.sent -= 1
                return
            kind.latencies.append(time.perf_counter() - started)
            kind.statuses[str(response.status_code)] += 1
            if response.status_code != ok:
                kind.errors += 1
        except httpx.HTTPError as exc:
            kind.statuses[type(exc).__name__] += 1
            kind.errors += 1
        finally:
            kind.in_flight -= 1

    interval = 1 / rate
    due = time.monotonic()
    while due < until:
        if kind.in_flight >= cap:
            kind.skipped += 1
        else:
            kind.sent += 1
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        due += interval
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="memory-", dir=data_dir))
    submits, reads = Kind("submit"), Kind("read")
    async with fresh_database() as (_admin, _name, dsn):
        keys = await create_users(dsn, args.users)
        stack_cm = taskhook_stack(dsn, data_dir=data_dir, work=work, job_seconds=args.job_seconds)
        async with stack_cm as stack:
            pid = stack.server.pid
            await asyncio.sleep(5)
            idle_samples = []
            for _ in range(3):
                idle_samples.append(rss_bytes(pid) / MIB)
                await asyncio.sleep(1)
            idle = Idle(statistics.median(idle_samples), open_fds(pid))
            print(f"idle after start-up: {idle.rss:.1f} MiB RSS, {idle.fds} fds", file=sys.stderr)
            conn = await asyncpg.connect(dsn)
            try:
                run = await load(args, stack.port, pid, keys, conn, submits, reads)
            finally:
                await conn.close()
            hwm = _status_kib(pid, "VmHWM") / 1024
    report = Report(args, idle, run, submits, reads, hwm)
    ok = report.print()
    print(f"\nserver and simulator logs: {work}")
    return 0 if ok else 1


@dataclass
class Idle:
    rss: float
    fds: int


@dataclass
class Run:
    samples: list[Sample]
    seconds: float  # of load
    after: float  # RSS 10 s after the load stopped
    cpu: float  # server CPU seconds during the load
    webhooks: int


WEBHOOKS = "SELECT count(*) FROM webhook_deliveries"


async def load(
    args: argparse.Namespace,
    port: int,
    pid: int,
    keys: list[str],
    conn: asyncpg.Connection[Any],
    submits: Kind,
    reads: Kind,
) -> Run:
    """The mixed load for --minutes, sampling the server's RSS; then 10 s of quiet."""
    recent: deque[tuple[str, str]] = deque(maxlen=RECENT)  # (task id, its owner's key)
    rng = random.Random(1)
    counter = 0
    limits = httpx.Limits(max_connections=2 * args.max_in_flight)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
    ) as client:

        async def submit() -> httpx.Response:
            nonlocal counter
            counter += 1
            key = keys[counter % len(keys)]
            body = {"model": MODEL, "input": {"prompt": f"a fox #{counter}"}, "vendor": "replicate"}
            response = await client.post(
                "/v1/tasks", json=body, headers={"authorization": f"Bearer {key}"}
            )
            if response.status_code == 202:
                recent.append((response.json()["id"], key))
            return response

        async def read() -> httpx.Response | None:
            if not recent:
                return None
            task_id, key = recent[rng.randrange(len(recent))]
            return await client.get(
                f"/v1/tasks/{task_id}", headers={"authorization": f"Bearer {key}"}
            )

        hooks0 = await conn.fetchval(WEBHOOKS)
        cpu0 = proc_cpu(pid)
        started = time.monotonic()
        until = started + args.minutes * 60
        tasks: set[asyncio.Task[None]] = set()
        cap = args.max_in_flight
        streams = [
            asyncio.create_task(paced(submits, args.submit_rate, until, cap, submit, 202, tasks)),
            asyncio.create_task(paced(reads, args.read_rate, until, cap, read, 200, tasks)),
        ]
        samples: list[Sample] = []
        next_sample = started
        while True:
            now = time.monotonic()
            samples.append(
                Sample(
                    t=now - started,
                    rss=rss_bytes(pid) / MIB,
                    submits=submits.sent,
                    reads=reads.sent,
                    webhooks=await conn.fetchval(WEBHOOKS) - hooks0,
                    fds=open_fds(pid),
                )
            )
            if now >= until:
                break
            next_sample = min(next_sample + args.sample, until)
            await asyncio.sleep(max(0.0, next_sample - time.monotonic()))
        await asyncio.gather(*streams)
        elapsed = time.monotonic() - started
        cpu = proc_cpu(pid) - cpu0
        if tasks:
            await asyncio.wait(set(tasks), timeout=60)
        await asyncio.sleep(10)
        return Run(
            samples=samples,
            seconds=elapsed,
            after=rss_bytes(pid) / MIB,
            cpu=cpu,
            webhooks=await conn.fetchval(WEBHOOKS) - hooks0,
        )


@dataclass
class Report:
    args: argparse.Namespace
    idle: Idle
    run: Run
    submits: Kind
    reads: Kind
    hwm: float

    def at(self, seconds: float) -> Sample:
        """The first sample taken at or after `seconds` (the last one if none)."""
        return next((s for s in self.run.samples if s.t >= seconds - 0.5), self.run.samples[-1])

    def print(self) -> bool:
        args, run, samples = self.args, self.run, self.run.samples
        minutes = run.seconds / 60
        print(
            f"\nweb process memory: {minutes:.2f} min of steady load on one `taskhook serve` "
            f"(submits {args.submit_rate:g}/s, reads {args.read_rate:g}/s, and the simulator's "
            f"signed webhooks; --job-seconds {args.job_seconds:g}), RSS sampled every "
            f"{args.sample:g} s; {os.cpu_count()} CPUs shared with the simulator, PostgreSQL and "
            "this load generator"
        )
        header = (
            f"{'minute':>6}  {'RSS MiB':>8}  {'vs idle':>8}  {'fds':>4}  {'submits/s':>9}  "
            f"{'reads/s':>7}  {'hooks/s':>7}"
        )
        print(header)
        print("-" * len(header))
        marks = [0.0, *range(60, int(run.seconds) + 1, 60)]
        if samples[-1].t - marks[-1] > args.sample:
            marks.append(samples[-1].t)
        previous = samples[0]
        for mark in marks:
            s = self.at(mark)
            span = max(s.t - previous.t, 1e-9)
            per_s = [
                (now - before) / span
                for now, before in (
                    (s.submits, previous.submits),
                    (s.reads, previous.reads),
                    (s.webhooks, previous.webhooks),
                )
            ]
            print(
                f"{s.t / 60:>6.2f}  {s.rss:>8.1f}  {s.rss - self.idle.rss:>+8.1f}  {s.fds:>4}  "
                f"{per_s[0]:>9.1f}  {per_s[1]:>7.1f}  {per_s[2]:>7.1f}"
            )
            previous = s
        every = " ".join(f"{s.rss:.1f}" for s in samples)
        print(f"\nRSS every {args.sample:g} s (MiB):")
        print(textwrap.fill(every, width=100, initial_indent="  ", subsequent_indent="  "))
        fit_from = 60.0 if run.seconds >= 120 else run.seconds / 2
        fitted = [(s.t, s.rss) for s in samples if s.t >= fit_from]
        slope = slope_per_minute(fitted)
        flat = slope < FLAT_MIB_PER_MIN
        peak = max(samples, key=lambda s: s.rss)
        print(f"RSS idle after start-up      {self.idle.rss:8.1f} MiB ({self.idle.fds} fds)")
        print(f"RSS peak (samples)           {peak.rss:8.1f} MiB at {peak.t / 60:.2f} min")
        print(f"RSS peak (kernel VmHWM)      {self.hwm:8.1f} MiB")
        print(f"RSS at 1 min                 {self.at(60).rss:8.1f} MiB")
        print(f"RSS at the end               {samples[-1].rss:8.1f} MiB ({samples[-1].fds} fds)")
        print(f"RSS 10 s after the load      {run.after:8.1f} MiB")
        print(
            f"growth after {fit_from / 60:.2f} min        {slope:+8.2f} MiB/min "
            f"(least squares over {len(fitted)} samples) -> "
            f"{'flat' if flat else 'GROWING'} (threshold {FLAT_MIB_PER_MIN:g} MiB/min)"
        )
        print(
            f"server CPU during the load   {run.cpu / run.seconds:8.0%} of a core; "
            f"webhooks stored {run.webhooks} ({run.webhooks / run.seconds:.1f}/s)"
        )
        for kind in (self.submits, self.reads):
            print(
                f"{kind.name:>6}: sent {kind.sent} ({kind.sent / run.seconds:.1f}/s), "
                f"errors {kind.errors}, skipped {kind.skipped}, p50 {kind.pct(0.5):.1f} ms, "
                f"p99 {kind.pct(0.99):.1f} ms, statuses {dict(kind.statuses)}"
            )
        return flat and not self.submits.errors and not self.reads.errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--submit-rate", type=float, default=10.0, help="POST /v1/tasks per s")
    parser.add_argument("--read-rate", type=float, default=50.0, help="GET /v1/tasks/{id} per s")
    parser.add_argument("--max-in-flight", type=int, default=64, help="per kind of request")
    stack_arguments(parser, users=8)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.sample <= 0:
        parser.error("--minutes and --sample must be positive")
    return args


if __name__ == "__main__":
    run_main(main, parse_args())
