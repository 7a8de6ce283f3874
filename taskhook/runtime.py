"""What a running process holds: the pool, one HTTP client, the S3 store and the adapters.

Every process kind (web, worker, reconciler, demo) opens the same runtime, so they agree on
configuration and nothing about a task lives only in one process's memory.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import structlog

from db.group_commit import GroupCommit
from db.migrate import migrate
from db.pool import connect, create_pool
from db.queries import InboundWebhook, receive_webhooks
from storage.s3 import ResultStore
from taskhook import metrics
from taskhook.events import TaskEvents
from taskhook.net import public_only_client
from taskhook.settings import Settings
from taskhook.tokens import CallbackTokens
from vendors.base import VendorAdapter
from vendors.health import Limits, VendorHealth
from vendors.readiness import VendorReadiness
from vendors.replicate import ReplicateAdapter

log = structlog.get_logger()


def resolve_services(settings: Settings) -> Settings:
    """Start embedded PostgreSQL and S3 for whatever a development configuration leaves unset
    (Settings.from_env never leaves them unset in production), noting each for the
    announcement at start."""
    if settings.database_url is None:
        from taskhook.embedded import start_postgres

        pg = start_postgres(settings.data_dir)
        settings = settings.with_default(
            f"PostgreSQL embedded, data in {pg.pgdata}", database_url=pg.dsn
        )
    if settings.s3_embedded and settings.s3_endpoint_url is None:
        from taskhook.embedded import start_s3

        s3 = start_s3(settings.data_dir, bucket=settings.s3_bucket, region=settings.aws_region)
        settings = settings.with_default(
            f"S3 embedded at {s3.endpoint_url} (bucket {s3.bucket!r}, region {s3.region}), "
            f"data in {s3.log_path.parent}",
            s3_endpoint_url=s3.endpoint_url,
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key,
            aws_region=s3.region,
        )
    return settings


def build_adapters(settings: Settings, http: httpx.AsyncClient) -> dict[str, VendorAdapter]:
    adapters: dict[str, VendorAdapter] = {}
    if settings.replicate:
        adapters["replicate"] = ReplicateAdapter(
            http,
            api_token=settings.replicate.api_token,
            api_base=settings.replicate.api_base,
            webhook_secrets=settings.replicate.webhook_secrets,
            tolerance=settings.webhook_tolerance,
            timeout=settings.registration_timeout,
        )
    if settings.fal:
        from vendors.fal import FalAdapter

        adapters["fal"] = FalAdapter(
            http,
            api_key=settings.fal.api_key,
            queue_base=settings.fal.queue_base,
            jwks_url=settings.fal.jwks_url,
            api_base=settings.fal.api_base,
            tolerance=settings.webhook_tolerance,
            timeout=settings.registration_timeout,
        )
    if settings.midjourney:
        from vendors.midjourney_proxy import MidjourneyProxyAdapter

        adapters["midjourney"] = MidjourneyProxyAdapter(
            http,
            api_base=settings.midjourney.api_base,
            api_secret=settings.midjourney.api_secret,
            timeout=settings.registration_timeout,
            dialect=settings.midjourney.dialect,
        )
    return adapters


def vendor_limits(settings: Settings, adapter: VendorAdapter) -> Limits:
    """The shared limits of one vendor: our settings, and its own create budget where it has
    one (TASKHOOK_CREATE_RATE, else the limit the vendor documents)."""
    documented = getattr(adapter, "create_rate", None)
    return Limits(
        rate=settings.poll_rate,
        burst=settings.poll_rate,
        concurrency=settings.poll_concurrency,
        breaker_threshold=settings.breaker_threshold,
        breaker_cooldown=settings.breaker_cooldown,
        create_rate=None if documented is None else settings.create_rate or documented,
    )


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool[Any]
    http: httpx.AsyncClient
    store: ResultStore
    vendors: dict[str, VendorAdapter]
    tokens: CallbackTokens
    # For URLs that come from outside (vendors' outputs): public addresses only (taskhook.net).
    downloads: httpx.AsyncClient
    health: dict[str, VendorHealth] = field(default_factory=dict)
    # Vendor accounts learned and pinned in the database (receiver/accounts.py), once read.
    accounts: dict[str, str] = field(default_factory=dict)
    # Confirmations with a vendor in flight from this process, by task (reconciler/confirm.py).
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
    webhooks: GroupCommit[InboundWebhook, asyncpg.Record] = field(init=False)

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


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    apply_migrations: bool = False,
    pool_size: int = 10,
    http: httpx.AsyncClient | None = None,
) -> AsyncIterator[Runtime]:
    """Settings must already be resolved (see resolve_services) and carry a public_url."""
    assert settings.database_url is not None
    if apply_migrations:
        conn = await connect(settings.database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    pool = await create_pool(settings.database_url, min_size=1, max_size=pool_size)
    own_http = http is None
    client = http or httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"User-Agent": "taskhook/0.1"},
    )
    downloads = public_only_client(
        allow_private=settings.allow_private_urls,
        timeout=httpx.Timeout(30.0, connect=5.0),
    )
    store = ResultStore(
        endpoint_url=settings.s3_endpoint_url,
        bucket=settings.s3_bucket,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key,
        region=settings.aws_region,
    )
    runtime = Runtime(
        settings=settings,
        pool=pool,
        http=client,
        store=store,
        vendors=build_adapters(settings, client),
        tokens=CallbackTokens(settings.secret),
        downloads=downloads,
    )
    runtime.health = {
        name: VendorHealth(pool, name, vendor_limits(settings, adapter))
        for name, adapter in runtime.vendors.items()
    }
    runtime.readiness = {
        name: VendorReadiness(adapter, min_interval=settings.vendor_prepare_retry)
        for name, adapter in runtime.vendors.items()
    }
    try:
        # A production bucket is never made here: a misspelt name must not create a new one.
        await store.ensure_bucket(create=not settings.production)
        for readiness in runtime.readiness.values():
            # Not fatal: the vendor's webhooks get a 503 (it delivers them again) and polling
            # still works while the preparation is retried in the background.
            if not await readiness.attempt():
                readiness.start_healing()
        yield runtime
    finally:
        for readiness in runtime.readiness.values():
            await readiness.close()
        await runtime.drain()
        await runtime.events.close()
        if own_http:
            await client.aclose()
        await downloads.aclose()
        store.close()
        await pool.close()
