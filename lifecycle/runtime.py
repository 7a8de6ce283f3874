"""What every request, job and pass works with: the pool, the HTTP clients, the S3 store, the
adapters and their health, the callback tokens and the task events.

Every process kind (web, worker, reconciler, demo) opens the same runtime
(taskhook/runtime.py), so they agree on configuration and nothing about a task lives only in
one process's memory. The type lives here, on the lifecycle floor, because every caller of
the transition takes it; opening one (embedded services, migrations) is the processes' job.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from common import metrics
from common.settings import Settings
from common.tokens import CallbackTokens
from db.group_commit import GroupCommit
from db.models import ReceiveRow
from db.queries import InboundWebhook, receive_webhooks
from lifecycle.events import TaskEvents
from lifecycle.vendor_health import VendorHealth
from storage.s3 import ResultStore
from vendors.base import VendorAdapter
from vendors.readiness import VendorReadiness


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool[Any]
    http: httpx.AsyncClient
    store: ResultStore
    vendors: dict[str, VendorAdapter]
    tokens: CallbackTokens
    # For URLs that come from outside (vendors' outputs): public addresses only (common.net).
    downloads: httpx.AsyncClient
    health: dict[str, VendorHealth] = field(default_factory=dict)
    # Vendor accounts learned and pinned in the database (lifecycle/accounts.py), once read.
    accounts: dict[str, str] = field(default_factory=dict)
    # Confirmations with a vendor in flight from this process, by task (lifecycle/confirm.py).
    confirming: dict[Any, asyncio.Future[Any]] = field(default_factory=dict)
    # Each adapter's preparation (webhook secrets, keys), retried until it works.
    readiness: dict[str, VendorReadiness] = field(default_factory=dict)
    events: TaskEvents = field(init=False)
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    # Vendor registrations in flight from this process, below the HTTP client's 100
    # connections so none waits for a connection inside its timeout (submit spawns one each).
    registration_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    # Webhooks arriving while another batch commits share the next commit (the receiver).
    webhooks: GroupCommit[InboundWebhook, ReceiveRow] = field(init=False)

    def __post_init__(self) -> None:
        assert self.settings.database_url
        self.events = TaskEvents(self.settings.database_url)
        self.webhooks = GroupCommit(
            self.pool, receive_webhooks, on_commit=metrics.WEBHOOK_COMMIT_SIZE.observe
        )

    @property
    def result_retention(self) -> dict[str, float]:
        """Seconds each configured vendor keeps a finished job's result, where it does not
        keep them for good (vendors/base.py)."""
        return {
            name: adapter.result_retention
            for name, adapter in self.vendors.items()
            if adapter.result_retention is not None
        }

    @property
    def public_url(self) -> str:
        assert self.settings.public_url, "public_url is resolved before the runtime opens"
        return self.settings.public_url

    def callback_url(self, *, task_id: Any, vendor: str) -> str:
        token = self.tokens.issue(task_id=task_id, vendor=vendor)
        return f"{self.public_url}/hooks/{vendor}/{token}"

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run after the response; tracked so shutdown can wait instead of dropping work."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)
