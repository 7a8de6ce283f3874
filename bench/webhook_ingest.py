"""Signed webhooks per second taken in by `taskhook serve`, versus a bare one-INSERT ceiling.

What is measured: POST /hooks/replicate/{token} is the hot path of the receiver. Every
callback is read, its token and Standard Webhooks signature checked, its delivery id recorded
(the dedupe) and its transition applied, in one transaction. The baseline ("ceiling") is the
least any receiver that stores a webhook must do on this machine: a bare Starlette app on the
same uvicorn (uvloop + httptools when installed, as `taskhook serve` uses), one process, a pool
of 10, doing ONE prepared ``INSERT INTO ceiling_hits (body) VALUES ($1)`` per POST on the same
PostgreSQL. So this benchmark

* creates a fresh database on DATABASE_URL's server, migrates it, and creates ``--tasks``
  ``submitted`` Replicate tasks through the product's own queries (as tests/factories.py does),
  each with its vendor id ``p_<n>``;
* runs the ceiling app (this file, ``--serve-ceiling``) and then a real ``taskhook serve``
  subprocess (TASKHOOK_RATE_LIMIT=0, the dev S3 on 127.0.0.1:18333 or the embedded one);
* drives each from a separate load-generator process (this file, ``--loadgen``): N keep-alive
  connections, each sending the next pre-built request and waiting for its answer (closed loop),
  a raw HTTP/1.1 client on uvloop so the generator spends as little of the 2 cores as possible;
* for each server and concurrency: ``--warmup`` s of load, then ``--seconds`` s measured.
  Requests/s = answers completed in the window / window; latency = send to full answer.

Scenarios: ``ceiling``; ``fresh`` = correctly signed prediction webhooks (status "processing",
a tqdm log line whose progress grows by one per delivery to a task), each with a new webhook-id,
round-robin over the tasks, so each is verified, recorded and applied (answer "applied");
``duplicate`` = webhook-ids already delivered in the fresh runs, re-sent with a fresh
timestamp and signature (answer "duplicate"). Errors = anything but a 2xx, plus fresh answers
that were not "applied" and duplicate answers that were not "duplicate".

The goal (issue text): fresh ingest at >= 80 % of the ceiling's requests/s with p99 < 25 ms at
concurrency 16. The exit status is 1 when it is missed.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/webhook_ingest.py --seconds 10

``--profile DIR`` also runs ``py-spy record`` on the taskhook server during the fresh c16 run
(py-spy must be installed: ``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from seeding import fresh_database, insert_submitted_tasks

from common.tokens import CallbackTokens
from db.pool import connect
from simulator.signing import new_webhook_id, webhook_headers

REPO = Path(__file__).resolve().parent.parent

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - bench-only secret
CALLBACK_SECRET = "bench-callback-secret-" + "x" * 16
DEV_S3 = "http://127.0.0.1:18333"
DEV_S3_BUCKET = "taskhook-test"
GOAL_RATIO = 0.80
GOAL_P99_MS = 25.0
CEILING_SQL = "INSERT INTO ceiling_hits (body) VALUES ($1)"
VERSION = "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"


# --------------------------------------------------------------------------------------------
# The ceiling: a bare Starlette app, one prepared INSERT per POST.


def serve_ceiling(dsn: str, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
        try:
            yield
        finally:
            await state["pool"].close()

    async def hit(request: Request) -> JSONResponse:
        body = await request.body()
        await state["pool"].execute(CEILING_SQL, body)  # asyncpg prepares and caches it
        return JSONResponse({"status": "stored"})

    app = Starlette(
        routes=[Route("/hooks/{vendor}/{token}", hit, methods=["POST"])],
        lifespan=lifespan,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# --------------------------------------------------------------------------------------------
# The load generator: its own process, raw HTTP/1.1 over keep-alive connections.


async def loadgen(spec: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    port, concurrency = spec["port"], spec["concurrency"]
    warmup, seconds, wrap = spec["warmup"], spec["seconds"], spec["wrap"]
    expect: bytes | None = spec["expect"].encode() if spec["expect"] else None
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    unexpected = 0
    next_index = 0
    ran_out = False
    start = time.perf_counter()
    t0, t1 = start + warmup, start + warmup + seconds

    async def worker() -> None:
        nonlocal next_index, ran_out, unexpected
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while time.perf_counter() < t1:
                if next_index >= len(requests):
                    if not wrap:
                        ran_out = True
                        return
                    next_index = 0
                request = requests[next_index]
                next_index += 1
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                done = time.perf_counter()
                if sent >= t0 and done <= t1:
                    latencies.append(done - sent)
                    code = head[9:12].decode()
                    statuses[code] += 1
                    if code.startswith("2") and expect is not None and expect not in body:
                        unexpected += 1
        finally:
            writer.close()

    results = await asyncio.gather(*(worker() for _ in range(concurrency)), return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "count": len(latencies),
        "rps": len(latencies) / seconds,
        "p50": pct(0.50) if latencies else 0.0,
        "p99": pct(0.99) if latencies else 0.0,
        "max": latencies[-1] * 1000 if latencies else 0.0,
        "statuses": dict(statuses),
        "unexpected": unexpected,
        "sent": next_index,
        "ran_out": ran_out,
        "failures": failures[:3],
    }


def loadgen_main(spec_path: str) -> None:
    import uvloop

    spec = json.loads(Path(spec_path).read_text())
    requests = pickle.loads(Path(spec["requests"]).read_bytes())  # noqa: S301 - our own file
    print(json.dumps(uvloop.run(loadgen(spec, requests))))


# --------------------------------------------------------------------------------------------
# The driver.


@dataclass
class Run:
    scenario: str
    concurrency: int
    round: int = 0
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    errors: int = 0
    count: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    xacts_per_request: float = 0.0
    per_commit: float | None = None  # deliveries per group commit (taskhook's own metric)
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy() -> float:
    """CPU seconds this VM's processes and kernel used: user, nice, system, irq and softirq.
    Not idle, iowait, or steal (time the host gave to someone else, up to 40 % here), and not
    guest time (already counted in user)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def http_request(port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def prediction_body(prediction_id: str, progress: int) -> bytes:
    """A Replicate prediction as its webhooks carry it, mid-run."""
    bar = "█" * (progress // 10)
    return json.dumps(
        {
            "id": prediction_id,
            "model": "black-forest-labs/flux-schnell",
            "version": VERSION,
            "input": {"prompt": "a red fox in the snow, 35mm photograph", "num_outputs": 1},
            "logs": f"Using seed: 1234\n{progress:3d}%|{bar:<10}| {progress}/100 [00:01<00:01]\n",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "processing",
            "created_at": "2025-01-01T00:00:00.000Z",
            "started_at": "2025-01-01T00:00:01.000Z",
            "urls": {
                "get": f"https://api.replicate.com/v1/predictions/{prediction_id}",
                "cancel": f"https://api.replicate.com/v1/predictions/{prediction_id}/cancel",
            },
        }
    ).encode()


@dataclass
class Webhooks:
    """Pre-built deliveries: each task's progress grows by one per new delivery."""

    port: int
    paths: list[str]  # callback path per task
    predictions: list[str]
    progress: list[int]
    cursor: int = 0
    delivered: list[tuple[str, str, bytes]] = field(default_factory=list)  # path, id, body

    def fresh(self, count: int) -> tuple[list[bytes], list[tuple[str, str, bytes]]]:
        out, made = [], []
        for _ in range(count):
            i = self.cursor % len(self.paths)
            self.cursor += 1
            if self.progress[i] >= 100:
                raise SystemExit("every task reached 100 % progress; raise --tasks")
            self.progress[i] += 1
            body = prediction_body(self.predictions[i], self.progress[i])
            webhook_id = new_webhook_id()
            headers = webhook_headers(WEBHOOK_SECRET, webhook_id, body)
            out.append(http_request(self.port, self.paths[i], headers, body))
            made.append((self.paths[i], webhook_id, body))
        return out, made

    def duplicates(self, count: int) -> list[bytes]:
        sample = self.delivered[:count]
        return [
            http_request(self.port, path, webhook_headers(WEBHOOK_SECRET, wid, body), body)
            for path, wid, body in sample
        ]


async def spawn(
    argv: list[str], env: dict[str, str] | None, log: Path
) -> asyncio.subprocess.Process:
    """`python argv...` from the repository, its output in `log`."""
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, *argv, env=env, cwd=REPO, stdout=out, stderr=out
        )


async def wait_http(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if proc.returncode is not None:
                raise SystemExit(f"server exited early; see {log}")
            try:
                await client.get(f"http://127.0.0.1:{port}/")
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"server did not listen within 30 s; see {log}") from None
                await asyncio.sleep(0.1)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def xact_count(admin: asyncpg.Connection[Any], name: str) -> int:
    value = await admin.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", name
    )
    return int(value or 0)


async def commit_sizes(port: int) -> tuple[float, float] | None:
    """Deliveries and commits so far, from the server's `taskhook_webhook_commit_size`
    histogram; None for the ceiling app, which has no /metrics."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    if response.status_code != 200:
        return None
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name.startswith("taskhook_webhook_commit_size")
    }
    name = "taskhook_webhook_commit_size"
    return samples[f"{name}_sum"], samples[f"{name}_count"]


async def drive(
    args: argparse.Namespace,
    *,
    scenario: str,
    concurrency: int,
    port: int,
    server_pid: int,
    requests: list[bytes],
    wrap: bool,
    expect: str | None,
    admin: asyncpg.Connection[Any],
    dbname: str,
    work: Path,
    profile: Path | None = None,
) -> tuple[Run, int]:
    """One load-generator run; the run and how many requests it sent."""
    req_path = work / f"{scenario}-{concurrency}.requests"
    req_path.write_bytes(pickle.dumps(requests))
    spec = {
        "port": port,
        "concurrency": concurrency,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "wrap": wrap,
        "expect": expect,
        "requests": str(req_path),
    }
    spec_path = work / f"{scenario}-{concurrency}.json"
    spec_path.write_text(json.dumps(spec))
    gen = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--loadgen",
        str(spec_path),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    await asyncio.sleep(args.warmup)
    before = (proc_cpu(server_pid), proc_cpu(gen.pid), machine_busy(), time.monotonic())
    xacts = await xact_count(admin, dbname)
    commits = await commit_sizes(port)
    spy = None
    if profile is not None:
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"),
            *("record", "--pid", str(server_pid), "--duration", str(int(args.seconds) - 1)),
            *("--rate", "200", "--nonblocking", "--format", "raw"),
            *("-o", str(profile / "fresh-c16.txt")),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    await asyncio.sleep(args.seconds - 0.2)
    after = (proc_cpu(server_pid), proc_cpu(gen.pid), machine_busy(), time.monotonic())
    xacts = await xact_count(admin, dbname) - xacts
    commits_after = await commit_sizes(port)
    out, _ = await gen.communicate()
    if spy is not None:
        await spy.wait()
    data = json.loads(out)
    elapsed = after[3] - before[3]
    bad = sum(n for code, n in data["statuses"].items() if not code.startswith("2"))
    run = Run(
        scenario=scenario,
        concurrency=concurrency,
        rps=data["rps"],
        p50=data["p50"],
        p99=data["p99"],
        max=data["max"],
        errors=bad + data["unexpected"] + len(data["failures"]),
        count=data["count"],
        statuses=data["statuses"],
        cpu={
            "server": (after[0] - before[0]) / elapsed,
            "loadgen": (after[1] - before[1]) / elapsed,
            "machine": (after[2] - before[2]) / elapsed,
        },
        xacts_per_request=xacts / data["count"] if data["count"] else 0.0,
    )
    if commits is not None and commits_after is not None and commits_after[1] > commits[1]:
        run.per_commit = (commits_after[0] - commits[0]) / (commits_after[1] - commits[1])
    if data["ran_out"]:
        run.notes.append("INVALID: ran out of pre-built requests; raise --max-requests")
    if data["failures"]:
        run.notes.append(f"connection failures: {data['failures']}")
    print(
        f"  {scenario:>9} c{concurrency:<3} {run.rps:8.0f} req/s  p50 {run.p50:6.2f} ms  "
        f"p99 {run.p99:6.2f} ms  errors {run.errors}",
        file=sys.stderr,
    )
    return run, data["sent"]


async def s3_env(data_dir: Path) -> dict[str, str]:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(DEV_S3)
        return {
            "TASKHOOK_S3_ENDPOINT_URL": DEV_S3,
            "TASKHOOK_S3_BUCKET": DEV_S3_BUCKET,
            "AWS_ACCESS_KEY_ID": "dev",
            "AWS_SECRET_ACCESS_KEY": "devsecret",
        }
    except httpx.TransportError:
        from taskhook.embedded import start_s3

        s3 = await asyncio.to_thread(start_s3, data_dir)
        return {
            "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
            "AWS_REGION": s3.region,
        }


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="webhook-ingest-", dir=data_dir))
    runs: list[Run] = []
    procs: list[asyncio.subprocess.Process] = []
    async with fresh_database() as (admin, name, dsn):
        try:
            conn = await connect(dsn)
            try:
                await conn.execute(
                    "CREATE TABLE ceiling_hits (id bigserial PRIMARY KEY, body bytea)"
                )
            finally:
                await conn.close()
            started = time.monotonic()
            task_ids = await insert_submitted_tasks(
                dsn, [f"p_{n}" for n in range(args.tasks)], model="black-forest-labs/flux-schnell"
            )
            print(f"{args.tasks} tasks ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
            concurrencies = args.concurrency

            # Both servers stay up; each round drives the ceiling, then fresh, then duplicate
            # deliveries back to back, so every ratio compares windows seconds apart (this
            # machine's CPU steal drifts over minutes, and a ceiling measured once early misleads).
            ceiling_port = free_port()
            log = work / "ceiling.log"
            ceiling = await spawn([__file__, "--serve-ceiling", dsn, str(ceiling_port)], None, log)
            procs.append(ceiling)
            await wait_http(ceiling_port, ceiling, log)
            one = http_request(
                ceiling_port,
                "/hooks/replicate/x",
                webhook_headers(WEBHOOK_SECRET, new_webhook_id(), prediction_body("p_0", 1)),
                prediction_body("p_0", 1),
            )

            port = free_port()
            env = {
                **os.environ,
                "DATABASE_URL": dsn,
                "REPLICATE_API_TOKEN": "x",
                "REPLICATE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "TASKHOOK_SECRET": CALLBACK_SECRET,
                "TASKHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "TASKHOOK_RATE_LIMIT": "0",
                "TASKHOOK_DATA_DIR": str(data_dir),
                **(await s3_env(data_dir)),
            }
            log = work / "taskhook-serve.log"
            server = await spawn(["-m", "taskhook.cli", "serve", "--port", str(port)], env, log)
            procs.append(server)
            await wait_http(port, server, log)
            tokens = CallbackTokens(CALLBACK_SECRET)
            hooks = Webhooks(
                port=port,
                paths=[
                    f"/hooks/replicate/{tokens.issue(task_id=t, vendor='replicate')}"
                    for t in task_ids
                ],
                predictions=[f"p_{n}" for n in range(len(task_ids))],
                progress=[0] * len(task_ids),
            )
            common = {"admin": admin, "dbname": name, "work": work}
            for round_no in range(args.rounds):
                for c in concurrencies:
                    run, _ = await drive(
                        args,
                        scenario="ceiling",
                        concurrency=c,
                        port=ceiling_port,
                        server_pid=ceiling.pid,
                        requests=[one],
                        wrap=True,
                        expect="stored",
                        **common,
                    )
                    runs.append(replace(run, round=round_no))
                    requests, made = hooks.fresh(args.max_requests)
                    profiled = args.profile and c == 16 and round_no == 0
                    run, sent = await drive(
                        args,
                        scenario="fresh",
                        concurrency=c,
                        port=port,
                        server_pid=server.pid,
                        requests=requests,
                        wrap=False,
                        expect='"applied"',
                        profile=Path(args.profile) if profiled else None,
                        **common,
                    )
                    hooks.delivered += made[:sent]
                    runs.append(replace(run, round=round_no))
                    run, _ = await drive(
                        args,
                        scenario="duplicate",
                        concurrency=c,
                        port=port,
                        server_pid=server.pid,
                        requests=hooks.duplicates(args.max_requests),
                        wrap=True,
                        expect='"duplicate"',
                        **common,
                    )
                    runs.append(replace(run, round=round_no))
            await stop(ceiling)
            await stop(server)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            for path in await asyncio.to_thread(lambda: list(work.glob("*.requests"))):
                path.unlink()

    print_table(args, runs)
    print(f"\nserver logs: {work}")
    summary = summarize(runs)
    fresh16 = summary.get(("fresh", 16))
    if fresh16:
        ok = fresh16.ratio >= GOAL_RATIO and fresh16.p99 < GOAL_P99_MS
        print(
            f"goal (fresh c16 >= {GOAL_RATIO:.0%} of ceiling, p99 < {GOAL_P99_MS:.0f} ms; "
            f"medians over {args.rounds} rounds): {'met' if ok else 'MISSED'} "
            f"({fresh16.ratio:.0%}, p99 {fresh16.p99:.1f} ms)"
        )
        return 0 if ok and not any(r.notes for r in runs) else 1
    return 1


@dataclass(frozen=True)
class Summary:
    rps: float  # median over rounds
    ratio: float  # median of each round's rps / that round's ceiling
    p99: float  # median over rounds
    cpu_per_request: float  # machine CPU-microseconds per answered request, median
    rounds: int


def summarize(runs: list[Run]) -> dict[tuple[str, int], Summary]:
    ceilings = {(r.round, r.concurrency): r.rps for r in runs if r.scenario == "ceiling"}
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.scenario, r.concurrency), []).append(r)
    return {
        key: Summary(
            rps=statistics.median(r.rps for r in group),
            ratio=statistics.median(
                r.rps / ceilings[(r.round, r.concurrency)]
                if ceilings.get((r.round, r.concurrency))
                else 0.0
                for r in group
            ),
            p99=statistics.median(r.p99 for r in group),
            cpu_per_request=statistics.median(
                r.cpu.get("machine", 0.0) / r.rps * 1e6 if r.rps else 0.0 for r in group
            ),
            rounds=len(group),
        )
        for key, group in groups.items()
    }


def print_table(args: argparse.Namespace, runs: list[Run]) -> None:
    ceiling = {(r.round, r.concurrency): r.rps for r in runs if r.scenario == "ceiling"}
    print(
        f"\nwebhook ingest: {args.rounds} rounds, each window {args.seconds}s after "
        f"{args.warmup}s warm-up, {args.tasks} tasks, {os.cpu_count()} CPUs (server, load "
        "generator and PostgreSQL share them)"
    )
    header = (
        f"{'round':>5}  {'scenario':>9}  {'conc':>4}  {'req/s':>7}  {'p50 ms':>7}  "
        f"{'p99 ms':>7}  {'max ms':>7}  {'errors':>6}  {'vs ceil':>7}  {'xact/req':>8}  "
        f"{'batch':>5}  {'srv CPU':>7}  {'gen CPU':>7}  {'machine':>7}  {'CPU us/req':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        base = ceiling.get((r.round, r.concurrency))
        ratio = r.rps / base if base else 0.0
        print(
            f"{r.round + 1:>5}  {r.scenario:>9}  {r.concurrency:>4}  {r.rps:>7.0f}  "
            f"{r.p50:>7.2f}  {r.p99:>7.2f}  {r.max:>7.1f}  {r.errors:>6}  {ratio:>7.2f}  "
            f"{r.xacts_per_request:>8.2f}  "
            f"{'-' if r.per_commit is None else f'{r.per_commit:.1f}':>5}  "
            f"{r.cpu.get('server', 0):>7.0%}  "
            f"{r.cpu.get('loadgen', 0):>7.0%}  {r.cpu.get('machine', 0):>7.0%}  "
            f"{r.cpu.get('machine', 0) / r.rps * 1e6 if r.rps else 0.0:>10.0f}"
        )
    print("\nmedians over rounds")
    print(
        f"{'scenario':>9}  {'conc':>4}  {'req/s':>7}  {'p99 ms':>7}  {'vs ceil':>7}  "
        f"{'CPU us/req':>10}  {'vs ceil':>7}"
    )
    summary = summarize(runs)
    for (scenario, conc), m in summary.items():
        base = summary[("ceiling", conc)].cpu_per_request
        print(
            f"{scenario:>9}  {conc:>4}  {m.rps:>7.0f}  {m.p99:>7.2f}  {m.ratio:>7.2f}  "
            f"{m.cpu_per_request:>10.0f}  {m.cpu_per_request / base if base else 0.0:>7.2f}"
        )
    for r in runs:
        for note in r.notes:
            print(f"  [round {r.round + 1} {r.scenario} c{r.concurrency}] {note}")
        if r.errors:
            print(f"  [round {r.round + 1} {r.scenario} c{r.concurrency}] statuses {r.statuses}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window")
    parser.add_argument(
        "--rounds", type=int, default=3, help="ceiling/fresh/duplicate rounds, medians reported"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="load before the window")
    parser.add_argument("--tasks", type=int, default=8000, help="tasks the webhooks spread over")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[16, 64], help="connections per run"
    )
    parser.add_argument(
        "--max-requests", type=int, default=60000, help="pre-built fresh requests per run"
    )
    parser.add_argument("--profile", help="directory for a py-spy profile of fresh c16")
    parser.add_argument(
        "--data-dir",
        default=str(Path(tempfile.gettempdir()) / "taskhook-bench"),
        help="TASKHOOK_DATA_DIR and server logs",
    )
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--serve-ceiling", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--seconds must be above 1, --warmup non-negative, --rounds at least 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.loadgen:
        loadgen_main(arguments.loadgen)
    elif arguments.serve_ceiling:
        serve_ceiling(arguments.serve_ceiling[0], int(arguments.serve_ceiling[1]))
    else:
        Path(arguments.data_dir).mkdir(parents=True, exist_ok=True)
        if arguments.profile:
            Path(arguments.profile).mkdir(parents=True, exist_ok=True)
            if not shutil.which("py-spy", path=str(Path(sys.executable).parent)):
                sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
        import uvloop

        sys.exit(uvloop.run(main(arguments)))
