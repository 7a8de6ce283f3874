"""Delivering the outbox: clients' webhooks, signed, retried, in order, never lost.

Events are written by the move that causes them (0017's trigger). A sender claims due events
with SKIP LOCKED and a lease, so any number of processes share the outbox; one that is killed
mid-attempt lets its lease lapse and the event is attempted again under the same webhook-id.
The body is the task as `GET /v1/tasks/{id}` renders it when sent: states only move forward, a
task's next event waits while an older one is in flight, and newer states supersede older
undelivered ones, so a client never gets an older state after a newer one. Each destination
host gets at most `host_concurrency` attempts in flight here, and claims skip hosts at that
cap, so a slow or dead endpoint holds its own slots and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import structlog

from common import metrics
from common.waiting import until_woken
from db import webhooks_out
from db.pool import connect
from db.webhooks_out import OutboxClaim
from lifecycle.retry_schedule import RetrySchedule
from lifecycle.webhook_signing import new_key, sign

log = structlog.get_logger()

CHANNEL = "taskhook_webhooks"
# The most of an answer's body we read and keep (for webhook_attempts): enough to show a
# client's error message, never a flood.
MAX_RESPONSE_BYTES = 1024
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

# The task's JSON as GET /v1/tasks/{id} shows it now; None when there is no such task.
Render = Callable[[uuid.UUID], Awaitable[bytes | None]]


@dataclass(frozen=True)
class Answer:
    status: int | None
    error: str | None
    body: str | None


class WebhookSender:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool[Any],
        dsn: str | None,
        client: httpx.AsyncClient,
        render: Render,
        schedule: RetrySchedule | None = None,
        timeout: float = 10.0,
        concurrency: int = 64,
        host_concurrency: int = 8,
        lease_margin: float = 5.0,
        idle_poll: float = 1.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.client = client
        self.render = render
        self.schedule = schedule or RetrySchedule()
        self.timeout = timeout
        self.concurrency = concurrency
        self.host_concurrency = host_concurrency
        # A lease outlives any attempt (bounded by `timeout`), so only a dead sender loses it.
        self.lease = timeout + lease_margin
        self.idle_poll = idle_poll
        self.clock = clock
        self.rng = rng or random.Random()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:webhooks:{id(self):x}"
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._hosts: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection[Any] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    async def run_once(self) -> int:
        """Claim as many due events as free slots allow and start each; how many started."""
        free = self.concurrency - len(self._jobs)
        if free <= 0:
            return 0
        busy = sorted(h for h, n in self._hosts.items() if n >= self.host_concurrency)
        async with self.pool.acquire() as conn:
            claims = await webhooks_out.claim_outbox(
                conn,
                limit=free,
                owner=self.owner,
                lease_seconds=self.lease,
                busy_hosts=busy,
                per_host=self.host_concurrency,
            )
            over = [c for c in claims if not self._take_slot(c)]
            if over:  # a host filled up within this batch: others will take them
                await webhooks_out.release_outbox(
                    conn, event_ids=[c.id for c in over], owner=self.owner
                )
        for claim in claims:
            if claim not in over:
                self._start(claim)
        return len(claims) - len(over)

    def _take_slot(self, claim: OutboxClaim) -> bool:
        if self._hosts[claim.host] >= self.host_concurrency:
            return False
        self._hosts[claim.host] += 1
        return True

    def _start(self, claim: OutboxClaim) -> None:
        job = asyncio.create_task(self._deliver(claim))
        self._jobs[claim.id] = job

        def done(_job: asyncio.Task[None]) -> None:
            self._jobs.pop(claim.id, None)
            self._hosts[claim.host] -= 1
            if self._hosts[claim.host] <= 0:
                del self._hosts[claim.host]
            self._wake.set()

        job.add_done_callback(done)

    async def _deliver(self, claim: OutboxClaim) -> None:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        try:
            answer = await self._attempt(claim)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(claim))
            raise
        except Exception as exc:  # a bug here must not kill the sender
            log.exception("client_webhook_crashed", event_id=claim.id)
            answer = Answer(None, f"internal error: {exc!r}"[:500], None)
        duration_ms = int((time.monotonic() - t0) * 1000)
        verdict, retry_in = self._judge(claim, answer)
        try:
            async with self.pool.acquire() as conn:
                state = await webhooks_out.finish_attempt(
                    conn,
                    event_id=claim.id,
                    owner=self.owner,
                    attempt=claim.attempt,
                    started_at=started,
                    duration_ms=duration_ms,
                    status_code=answer.status,
                    error=answer.error,
                    response_body=answer.body,
                    verdict=verdict,
                    retry_in=retry_in,
                )
        except _DB_ERRORS as exc:
            # The lease lapses and the event is attempted again (same webhook-id): a client
            # may see it twice, never not at all.
            log.warning("client_webhook_record_failed", event_id=claim.id, error=repr(exc))
            return
        metrics.CLIENT_WEBHOOK_ATTEMPTS.labels(verdict).inc()
        if verdict == "delivered":
            lag = (datetime.now(UTC) - claim.created_at).total_seconds()
            metrics.CLIENT_WEBHOOK_LAG.observe(max(lag, 0.0))
        log.info(
            "client_webhook_attempt",
            event_id=claim.id,
            task_id=str(claim.task_id),
            webhook_id=claim.webhook_id,
            host=claim.host,
            attempt=claim.attempt,
            status=answer.status,
            error=answer.error,
            verdict=verdict,
            state=state,
        )

    def _judge(self, claim: OutboxClaim, answer: Answer) -> tuple[str, float]:
        """(verdict, seconds until the next try): 2xx delivers, 410 stops, the rest retries
        on the schedule until it runs out."""
        if answer.status is not None and 200 <= answer.status < 300:
            return "delivered", 0.0
        if answer.status == 410:
            return "gone", 0.0
        delay = self.schedule.delay_after(claim.attempt, self.rng)
        return ("failed", 0.0) if delay is None else ("retry", delay)

    async def _attempt(self, claim: OutboxClaim) -> Answer:
        body = await self.render(claim.task_id)
        if body is None:
            return Answer(None, "the task no longer exists", None)
        keys = claim.keys
        if not keys:  # a user who never had one (tasks from before 0018): made now
            async with self.pool.acquire() as conn:
                keys = (
                    await webhooks_out.ensure_secret(
                        conn, user_id=claim.user_id, new_key=new_key()
                    ),
                )
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": claim.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                keys, msg_id=claim.webhook_id, timestamp=timestamp, body=body
            ),
            "taskhook-event": claim.event,
        }
        try:
            async with asyncio.timeout(self.timeout):
                request = self.client.build_request(
                    "POST", claim.url, content=body, headers=headers
                )
                response = await self.client.send(request, stream=True, follow_redirects=False)
                try:
                    text = await _read_capped(response, MAX_RESPONSE_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError:
            return Answer(None, f"no answer within {self.timeout:g} s", None)
        except httpx.HTTPError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}"[:500], None)
        return Answer(response.status_code, None, text)

    async def _release(self, claim: OutboxClaim) -> None:
        try:
            async with self.pool.acquire() as conn:
                await webhooks_out.release_outbox(conn, event_ids=[claim.id], owner=self.owner)
        except _DB_ERRORS as exc:  # the lease lapses by itself
            log.warning("client_webhook_release_failed", error=repr(exc))

    def wake(self) -> None:
        """Claim now (a NOTIFY on CHANNEL came in: new events)."""
        self._wake.set()

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    def _on_lost(self, _conn: object) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """LISTEN on a connection of our own, unless someone else listens for us (no dsn:
        the worker's connection calls `wake`)."""
        if self.dsn is None:
            return
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            conn = await connect(self.dsn)
        except _DB_ERRORS as exc:
            log.warning("client_webhook_listen_failed", error=repr(exc))
            return
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except _DB_ERRORS as exc:
            log.warning("client_webhook_listen_failed", error=repr(exc))
            conn.terminate()
            return
        conn.add_termination_listener(self._on_lost)
        self._listener = conn

    async def wait_idle(self) -> None:
        while self._jobs:
            await asyncio.wait(set(self._jobs.values()))

    async def run(self, stop: asyncio.Event, *, grace: float = 5.0) -> None:
        """Deliver until `stop`; attempts still running after `grace` are handed back."""
        log.info("client_webhooks_started", owner=self.owner)
        try:
            while not stop.is_set():
                self._wake.clear()
                await self._listen()
                try:
                    started = await self.run_once()
                except _DB_ERRORS as exc:
                    log.warning("client_webhook_pass_failed", error=repr(exc))
                    started = 0
                if started:
                    continue
                await until_woken(self._wake, stop, timeout=self.idle_poll)
        except asyncio.CancelledError:
            grace = 0
            raise
        finally:
            jobs = set(self._jobs.values())
            if jobs:
                _done, late = await asyncio.wait(jobs, timeout=grace) if grace else (set(), jobs)
                for job in late:
                    job.cancel()
                if late:
                    await asyncio.gather(*late, return_exceptions=True)
            if self._listener is not None:
                listener, self._listener = self._listener, None
                listener.remove_termination_listener(self._on_lost)
                await listener.close()
            log.info("client_webhooks_stopped", owner=self.owner)


async def _read_capped(response: httpx.Response, limit: int) -> str:
    """The first `limit` bytes of the body, as text; the rest is not read."""
    data = bytearray()
    async for chunk in response.aiter_raw():
        data.extend(chunk)
        if len(data) >= limit:
            break
    return bytes(data[:limit]).decode("utf-8", errors="replace")
