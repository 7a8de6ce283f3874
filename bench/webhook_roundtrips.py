"""PostgreSQL round trips per webhook on the receiver's path, counted in this process.

Companion to bench/webhook_ingest.py: it explains a throughput number, it does not measure one.
The real app (``create_app`` with a runtime from ``open_runtime``) is driven in-process through
httpx's ASGI transport; asyncpg's ``Connection`` methods are wrapped here (bench only) so every
message exchange with the server is counted and named: extended-protocol statements
(``fetch*``/``execute`` with arguments), simple queries (BEGIN/COMMIT, the pool's reset query on
release). Statement preparation is cached after the first use and not counted.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/webhook_roundtrips.py
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import structlog
from asyncpg.connection import Connection
from seeding import fresh_database, insert_submitted_tasks
from webhook_ingest import (
    CALLBACK_SECRET,
    WEBHOOK_SECRET,
    prediction_body,
    s3_env,
)

from common.tokens import CallbackTokens
from simulator.signing import new_webhook_id, webhook_headers
from taskhook.app import create_app
from taskhook.runtime import open_runtime
from vendors.registry import read_settings

SENDS = 50
DATA_DIR = Path("/tmp/taskhook-bench")  # noqa: S108 - bench scratch, outside the repo
trips: Counter[str] = Counter()
_execute = Connection._execute
_simple = Connection.execute


def _name(query: str) -> str:
    text = " ".join(query.split())
    return text[:70]


async def counted_execute(self: Any, query: str, args: Any, *rest: Any, **kw: Any) -> Any:
    trips[_name(query)] += 1
    return await _execute(self, query, args, *rest, **kw)


async def counted_simple(self: Any, query: str, *args: Any, **kw: Any) -> Any:
    if not args:  # with arguments it goes through _execute, counted there
        trips[_name(query)] += 1
    return await _simple(self, query, *args, **kw)


async def main() -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings up
    async with fresh_database() as (_admin, _name, dsn):
        task_ids = await insert_submitted_tasks(
            dsn, [f"p_{n}" for n in range(SENDS)], model="black-forest-labs/flux-schnell"
        )
        env = {
            "DATABASE_URL": dsn,
            "REPLICATE_API_TOKEN": "x",
            "REPLICATE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TASKHOOK_SECRET": CALLBACK_SECRET,
            "TASKHOOK_PUBLIC_URL": "http://127.0.0.1:9",
            "TASKHOOK_RATE_LIMIT": "0",
            "TASKHOOK_DATA_DIR": str(DATA_DIR),
            # the dev S3 when one runs, else the embedded one (the runtime checks the bucket)
            **await s3_env(DATA_DIR),
        }
        settings = replace(read_settings(env))
        tokens = CallbackTokens(CALLBACK_SECRET)
        async with open_runtime(settings) as rt:
            app = create_app(settings, runtime=rt)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                sent: list[tuple[str, str, bytes]] = []
                for n, task_id in enumerate(task_ids):
                    path = f"/hooks/replicate/{tokens.issue(task_id=task_id, vendor='replicate')}"
                    sent.append((path, new_webhook_id(), prediction_body(f"p_{n}", 5)))
                for label, expect in (("fresh", "applied"), ("duplicate", "duplicate")):
                    Connection._execute = counted_execute  # type: ignore[method-assign]
                    Connection.execute = counted_simple  # type: ignore[method-assign]
                    trips.clear()
                    for path, wid, body in sent:
                        r = await client.post(
                            path, content=body, headers=webhook_headers(WEBHOOK_SECRET, wid, body)
                        )
                        assert r.status_code == 200 and r.json()["status"] == expect, r.text
                    Connection._execute = _execute  # type: ignore[method-assign]
                    Connection.execute = _simple  # type: ignore[method-assign]
                    total = sum(trips.values())
                    print(f"\n{label}: {total / SENDS:.2f} round trips per webhook")
                    for query, count in trips.most_common():
                        print(f"  {count / SENDS:5.2f}  {query}")
    return 0


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main()))
