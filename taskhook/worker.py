"""The worker process: stores finished results to S3 and retries pending registrations.

Work is claimed in PostgreSQL with SKIP LOCKED and leases, so any number of workers can run;
NOTIFY wakes a worker early, and a short poll covers any notification that was missed. The
LISTEN connection is the worker's own: one lost with the database (a restart) wakes the loop,
which opens a new one as soon as the database answers again.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

import asyncpg
import structlog

from db import queries
from db.pool import connect
from storage.results import store_result
from submit.registration import register
from taskhook.runtime import Runtime

log = structlog.get_logger()

CHANNEL = "taskhook_tasks"
# InternalClientError: a connection the database has just dropped (see taskhook/app.py).
_DB_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class Worker:
    def __init__(
        self, rt: Runtime, *, concurrency: int = 4, idle_poll: float = 1.0, lease: float = 30.0
    ) -> None:
        self.rt = rt
        self.concurrency = concurrency
        self.idle_poll = idle_poll
        self.lease = lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection[Any] | None = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            status = json.loads(str(payload)).get("status")
        except ValueError:
            return
        if status in ("storing", "pending"):
            self._wake.set()

    def _on_lost(self, _conn: Any) -> None:
        self._wake.set()  # a pass right away: it listens again and catches up on missed work

    async def _listen(self) -> None:
        """LISTEN on a connection of our own, unless already listening; without one (database
        away) the idle poll keeps the work going and the next pass tries again."""
        if self._listener is not None and not self._listener.is_closed():
            return
        assert self.rt.settings.database_url
        try:
            conn = await connect(self.rt.settings.database_url)
        except _DB_ERRORS as exc:
            log.warning("worker_listen_failed", error=repr(exc))
            return
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except _DB_ERRORS as exc:
            log.warning("worker_listen_failed", error=repr(exc))
            conn.terminate()
            return
        conn.add_termination_listener(self._on_lost)
        self._listener = conn

    async def run_once(self) -> int:
        """Claim and do one batch of each kind of work; returns how many items were handled."""
        async with self.rt.pool.acquire() as conn:
            storing = await queries.claim_storing(
                conn,
                limit=self.concurrency,
                owner=self.owner,
                lease_seconds=self.lease,
                retention=self.rt.result_retention,
            )
            pending = await queries.claim_pending_registrations(
                conn,
                limit=self.concurrency,
                lease_seconds=self.rt.settings.registration_lease,
            )
        jobs = [
            store_result(self.rt, task_id=task_id, attempt=attempt, owner=self.owner)
            for task_id, attempt in storing
        ] + [register(self.rt, task_id=task_id, attempt=attempt) for task_id, attempt in pending]
        claimed = [task_id for task_id, _ in storing]
        heartbeat = asyncio.create_task(self._renew(claimed))
        try:
            results = await asyncio.gather(*jobs, return_exceptions=True)
        except asyncio.CancelledError:
            # Stopped mid-batch (shutdown timeout, or the task was cancelled): hand the claims
            # back at once instead of letting another worker wait for the leases to expire.
            heartbeat.cancel()
            await asyncio.shield(self._release(storing, pending))
            raise
        heartbeat.cancel()
        for item in results:
            if isinstance(item, BaseException):
                log.error("worker_job_crashed", error=repr(item))
        return len(jobs)

    async def _renew(self, task_ids: list[Any]) -> None:
        """Keep our storing claims while we work on them, so the lease can be short: a worker
        that dies (SIGKILL) frees its claims within one lease instead of after the longest
        download we could ever allow."""
        if not task_ids:
            return
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                async with self.rt.pool.acquire() as conn:
                    await queries.renew_storing(
                        conn, task_ids=task_ids, owner=self.owner, lease_seconds=self.lease
                    )
            except _DB_ERRORS as exc:
                log.warning("worker_renew_failed", error=repr(exc))

    async def _release(
        self, storing: list[tuple[Any, int]], pending: list[tuple[Any, int]]
    ) -> None:
        async with self.rt.pool.acquire() as conn:
            for task_id, _ in storing:
                await queries.release_storing(
                    conn,
                    task_id=task_id,
                    owner=self.owner,
                    delay_seconds=0,
                    error="worker stopped mid-attempt",
                )
            for task_id, _ in pending:
                await queries.schedule_registration_retry(
                    conn, task_id=task_id, delay_seconds=0, error="worker stopped mid-attempt"
                )
        log.info("worker_released_claims", storing=len(storing), pending=len(pending))

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker_started", owner=self.owner)
        try:
            while not stop.is_set():
                self._wake.clear()
                await self._listen()
                try:
                    handled = await self.run_once()
                except _DB_ERRORS as exc:
                    # The database is down or restarting: wait and try again, never die.
                    log.warning("worker_pass_failed", error=repr(exc))
                    handled = 0
                if handled:
                    continue
                waiters = [
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                ]
                await asyncio.wait(
                    waiters, timeout=self.idle_poll, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in waiters:
                    waiter.cancel()
        finally:
            if self._listener is not None:
                listener, self._listener = self._listener, None
                listener.remove_termination_listener(self._on_lost)
                await listener.close()
            log.info("worker_stopped", owner=self.owner)
