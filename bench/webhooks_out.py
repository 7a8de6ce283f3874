"""Webhooks to clients (issue 18): deliveries per second and event->delivered latency.

What is measured, in one run against one local receiver (a uvicorn + starlette process of its
own, answering 200 to every POST):

* **throughput**: ``--events`` tasks with a client webhook are moved to a terminal state
  (through the one transition function, so the outbox trigger writes one event each), then
  the product's sender (``lifecycle/webhook_sender.py``, as the worker runs it: claims with
  SKIP LOCKED, renders each task as GET /v1/tasks/{id} does, signs, sends through the
  SSRF-guarded client, records the attempt) delivers them all: deliveries/s = events / time
  from the sender's start to the last event marked delivered.
* **baseline**: a bare asyncio + httpx sender posts the same signed bodies (the same count,
  ``--concurrency`` in flight, a keep-alive httpx client) to the same receiver, with no
  database at all. ratio = product / baseline; the goal is >= 0.5.
* **latency**: with the sender running, tasks are ended at a steady ``--rate`` per second for
  ``--seconds``; each event's latency is its delivered_at - created_at in the database (the
  commit of the move to the 2xx recorded): p50 / p99 / max.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/webhooks_out.py --events 2000 --rate 50 --seconds 20

The product's sender gets TASKHOOK_WEBHOOK_CONCURRENCY = TASKHOOK_WEBHOOK_HOST_CONCURRENCY =
``--concurrency`` (one destination host here). Each run gets a fresh database (dropped
afterwards); the embedded S3 is started under ``--data-dir`` (the runtime checks its bucket;
failed tasks have no files to sign). The receiver's own CPU is in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from seeding import fresh_database
from webhook_ingest import free_port

from common.logs import configure_logging
from common.settings import Settings
from common.states import TaskStatus
from db.transition import transition
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from lifecycle.retry_schedule import RetrySchedule
from lifecycle.runtime import Runtime
from lifecycle.users import create_user
from lifecycle.webhook_sender import WebhookSender
from lifecycle.webhook_signing import sign
from taskhook.embedded import start_s3
from taskhook.runtime import open_runtime
from taskhook.worker import client_webhook_http, webhook_render

RECEIVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def hook(request):
    await request.body()
    return Response(b"", status_code=200)

app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, backlog=2048)
"""


async def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])  # noqa: S603, ASYNC220
    url = f"http://127.0.0.1:{port}/hook"
    async with httpx.AsyncClient() as c:
        deadline = time.monotonic() + 20
        while True:
            try:
                await c.post(url, content=b"{}")
                return proc, url
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def make_tasks(rt: Runtime, url: str, count: int) -> list[uuid.UUID]:
    """`count` pending tasks with a webhook, one user each 500 (charges per user row)."""
    ids: list[uuid.UUID] = []
    from db import queries

    async with rt.pool.acquire() as conn:
        user_id = None
        for n in range(count):
            if n % 500 == 0:
                user_id, _ = await create_user(
                    conn, email=f"bench-{uuid.uuid4().hex[:8]}@x.test", credits=600
                )
            assert user_id is not None
            async with conn.transaction():
                _, task_id = await queries.create_task(
                    conn,
                    task_id=uuid.uuid4(),
                    user_id=user_id,
                    vendor="replicate",
                    model="a/b",
                    input={"prompt": f"bench {n}"},
                    cost=1,
                    idempotency_key=None,
                    request_hash=None,
                    trace_id="bench",
                    deadline_seconds=3600,
                    registration_lease_seconds=3600,
                )
                assert task_id is not None
                await client_webhooks.attach(
                    conn,
                    task_id=task_id,
                    user_id=user_id,
                    webhook=ClientWebhook(url, ("completed",)),
                )
            ids.append(task_id)
    return ids


async def end_tasks(rt: Runtime, ids: Sequence[uuid.UUID]) -> None:
    async def one(task_id: uuid.UUID) -> None:
        async with rt.pool.acquire() as conn:
            await transition(
                conn,
                task_id=task_id,
                to=TaskStatus.FAILED,
                event_key="bench",
                cause="bench",
                error={"code": "vendor_failed"},
            )

    for start in range(0, len(ids), 200):
        await asyncio.gather(*(one(t) for t in ids[start : start + 200]))


def sender(rt: Runtime, concurrency: int) -> WebhookSender:
    assert rt.settings.database_url
    return WebhookSender(
        pool=rt.pool,
        dsn=rt.settings.database_url,
        client=client_webhook_http(rt),
        render=webhook_render(rt),
        schedule=RetrySchedule((1.0,) * 5),
        timeout=10.0,
        concurrency=concurrency,
        host_concurrency=concurrency,
        idle_poll=0.2,
    )


async def delivered(rt: Runtime) -> int:
    async with rt.pool.acquire() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM webhook_outbox WHERE state='delivered'")
        return n


async def product_throughput(rt: Runtime, url: str, events: int, concurrency: int) -> float:
    ids = await make_tasks(rt, url, events)
    await end_tasks(rt, ids)
    s = sender(rt, concurrency)
    stop = asyncio.Event()
    started = time.monotonic()
    running = asyncio.create_task(s.run(stop))
    while True:
        if await delivered(rt) >= events:
            break
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    stop.set()
    await running
    await s.client.aclose()
    return events / elapsed


async def bodies_like_the_products(rt: Runtime, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """The signed requests the product sent (bodies rendered again, signed the same way)."""
    render = webhook_render(rt)
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT o.task_id, o.webhook_id, s.key FROM webhook_outbox AS o"
            " JOIN webhook_secrets AS s ON s.user_id = o.user_id AND s.expires_at IS NULL"
            " ORDER BY o.id LIMIT $1",
            count,
        )
    out = []
    for r in rows:
        body = await render(r["task_id"])
        assert body is not None
        ts = int(time.time())
        out.append(
            (
                body,
                {
                    "content-type": "application/json",
                    "webhook-id": r["webhook_id"],
                    "webhook-timestamp": str(ts),
                    "webhook-signature": sign(
                        [bytes(r["key"])], msg_id=r["webhook_id"], timestamp=ts, body=body
                    ),
                },
            )
        )
    return out


async def bare_throughput(
    url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> float:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def post(body: bytes, headers: dict[str, str]) -> None:
            async with gate:
                r = await client.post(url, content=body, headers=headers)
                assert r.status_code == 200

        started = time.monotonic()
        await asyncio.gather(*(post(b, h) for b, h in requests))
        return len(requests) / (time.monotonic() - started)


async def steady_latency(
    rt: Runtime, url: str, rate: float, seconds: float, concurrency: int
) -> list[float]:
    count = int(rate * seconds)
    ids = await make_tasks(rt, url, count)
    s = sender(rt, concurrency)
    stop = asyncio.Event()
    running = asyncio.create_task(s.run(stop))
    started = time.monotonic()
    for n, task_id in enumerate(ids):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        asyncio.get_running_loop().create_task(end_tasks(rt, [task_id]))
    async with rt.pool.acquire() as conn:
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM webhook_outbox WHERE state = 'delivered' AND task_id ="
                " ANY($1::uuid[])",
                ids,
            )
            if done >= count:
                break
            await asyncio.sleep(0.05)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM delivered_at - created_at)::float8 AS lag"
            " FROM webhook_outbox WHERE task_id = ANY($1::uuid[])",
            ids,
        )
    stop.set()
    await running
    await s.client.aclose()
    return [r["lag"] for r in rows]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else 0


async def main(args: argparse.Namespace) -> dict[str, Any]:
    receiver, url = await start_receiver()
    s3 = await asyncio.to_thread(
        start_s3, Path(args.data_dir or tempfile.mkdtemp(prefix="taskhook-bench-"))
    )
    try:
        async with fresh_database() as (_admin, _name, dsn):
            settings = Settings(
                database_url=dsn,
                public_url="http://127.0.0.1:1",
                s3_endpoint_url=s3.endpoint_url,
                s3_bucket=s3.bucket,
                aws_access_key_id=s3.access_key_id,
                aws_secret_access_key=s3.secret_access_key,
                aws_region=s3.region,
                allow_private_urls=True,
                webhook_concurrency=args.concurrency,
            )
            async with open_runtime(settings, pool_size=20) as rt:
                product = await product_throughput(rt, url, args.events, args.concurrency)
                requests = await bodies_like_the_products(rt, args.events)
                bare = await bare_throughput(url, requests, args.concurrency)
                lags = await steady_latency(rt, url, args.rate, args.seconds, args.concurrency)
    finally:
        receiver.terminate()
        receiver.wait(10)
        s3.stop()
    return {
        "events": args.events,
        "concurrency": args.concurrency,
        "product_deliveries_per_s": round(product, 1),
        "bare_httpx_posts_per_s": round(bare, 1),
        "ratio": round(product / bare, 2),
        "latency_rate_per_s": args.rate,
        "latency_events": len(lags),
        "latency_p50_ms": round(pct(lags, 50) * 1000, 1),
        "latency_p99_ms": round(pct(lags, 99) * 1000, 1),
        "latency_max_ms": round(max(lags) * 1000, 1),
        "cpus": os.cpu_count(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="for the throughput runs")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    parser.add_argument("--data-dir", default="", help="embedded S3's; default: a temp dir")
    return parser.parse_args(argv)


if __name__ == "__main__":
    configure_logging(json=True, level="warning")  # one line per attempt would be the bench
    result = asyncio.run(main(parse_args()))
    print(json.dumps(result, indent=2))
    goal = "met" if result["ratio"] >= 0.5 else "NOT met"
    print(
        f"product {result['product_deliveries_per_s']}/s vs bare httpx "
        f"{result['bare_httpx_posts_per_s']}/s: {result['ratio']}x (goal >= 0.5x {goal}); "
        f"latency at {result['latency_rate_per_s']}/s: p50 {result['latency_p50_ms']} ms, "
        f"p99 {result['latency_p99_ms']} ms",
        file=sys.stderr,
    )
