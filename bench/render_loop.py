"""How much rendering result URLs stalls the web process's event loop (issue 14.5).

Fifty completed tasks with 16 files each (TASKHOOK_MAX_OUTPUTS) are listed by 8 clients at
once (`GET /v1/tasks?limit=50`: 800 presigned URLs a page) for a few rounds, in-process through
httpx's ASGI transport, while a 5 ms ticker on the same event loop measures how late it wakes:
the loop's lag, which every other request of the process (`/hooks`, `/healthz`) waits too.
The baseline, measured in the same run, is the previous way: every URL signed on the event
loop, nothing remembered. Then the current way, once with the URL cache emptied before every
round (signing on the signing thread, each key once) and once warm.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/render_loop.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from seeding import fresh_database
from webhook_ingest import s3_env

from common.settings import Settings
from common.states import TaskStatus
from db import queries
from db.transition import transition
from lifecycle.runtime import Runtime
from lifecycle.users import create_user
from taskhook.app import create_app
from taskhook.runtime import open_runtime

TASKS, FILES, CLIENTS, ROUNDS = 50, 16, 8, 5
DATA_DIR = Path("/tmp/taskhook-bench")  # noqa: S108 - bench scratch, outside the repo


async def seed(rt: Runtime) -> str:
    async with rt.pool.acquire() as conn:
        user_id, key = await create_user(conn, email="render@bench.test", credits=TASKS)
        for _ in range(TASKS):
            charged, task_id = await queries.create_task(
                conn,
                task_id=uuid.uuid4(),
                user_id=user_id,
                vendor="replicate",
                model="black-forest-labs/flux-schnell",
                input={"prompt": "a fox"},
                cost=1,
                idempotency_key=None,
                request_hash=None,
                trace_id="bench",
                deadline_seconds=1800,
                registration_lease_seconds=30,
            )
            assert charged and task_id is not None
            files = [
                {
                    "key": f"results/{task_id.hex}/{n}.png",
                    "content_type": "image/png",
                    "bytes": 1,
                    "sha256": "0" * 64,
                }
                for n in range(FILES)
            ]
            for to in (TaskStatus.STORING, TaskStatus.COMPLETED):
                await transition(
                    conn,
                    task_id=task_id,
                    to=to,
                    event_key=f"bench-{to}",
                    cause="bench",
                    vendor_task_id="p",
                    outputs=["https://93.184.216.34/x.png"],
                    result={"files": files} if to is TaskStatus.COMPLETED else None,
                )
    return key


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(client: httpx.AsyncClient, key: str, before_round: Any) -> dict[str, float]:
    """Event-loop lag (a 5 ms ticker's lateness: what every other request on this process
    waits) and list GET times while CLIENTS list the page at once, ROUNDS times."""
    lags: list[float] = []
    lists: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - started - 0.005)

    async def lister() -> None:
        started = time.perf_counter()
        r = await client.get("/v1/tasks?limit=50", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and len(r.json()["data"]) == TASKS
        lists.append(time.perf_counter() - started)

    ticking = asyncio.create_task(ticker())
    for _ in range(ROUNDS):
        before_round()
        await asyncio.gather(*(lister() for _ in range(CLIENTS)))
    done.set()
    await ticking
    return {
        "lag_p50_ms": statistics.median(lags) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "lag_max_ms": max(lags) * 1000,
        "list_p50_ms": statistics.median(lists) * 1000,
    }


async def main() -> None:
    env = await s3_env(DATA_DIR)
    async with fresh_database() as (_admin, _name, dsn):
        settings = replace(
            Settings(data_dir=DATA_DIR, database_url=dsn, public_url="http://bench"),
            s3_endpoint_url=env["TASKHOOK_S3_ENDPOINT_URL"],
            s3_bucket=env.get("TASKHOOK_S3_BUCKET", "taskhook"),
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            rate_limit=0,
        )
        async with open_runtime(settings, pool_size=10) as rt:
            key = await seed(rt)
            app = create_app(settings, runtime=rt)
            transport = httpx.ASGITransport(app=app)
            store = rt.store
            current = store.presigned_urls

            async def on_the_loop(keys: Sequence[str]) -> list[str]:
                return [store._sign(k) for k in keys]  # the previous render: sync, uncached

            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
                results = {}
                store.presigned_urls = on_the_loop  # type: ignore[method-assign]
                results["baseline: signed on the loop"] = await measure(c, key, lambda: None)
                store.presigned_urls = current  # type: ignore[method-assign]
                results["now, cache emptied each round"] = await measure(c, key, store._urls.clear)
                results["now, warm"] = await measure(c, key, lambda: None)
    base = results["baseline: signed on the loop"]["lag_max_ms"]
    print(f"{TASKS} tasks x {FILES} files, {CLIENTS} clients x {ROUNDS} rounds of GET /v1/tasks")
    print("| way | loop lag p50 ms | p99 ms | max ms | list GET p50 ms | max lag vs baseline |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['lag_p50_ms']:.1f} | {r['lag_p99_ms']:.1f} | "
            f"{r['lag_max_ms']:.1f} | {r['list_p50_ms']:.1f} | "
            f"{r['lag_max_ms'] / base:.3f} |"
        )


if __name__ == "__main__":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    asyncio.run(main())
