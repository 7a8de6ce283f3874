"""What one batch of fresh webhooks costs PostgreSQL, by batch size, on one connection.

The receiver's group commit sends the deliveries that queue while a commit is in flight as one
call of ``taskhook_receive_many`` (one round trip, one commit). With one batch in flight, the
time of that call bounds the receiver's rate, so this measures it alone, without HTTP: for
each batch size, ``--seconds`` of back-to-back calls on one connection against a fresh
migrated database with ``--tasks`` submitted Replicate tasks, each call carrying fresh
"processing" reports (new delivery ids, progress growing, the receiver's next_poll_at) for
distinct tasks. The baseline, measured in the same run on the same connection, is the
ingest ceiling's statement committed alone: ``INSERT INTO ceiling_hits (body) VALUES ($1)``.

Printed per batch size: ms per call, µs per delivery, and deliveries per second against
ceiling INSERTs per second; then WAL bytes and records per delivery (pg_stat_wal).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/receive_batch.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

from seeding import REPORT_BODY, fresh_database, insert_submitted_tasks, processing_report

from db import queries
from db.pool import connect

CEILING_SQL = "INSERT INTO ceiling_hits (body) VALUES ($1)"


async def _wal(conn: Any) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT wal_bytes::bigint, wal_records FROM pg_stat_wal")
    return int(row[0]), int(row[1])


async def main(seconds: float, sizes: list[int], task_count: int) -> None:
    async with fresh_database() as (_admin, _name, dsn):
        vids = [f"p_{n}" for n in range(task_count)]
        tasks = list(zip(await insert_submitted_tasks(dsn, vids, model="a/b"), vids, strict=True))
        conn = await connect(dsn)
        await conn.execute("CREATE TABLE ceiling_hits (id bigserial PRIMARY KEY, body bytea)")
        numbers = itertools.count()
        try:
            start = time.perf_counter()
            calls = 0
            while time.perf_counter() - start < seconds:
                await conn.execute(CEILING_SQL, REPORT_BODY)
                calls += 1
            ceiling = calls / (time.perf_counter() - start)
            print(f"ceiling INSERT: {1e6 / ceiling:.0f} us per commit, {ceiling:.0f}/s")
            print(f"{'batch':>5}  {'ms/call':>7}  {'us/delivery':>11}  {'per s':>6}  vs ceiling")
            wal_before, delivered = await _wal(conn), 0
            for size in sizes:
                start, calls = time.perf_counter(), 0
                while time.perf_counter() - start < seconds:
                    batch = []
                    for _ in range(size):
                        n = next(numbers)
                        task_id, vendor_task_id = tasks[n % len(tasks)]
                        # progress grows by one each time the round-robin comes back
                        batch.append(
                            processing_report(
                                task_id,
                                vendor_task_id,
                                delivery_id=f"msg_{n}",
                                progress=1 + n // len(tasks),
                            )
                        )
                    rows = await queries.receive_webhooks(conn, batch)
                    assert all(r.applied for r in rows), "every delivery must apply"
                    calls += 1
                elapsed = time.perf_counter() - start
                delivered += calls * size
                rate = calls * size / elapsed
                print(
                    f"{size:>5}  {1000 * elapsed / calls:7.2f}  {1e6 / rate:11.0f}  "
                    f"{rate:6.0f}  {rate / ceiling:10.2f}",
                    flush=True,
                )
            wal_after = await _wal(conn)
            print(
                f"WAL per delivery: {(wal_after[0] - wal_before[0]) / delivered:.0f} bytes, "
                f"{(wal_after[1] - wal_before[1]) / delivered:.1f} records"
            )
        finally:
            await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--tasks", type=int, default=8000, help="distinct tasks to spread over")
    args = parser.parse_args()
    if max(args.sizes) > args.tasks:
        parser.error("a batch holds distinct tasks: --tasks must be at least the largest size")
    asyncio.run(main(args.seconds, args.sizes, args.tasks))
