"""What the request layer (taskhook/middleware.py) costs per request: a request id, the HTTP
histogram by route template, the bound log context (issue 15.5/15.7).

Method: the real web app (create_app, a runtime on PostgreSQL and S3) is called in-process
through ASGI, with no socket, for `GET /healthz` (the cheapest route, so the layer's share is
the largest it can be) and for a webhook with a bad token (`POST /hooks/replicate/<token>`:
the receiver's path up to the token check, no database). **The baseline is the same app with
the request layer taken off** (Starlette's own middleware stack), measured in the same run,
rounds interleaved (A, B, A, B, ...) so that the machine's other load falls on both alike.
Reported: microseconds per request, median over the rounds, and the ratio with/without.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/request_overhead.py --requests 20000 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from common.settings import Settings
from taskhook.app import create_app
from taskhook.runtime import open_runtime, resolve_services
from vendors.replicate import ReplicateSettings

SECRET = "bench-request-overhead-" + "x" * 32


def scope(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000),
        "server": ("bench", 80),
    }


async def timed(app: Any, method: str, path: str, body: bytes, n: int) -> float:
    """Seconds per request over `n` requests."""
    sent = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return sent

    async def send(_message: dict[str, Any]) -> None:
        pass

    start = time.perf_counter()
    for _ in range(n):
        await app(scope(method, path), receive, send)
    return (time.perf_counter() - start) / n


async def main(requests: int, rounds: int) -> None:
    base = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="bench-overhead-")),
        database_url=os.environ.get("DATABASE_URL"),
        s3_embedded=True,
        secret=SECRET,
        public_url="http://bench",
        vendor_settings={
            "replicate": ReplicateSettings(
                api_token="t",  # noqa: S106 - a stand-in vendor nobody calls
                api_base="http://127.0.0.1:9/v1",
                webhook_secrets=("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",),
            )
        },
    )
    settings = await asyncio.to_thread(resolve_services, base)
    async with open_runtime(settings, apply_migrations=True) as rt:
        with_layer = create_app(settings, runtime=rt)
        without = create_app(settings, runtime=rt)
        # The same app with Starlette's own stack only: no request id, no HTTP histogram.
        without.middleware_stack = Starlette.build_middleware_stack(without)
        cases = [
            ("GET /healthz", "GET", "/healthz", b""),
            ("POST /hooks (bad token)", "POST", "/hooks/replicate/not-a-token", b"{}"),
        ]
        print(f"{requests} requests per round, {rounds} rounds, medians")
        print("| request | with layer (us) | without (us) | ratio | added (us) |")
        print("|---|---|---|---|---|")
        for label, method, path, body in cases:
            await timed(with_layer, method, path, body, requests // 10)  # warm up both
            await timed(without, method, path, body, requests // 10)
            a, b = [], []
            for _ in range(rounds):
                a.append(await timed(with_layer, method, path, body, requests))
                b.append(await timed(without, method, path, body, requests))
            wa, wb = statistics.median(a) * 1e6, statistics.median(b) * 1e6
            print(f"| {label} | {wa:.1f} | {wb:.1f} | {wa / wb:.2f} | {wa - wb:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
