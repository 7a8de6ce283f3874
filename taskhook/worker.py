"""The worker process: stores finished results to S3, retries pending registrations and
delivers clients' webhooks (lifecycle/webhook_sender.py).

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
from collections.abc import Coroutine
from typing import Any

import asyncpg
import httpx
import structlog

from common.net import public_only_client
from common.waiting import until_woken
from db import queries
from db.pool import connect
from lifecycle.registration import register
from lifecycle.results import store_result
from lifecycle.retry_schedule import RetrySchedule
from lifecycle.runtime import Runtime
from lifecycle.webhook_sender import CHANNEL as WEBHOOKS_CHANNEL
from lifecycle.webhook_sender import Render, WebhookSender
from submit.render import render_task

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
        self,
        rt: Runtime,
        *,
        concurrency: int = 4,
        idle_poll: float = 1.0,
        lease: float = 30.0,
        shutdown_grace: float = 10.0,
        webhooks: bool = True,
    ) -> None:
        self.rt = rt
        # Clients' webhooks are sent by every worker unless asked not to (tests of one part).
        self.webhooks = webhooks
        # Storing jobs and registrations each get this many slots, so slow downloads never
        # hold back registrations.
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self._storing: dict[Any, asyncio.Task[None]] = {}
        self._registering: dict[Any, asyncio.Task[None]] = {}
        self.idle_poll = idle_poll
        self.lease = lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection[Any] | None = None
        self._sender: WebhookSender | None = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            status = json.loads(str(payload)).get("status")
        except ValueError:
            return
        if status in ("storing", "pending"):
            self._wake.set()

    def _on_webhook_event(self, *_args: object) -> None:
        if self._sender is not None:
            self._sender.wake()

    def _on_lost(self, _conn: Any) -> None:
        self._wake.set()  # a pass right away: it listens again and catches up on missed work
        self._on_webhook_event()

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
            if self._sender is not None:  # one LISTEN connection for both kinds of work
                await conn.add_listener(WEBHOOKS_CHANNEL, self._on_webhook_event)
        except _DB_ERRORS as exc:
            log.warning("worker_listen_failed", error=repr(exc))
            conn.terminate()
            return
        conn.add_termination_listener(self._on_lost)
        self._listener = conn

    @property
    def busy(self) -> int:
        """Jobs running now (storing and registrations)."""
        return len(self._storing) + len(self._registering)

    async def run_once(self) -> int:
        """Claim as much work as free slots allow and start each job on its own; returns how
        many were started. Jobs run independently: one stuck download holds its own slot and
        nothing else, and a slot that frees up is filled by the next pass."""
        free_storing = self.concurrency - len(self._storing)
        free_pending = self.concurrency - len(self._registering)
        if free_storing <= 0 and free_pending <= 0:
            return 0
        async with self.rt.pool.acquire() as conn:
            storing = await queries.claim_storing(
                conn,
                limit=max(0, free_storing),
                owner=self.owner,
                lease_seconds=self.lease,
                storage_deadline=self.rt.settings.storage_deadline,
                retention=self.rt.result_retention,
            )
            pending = await queries.claim_pending_registrations(
                conn,
                limit=max(0, free_pending),
                lease_seconds=self.rt.settings.registration_lease,
            )
        for claim in storing:
            self._start(self._storing, claim.task_id, self._store(claim))
        for task_id, attempt in pending:
            self._start(self._registering, task_id, self._register(task_id, attempt))
        return len(storing) + len(pending)

    def _start(
        self,
        jobs: dict[Any, asyncio.Task[None]],
        task_id: Any,
        coro: Coroutine[Any, Any, None],
    ) -> None:
        job = asyncio.create_task(coro)
        jobs[task_id] = job

        def done(_job: asyncio.Task[None]) -> None:
            jobs.pop(task_id, None)
            self._wake.set()  # a slot is free: claim more

        job.add_done_callback(done)

    async def _store(self, claim: queries.StoringClaim) -> None:
        """One storing attempt with its own heartbeat; handed back at once when cancelled."""
        heartbeat = asyncio.create_task(self._renew(claim.task_id))
        try:
            await store_result(
                self.rt,
                task_id=claim.task_id,
                attempt=claim.attempt,
                owner=self.owner,
                time_left=claim.time_left,
            )
        except asyncio.CancelledError:
            # Stopped mid-attempt (shutdown): hand the claim back at once instead of letting
            # another worker wait for the lease to expire.
            await asyncio.shield(self._release_storing(claim.task_id))
            raise
        except Exception as exc:
            log.error("worker_job_crashed", task_id=str(claim.task_id), error=repr(exc))
        finally:
            heartbeat.cancel()

    async def _register(self, task_id: Any, attempt: int) -> None:
        try:
            await register(self.rt, task_id=task_id, attempt=attempt)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_pending(task_id))
            raise
        except Exception as exc:
            log.error("worker_job_crashed", task_id=str(task_id), error=repr(exc))

    async def _renew(self, task_id: Any) -> None:
        """Keep our storing claim while we work on it, so the lease can be short: a worker
        that dies (SIGKILL) frees its claims within one lease instead of after the longest
        download we could ever allow."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                async with self.rt.pool.acquire() as conn:
                    await queries.renew_storing(
                        conn, task_ids=[task_id], owner=self.owner, lease_seconds=self.lease
                    )
            except _DB_ERRORS as exc:
                log.warning("worker_renew_failed", error=repr(exc))

    async def _release_storing(self, task_id: Any) -> None:
        try:
            async with self.rt.pool.acquire() as conn:
                await queries.release_storing(
                    conn,
                    task_id=task_id,
                    owner=self.owner,
                    delay_seconds=0,
                    error="worker stopped mid-attempt",
                )
        except _DB_ERRORS as exc:  # the lease lapses by itself
            log.warning("worker_release_failed", error=repr(exc))

    async def _release_pending(self, task_id: Any) -> None:
        try:
            async with self.rt.pool.acquire() as conn:
                await queries.schedule_registration_retry(
                    conn, task_id=task_id, delay_seconds=0, error="worker stopped mid-attempt"
                )
        except _DB_ERRORS as exc:
            log.warning("worker_release_failed", error=repr(exc))

    async def wait_idle(self) -> None:
        """Until every job started so far has finished (tests, and shutdown)."""
        while self._storing or self._registering:
            await asyncio.wait({*self._storing.values(), *self._registering.values()})

    async def stop_jobs(self, grace: float) -> None:
        """Let running jobs finish for up to `grace` seconds, then cancel the rest (each hands
        its claim back)."""
        jobs = {*self._storing.values(), *self._registering.values()}
        if not jobs:
            return
        _done, late = await asyncio.wait(jobs, timeout=grace)
        for job in late:
            job.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            log.info("worker_released_claims", jobs=len(late))

    async def run(self, stop: asyncio.Event) -> None:
        if not self.webhooks:
            await self._run(stop)
            return
        settings = self.rt.settings
        assert settings.database_url
        async with client_webhook_http(self.rt) as client:
            sender = self._sender = WebhookSender(
                pool=self.rt.pool,
                dsn=None,  # woken through the worker's own LISTEN connection
                client=client,
                render=webhook_render(self.rt),
                schedule=RetrySchedule(settings.webhook_retry_schedule),
                timeout=settings.webhook_timeout,
                concurrency=settings.webhook_concurrency,
                host_concurrency=settings.webhook_host_concurrency,
            )
            sending = asyncio.create_task(sender.run(stop, grace=self.shutdown_grace))
            try:
                await self._run(stop)
            finally:
                stop.set()
                await sending

    async def _run(self, stop: asyncio.Event) -> None:
        log.info("worker_started", owner=self.owner)
        grace = self.shutdown_grace
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
                await until_woken(self._wake, stop, timeout=self.idle_poll)
        except asyncio.CancelledError:
            grace = 0  # cancelled, not asked to stop: hand every claim back now
            raise
        except Exception:
            log.exception("worker_crashed", owner=self.owner)
            raise
        finally:
            await self.stop_jobs(grace)
            if self._listener is not None:
                listener, self._listener = self._listener, None
                listener.remove_termination_listener(self._on_lost)
                await listener.close()
            log.info("worker_stopped", owner=self.owner)


def client_webhook_http(rt: Runtime) -> httpx.AsyncClient:
    """The client for clients' webhook URLs: public addresses only (the same guard as result
    downloads, unless TASKHOOK_ALLOW_PRIVATE_URLS), connect and read timeouts within the
    attempt's own."""
    timeout = rt.settings.webhook_timeout
    return public_only_client(
        allow_private=rt.settings.allow_private_urls,
        timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
        max_connections=rt.settings.webhook_concurrency,
        max_redirects=0,
        user_agent="taskhook-webhooks/0.1",
    )


def webhook_render(rt: Runtime) -> Render:
    """The task's JSON exactly as GET /v1/tasks/{id} renders it now (result URLs signed
    afresh)."""

    async def render(task_id: Any) -> bytes | None:
        async with rt.pool.acquire() as conn:
            task = await queries.get_task(conn, task_id=task_id, user_id=None)
        if task is None:
            return None
        rendered = await render_task(task, rt.store)
        return json.dumps(rendered, ensure_ascii=False, separators=(",", ":")).encode()

    return render
