"""A client's webhook endpoint for the chaos run (issue 18): drops, delays and fails answers,
and tells afterwards what each task's client saw.

It is a real HTTP server on 127.0.0.1 (uvicorn). Each request's body is recorded as soon as it
has arrived; then, by a seeded draw, the answer is a 2xx at once, a 2xx after a delay, an error
status (500, 503, 429, 404), or nothing at all for longer than the sender waits (a dropped
answer). The report counts, per task: whether its terminal state was delivered (answered 2xx),
bodies whose `webhook-id` came before (duplicates: allowed, counted), bodies carrying an older
state than one received before (out of order: must be 0), and signatures that did not verify
with the official `standardwebhooks` library under the user's secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TERMINAL = frozenset({"completed", "failed", "canceled"})
RANK = {
    "pending": 0,
    "submitted": 1,
    "processing": 2,
    "storing": 3,
    "completed": 4,
    "failed": 4,
    "canceled": 4,
}


@dataclass(frozen=True)
class ClientFaults:
    drop: float = 0.05  # no answer for `hang` seconds (longer than TASKHOOK_WEBHOOK_TIMEOUT)
    fail: float = 0.15  # an error status
    delay: float = 0.2  # a 2xx after up to `max_delay` seconds
    max_delay: float = 0.5
    hang: float = 3.0


@dataclass
class Seen:
    task_id: str
    webhook_id: str
    status: str
    progress: int
    answered: int | None  # the status we answered; None: dropped
    at: float
    signed_by: int | None  # which user's secret verifies it (checked on arrival)


@dataclass
class ClientWebhookReport:
    received: int = 0
    tasks_with_terminal: int = 0
    missing_terminal: int = 0  # acked tasks whose terminal state was never answered 2xx
    duplicates: int = 0  # bodies whose webhook-id had come before
    out_of_order: int = 0  # bodies older than one the task's client had received
    bad_signatures: int = 0
    dropped: int = 0
    failed_answers: int = 0
    wait_seconds: float = 0.0  # all tasks terminal -> every terminal event delivered
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClientReceiver:
    def __init__(self, faults: ClientFaults, seed: int) -> None:
        self.faults = faults
        self.rng = random.Random(seed)
        self.seen: list[Seen] = []
        self.delivered_terminal: set[str] = set()
        self.verifiers: list[Any] = []  # standardwebhooks.Webhook per user, by user number
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/client"

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        try:
            task = json.loads(body)
            task_id, status, progress = str(task["id"]), str(task["status"]), int(task["progress"])
        except (ValueError, KeyError, TypeError):
            return Response(b"bad body", status_code=400)
        seen = Seen(
            task_id,
            request.headers.get("webhook-id", ""),
            status,
            progress,
            None,
            time.monotonic(),
            self._signer(body, dict(request.headers)),
        )
        self.seen.append(seen)
        draw = self.rng.random()
        f = self.faults
        if draw < f.drop:
            await asyncio.sleep(f.hang)  # the sender gives up first
            return Response(b"late", status_code=200)
        if draw < f.drop + f.fail:
            seen.answered = self.rng.choice((500, 503, 429, 404))
            return Response(b"nope", status_code=seen.answered)
        if draw < f.drop + f.fail + f.delay:
            await asyncio.sleep(self.rng.uniform(0, f.max_delay))
        seen.answered = 204 if draw > 0.9 else 200
        if status in TERMINAL:
            self.delivered_terminal.add(task_id)
        return Response(b"", status_code=seen.answered)

    def set_secrets(self, secrets: list[str]) -> None:
        """Each user's whsec_ secret, by user number (GET /v1/webhooks/secret)."""
        from standardwebhooks import Webhook

        self.verifiers = [Webhook(secret) for secret in secrets]

    def _signer(self, body: bytes, headers: dict[str, str]) -> int | None:
        """The user whose secret verifies the message (within its 5-minute tolerance, so on
        arrival), or None."""
        from standardwebhooks.webhooks import WebhookVerificationError

        for user, verifier in enumerate(self.verifiers):
            with contextlib.suppress(WebhookVerificationError):
                verifier.verify(body, headers)
                return user
        return None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/hooks/client", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", backlog=1024)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the client receiver did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = self._server.force_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving

    async def wait_delivered(self, task_ids: set[str], timeout: float) -> float | None:
        """Seconds until every task's terminal state was answered 2xx; None on timeout."""
        started = time.monotonic()
        while not task_ids <= self.delivered_terminal:
            if time.monotonic() - started > timeout:
                return None
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    def report(self, task_users: dict[str, int]) -> ClientWebhookReport:
        """`task_users`: each acked task's user number."""
        r = ClientWebhookReport(received=len(self.seen))
        ids: set[str] = set()
        newest: dict[str, tuple[int, int]] = {}
        for s in self.seen:  # in arrival order
            if s.webhook_id in ids:
                r.duplicates += 1
            ids.add(s.webhook_id)
            state = (RANK.get(s.status, -1), s.progress)
            if state < newest.get(s.task_id, (-1, -1)):
                r.out_of_order += 1
            newest[s.task_id] = max(state, newest.get(s.task_id, (-1, -1)))
            if s.signed_by is None or s.signed_by != task_users.get(s.task_id):
                r.bad_signatures += 1
            if s.answered is None:
                r.dropped += 1
            elif s.answered >= 300:
                r.failed_answers += 1
        task_ids = set(task_users)
        r.tasks_with_terminal = len(task_ids & self.delivered_terminal)
        missing = sorted(task_ids - self.delivered_terminal)
        r.missing_terminal = len(missing)
        r.missing = missing[:20]
        return r
