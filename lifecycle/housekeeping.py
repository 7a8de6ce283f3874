"""The history's housekeeping: retention and the dashboard's counts (issue 20, issue 15.8).

Runs in the reconciler on its own timer (TASKHOOK_PRUNE_INTERVAL) and from `taskhook prune`.
Every step walks history from its old end along an index and stops at what is not yet due,
so a pass with nothing due costs a few index pages, however long the history:

- the webhook inbox: accepted deliveries older than TASKHOOK_DELIVERY_RETENTION
  (webhook_deliveries_received), dead letters of unsigned vendors (webhook_deliveries_rejected);
- task events of tasks that ended more than TASKHOOK_EVENT_RETENTION ago (tasks_ended, then
  each task's events by their unique index), behind the 'events' mark;
- stored result files of completed tasks that ended more than TASKHOOK_RESULT_RETENTION ago:
  deleted from the bucket, then forgotten by the task (its `result` is null from then on),
  behind the 'results' mark;
- the dashboard's counts of terminal states: tasks that ended are folded into
  task_state_counts behind the 'counts' mark, so the overview counts only those since;
- clients' webhook events that finished (delivered, failed, gone, superseded) longer ago than
  TASKHOOK_DELIVERY_RETENTION, with their attempts (webhook_outbox_finished; issue 18);
- per-minute rate windows older than an hour.

One process at a time does it (a session advisory lock on a connection of its own; the others
skip their turn), in
batches, each committed on its own: a crash loses at most one batch's progress, and a file
deleted twice is no error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from db import queries, webhooks_out
from db.pool import connect
from lifecycle.runtime import Runtime

log = structlog.get_logger()

# Any constant works; it only has to be the same for every taskhook process.
_LOCK_KEY = 0x7A5C_4014
BATCH = 1000
# A task's completed_at is its transition's transaction start: the counts fold in only tasks
# that ended longer ago than any such transaction lasts (see lifecycle.audit.SETTLE).
SETTLED_SECONDS = 600.0


@dataclass
class Pruned:
    deliveries: int = 0  # inbox rows deleted
    events: int = 0  # task events deleted
    event_tasks: int = 0  # tasks whose events went
    results: int = 0  # completed tasks whose stored files went
    files: int = 0  # files deleted from the bucket
    counted: int = 0  # ended tasks folded into the dashboard's counts
    webhook_events: int = 0  # clients' finished webhook events deleted (with their attempts)
    skipped: bool = False  # another process was at it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def housekeeping(rt: Runtime, *, until_done: bool = False, batch: int = BATCH) -> Pruned:
    """One round of every step (the reconciler's timer), or rounds until nothing is due
    (`taskhook prune`)."""
    done = Pruned()
    settings = rt.settings
    unsigned = [name for name, adapter in rt.vendors.items() if not adapter.signed_callbacks]
    assert settings.database_url is not None
    # A connection of its own: the lock is a session's, and pooled connections keep no
    # session state (db/pool.py). Closing it releases the lock, however the round ends.
    conn = await connect(settings.database_url)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            done.skipped = True
            return done
        while True:
            full = False
            async with _custom_plans(conn):
                n = await queries.prune_deliveries(
                    conn,
                    older_than_seconds=settings.delivery_retention,
                    limit=batch,
                    unsigned_vendors=unsigned,
                )
            done.deliveries += n
            full |= n >= batch
            async with _custom_plans(conn):
                n = await queries.fold_state_counts(
                    conn, settled_seconds=SETTLED_SECONDS, limit=batch * 10
                )
            done.counted += n
            full |= n >= batch * 10
            n = await webhooks_out.prune_outbox(
                conn, older_than_seconds=settings.delivery_retention, limit=batch
            )
            done.webhook_events += n
            full |= n >= batch
            if settings.event_retention is not None:
                async with _custom_plans(conn):
                    tasks, events = await queries.prune_events(
                        conn, older_than_seconds=settings.event_retention, limit=batch
                    )
                done.event_tasks += tasks
                done.events += events
                full |= tasks >= batch
            if settings.result_retention is not None:
                n = await _prune_results(rt, conn, done, batch=batch)
                full |= n >= batch
            await queries.prune_rate_windows(conn)
            if not (until_done and full):
                return done
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _custom_plans(conn: Any) -> AsyncIterator[None]:
    """One step's own transaction, planned for its values: its cut-off is a parameter, and a
    generic plan, not knowing the cut-off is near the old end, reads the whole history."""
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield


async def _prune_results(rt: Runtime, conn: Any, done: Pruned, *, batch: int) -> int:
    """Delete the files of the next batch of completed tasks past their retention, then
    forget them; returns how many ended tasks the batch held (failed and canceled ones have
    no files and only move the mark)."""
    assert rt.settings.result_retention is not None
    async with _custom_plans(conn):
        due = await queries.results_due(
            conn, older_than_seconds=rt.settings.result_retention, limit=batch
        )
    if not due:
        return 0
    keys = [
        f["key"]
        for task in due
        if task.status == "completed" and task.result
        for f in task.result.get("files", [])
        if isinstance(f, dict) and f.get("key")
    ]
    if keys:
        await rt.store.delete(keys)
    last = due[-1]
    done.results += await queries.forget_results(
        conn,
        task_ids=[t.task_id for t in due if t.status == "completed"],
        through=(last.completed_at, last.task_id),
    )
    done.files += len(keys)
    if keys:
        log.info("results_pruned", tasks=len(due), files=len(keys))
    return len(due)
