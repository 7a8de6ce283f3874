"""`taskhook demo`: the whole life of many tasks on one machine, as a client would see it.

Embedded PostgreSQL and S3, the vendor simulator, the web app, a worker and a reconciler run in
this process; the demo then submits tasks over HTTP with an API key, watches them live and
checks the books at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import statistics
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.logs import configure_logging
from common.settings import (
    FalSettings,
    MidjourneySettings,
    ReplicateSettings,
    Settings,
    VendorRoute,
)
from db.migrate import migrate
from db.pool import connect
from lifecycle.audit import default_grace, run_audit
from lifecycle.reconcile import run_reconciler
from lifecycle.users import create_user
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from taskhook.app import create_app
from taskhook.runtime import open_runtime, resolve_services
from taskhook.serving import bind, running_app, url_for
from taskhook.worker import Worker

TERMINAL = {"completed", "failed", "canceled"}
# The simulator and our adapter agree on this; it guards nothing real.
DEMO_TOKEN = "demo-token"  # noqa: S105
PROMPTS = [
    "a red fox in fresh snow",
    "a lighthouse at dusk",
    "a bowl of ramen, studio light",
    "an origami crane on a desk",
    "a tram in the rain",
    "a cat astronaut",
    "a koi pond",
    "a desert at noon",
    "a paper lantern festival",
    "a mossy stone bridge",
]

CHAOS: dict[str, Any] = {
    "drop": 0.2,
    "duplicate": 0.3,
    "reorder": True,
    "early": True,
    "error_rate": 0.1,
    "fail": 0.1,
    "bad_signature": 0.1,
}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def simulator_settings(sim: RunningSimulator) -> dict[str, Any]:
    """Settings fields (``replicate``, ``fal``, ``midjourney``) that point taskhook at a running
    simulator, each dialect on its own path, with the credentials it checks. Here, not in the
    simulator: it stands apart and knows nothing of taskhook's settings."""
    config = sim.simulator.config
    return {
        "replicate": ReplicateSettings(
            api_token=config.api_token or "token",
            api_base=f"{sim.url}/v1",
            webhook_secrets=(config.webhook_secret,),
        ),
        "fal": FalSettings(
            api_key=config.fal_key or "fal-key",
            queue_base=f"{sim.url}/fal",
            jwks_url=f"{sim.url}/fal/.well-known/jwks.json",
            api_base=f"{sim.url}/fal-api/v1",
        ),
        "midjourney": MidjourneySettings(api_base=sim.url, api_secret=config.mj_secret),
    }


async def run_demo(
    base: Settings, *, tasks: int, chaos: bool, port: int, keep_serving: bool
) -> bool:
    """The demo until it ends, or until Ctrl-C (SIGINT) or SIGTERM: then everything it started
    is stopped in order (its `finally` blocks and context managers unwind) and it ends with
    True, exit 0, without a traceback: stopping a demo is how a demo normally ends."""
    console = Console(stderr=False)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    work = asyncio.ensure_future(
        _run(console, base, tasks=tasks, chaos=chaos, port=port, keep_serving=keep_serving)
    )
    halt = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        console.print("Stopped; everything the demo started is shut down.")
        return True
    finally:
        halt.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _run(
    console: Console, base: Settings, *, tasks: int, chaos: bool, port: int, keep_serving: bool
) -> bool:
    started = time.monotonic()
    base.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = base.data_dir / "demo.log"
    # The terminal shows progress; every process's JSON log lines go to a file.
    configure_logging(json=True, file=log_path.open("a", encoding="utf-8", buffering=1))
    console.print("[bold]taskhook demo[/bold]: starting embedded services ...")
    settings = await asyncio.to_thread(resolve_services, base)
    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    console.print(
        f"  PostgreSQL and S3 ready in {time.monotonic() - started:.1f} s "
        f"(data under {settings.data_dir.absolute()})"
    )

    # Jobs take seconds, not a model's minute: the vendors' own clocks (a 429's wait, webhook
    # retries, result retention) shrink with them.
    sim_config = SimulatorConfig(job_seconds=2.0, time_scale=0.05, api_token=DEMO_TOKEN)
    if chaos:
        sim_config = replace(sim_config, **CHAOS)
    sock = bind("127.0.0.1", port)
    web_url = url_for(sock)
    async with running_simulator(sim_config) as sim:
        settings = replace(
            settings,
            public_url=web_url,
            allow_private_urls=True,  # the simulator serves images from 127.0.0.1
            poll_after=3.0 if chaos else settings.poll_after,
            # The simulator speaks all three vendors; the demo spreads its tasks over them.
            **simulator_settings(sim),
            # Every model the demo and its web page offer: with routes, others are refused.
            routes={
                "flux-schnell": (
                    VendorRoute("replicate", "black-forest-labs/flux-schnell", 1),
                    VendorRoute("fal", "fal-ai/flux/schnell", 1),
                ),
                "flux-dev": (VendorRoute("replicate", "black-forest-labs/flux-dev", 1),),
                "midjourney": (VendorRoute("midjourney", "midjourney", 1),),
            },
        )
        stop = asyncio.Event()
        async with (
            running_app(create_app(settings), sock=sock, limits=settings.server),
            open_runtime(settings) as rt,
        ):
            background = [
                asyncio.create_task(Worker(rt).run(stop)),
                asyncio.create_task(run_reconciler(rt, stop, interval=1.0)),
            ]
            console.print(
                f"  simulator at {sim.url} ({'chaos on' if chaos else 'no faults'}),"
                f" web app at {web_url}, worker and reconciler running"
            )
            console.print(
                f"  dashboard at {web_url}/admin, admin key {settings.admin_key}"
                if settings.admin_key
                else "  dashboard off (TASKHOOK_ADMIN_KEY=off)",
                soft_wrap=True,
            )
            try:
                ok = await _drive(console, rt, settings, web_url, tasks=tasks, chaos=chaos)
                if chaos:
                    _print_faults(console, sim.simulator.stats.to_json())
                if keep_serving:
                    console.print("Serving until Ctrl-C ...")
                    await asyncio.Event().wait()
            finally:
                stop.set()
                await asyncio.gather(*background, return_exceptions=True)
    console.print(f"Finished in {time.monotonic() - started:.1f} s. Logs: {log_path}")
    return ok


async def _drive(
    console: Console, rt: Any, settings: Settings, web_url: str, *, tasks: int, chaos: bool
) -> bool:
    async with rt.pool.acquire() as conn:
        email = f"demo-{uuid.uuid4().hex[:8]}@example.com"
        _, api_key = await create_user(conn, email=email, credits=tasks)
    console.print(
        f"  client {email} with {tasks} credits, key {api_key[:12]}...; "
        "every 10th prompt asks the vendor to fail, to show refunds"
    )
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=web_url, headers=headers, timeout=30) as client:
        ids = await _submit_all(client, tasks)
        final = await _watch(console, client, ids, timeout=120 + tasks * 0.2 + (60 if chaos else 0))
        me = (await client.get("/v1/me")).json()
    async with rt.pool.acquire() as conn:
        report = await run_audit(
            conn,
            grace_seconds=default_grace(settings),
            storage_deadline=settings.storage_deadline,
        )
    verified = await _verify_files(rt, final)
    return _summary(console, final, me, report.ok, verified, api_key, web_url)


# Routed to the first healthy vendor; pinned to fal; pinned to midjourney-proxy.
_BODIES: tuple[dict[str, Any], ...] = (
    {"model": "flux-schnell"},
    {"model": "fal-ai/flux/schnell", "vendor": "fal"},
    {"model": "midjourney", "vendor": "midjourney"},
)


async def _submit_all(client: httpx.AsyncClient, tasks: int) -> list[str]:
    gate = asyncio.Semaphore(16)

    async def submit(n: int) -> str:
        prompt = PROMPTS[n % len(PROMPTS)]
        if n % 10 == 9:
            prompt += " (fail-me)"  # the simulator fails these, so refunds show up too
        body = _BODIES[n % len(_BODIES)] | {"input": {"prompt": prompt, "seed": n}}
        key = f"demo-{n}-{uuid.uuid4().hex[:6]}"
        async with gate:
            for attempt in range(5):  # a client retrying with its idempotency key is safe
                try:
                    r = await client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                r.raise_for_status()
                return str(r.json()["id"])
        raise RuntimeError("could not submit a task")

    return list(await asyncio.gather(*(submit(n) for n in range(tasks))))


async def _watch(
    console: Console, client: httpx.AsyncClient, ids: list[str], *, timeout: float
) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(16)

    async def fetch(task_id: str) -> None:
        async with gate:
            try:
                r = await client.get(f"/v1/tasks/{task_id}")
            except httpx.TransportError:
                return
            if r.status_code == 200:
                latest[task_id] = r.json()

    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[states]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("tasks terminal", total=len(ids), states="")
        while time.monotonic() < deadline:
            open_ids = [i for i in ids if latest.get(i, {}).get("status") not in TERMINAL]
            if not open_ids:
                break
            await asyncio.gather(*(fetch(i) for i in open_ids))
            counts: dict[str, int] = {}
            for t in latest.values():
                counts[t["status"]] = counts.get(t["status"], 0) + 1
            done = sum(counts.get(s, 0) for s in TERMINAL)
            progress.update(
                bar, completed=done, states="  ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            )
            await asyncio.sleep(0.25)
    return latest


async def _verify_files(rt: Any, final: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Read stored results back from S3 and check their sha256: (checked, good)."""
    results = [t["result"] for t in final.values() if t["status"] == "completed" and t["result"]]
    checked = good = 0
    for result in results[:50]:
        for f in result.get("files", [result]):
            async with httpx.AsyncClient() as c:
                body = (await c.get(f["url"])).content
            checked += 1
            good += int(
                hashlib.sha256(body).hexdigest() == f["sha256"] and body.startswith(b"\x89PNG")
            )
    return checked, good


def _print_faults(console: Console, stats: dict[str, Any]) -> None:
    """What the simulator's chaos did, as it counted it: the faults taskhook absorbed."""
    hooks, api = stats["webhooks"], stats["api"]
    table = Table(title="faults the simulator injected (--chaos)", show_header=False)
    for label, value in [
        ("webhooks dropped", hooks["dropped"]),
        ("webhooks duplicated", hooks["duplicated"]),
        ("webhooks with a bad signature first", hooks["bad_signature"]),
        ("webhooks retried by the vendor", hooks["retried"]),
        ("API answers 503", api["errors_503"]),
        ("API answers 429", api["errors_429"]),
        ("creates answered 504 (job made)", stats["lost_answers"]),
        ("jobs failed", stats["predictions"]["failed"]),
    ]:
        table.add_row(label, str(value))
    console.print(table)


def _summary(
    console: Console,
    final: dict[str, dict[str, Any]],
    me: dict[str, Any],
    audit_ok: bool,
    verified: tuple[int, int],
    api_key: str,
    web_url: str,
) -> bool:
    statuses = [t["status"] for t in final.values()]
    durations = []
    from datetime import datetime

    for t in final.values():
        if t["completed_at"]:
            created = datetime.fromisoformat(t["created_at"].replace("Z", "+00:00"))
            ended = datetime.fromisoformat(t["completed_at"].replace("Z", "+00:00"))
            durations.append((ended - created).total_seconds())
    submitted = len(final)
    completed, failed = statuses.count("completed"), statuses.count("failed")
    refunded = sum(1 for t in final.values() if t["refunded"])
    still_open = submitted - completed - failed - statuses.count("canceled")
    table = Table(title="taskhook demo summary", show_header=False)
    for label, value in [
        ("submitted", submitted),
        ("completed", completed),
        ("failed", failed),
        ("refunded", refunded),
        ("still open", still_open),
        (
            "by vendor",
            ", ".join(
                f"{v} {n}" for v, n in sorted(Counter(t["vendor"] for t in final.values()).items())
            ),
        ),
        (
            "credits left",
            f"{me['credits']} (= {submitted} granted - {submitted} charged + {refunded} refunded)",
        ),
        ("stored files verified (sha256, PNG)", f"{verified[1]}/{verified[0]}"),
        ("p50 submit→terminal", f"{_percentile(durations, 50):.2f} s"),
        ("p99 submit→terminal", f"{_percentile(durations, 99):.2f} s"),
        ("audit", "clean" if audit_ok else "FAILED (run `taskhook audit`)"),
    ]:
        table.add_row(label, str(value))
    console.print(table)
    sample = next((t for t in final.values() if t["status"] == "completed"), None)
    # Whole lines, never wrapped or cut: a URL or key must survive copy and paste.
    if sample:
        console.print(f"A result: {sample['result']['url']}", soft_wrap=True, highlight=False)
    console.print(
        f"API: curl -H 'Authorization: Bearer {api_key}' {web_url}/v1/tasks/"
        f"{sample['id'] if sample else '<id>'}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"Web page: {web_url}/ (sign in with the key above; --keep-serving keeps it up)",
        soft_wrap=True,
        highlight=False,
    )
    ok = still_open == 0 and audit_ok and verified[0] == verified[1] and me["credits"] == refunded
    return ok
