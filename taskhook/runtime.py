"""Opening what a running process holds (lifecycle/runtime.py): the pool, one HTTP client,
the S3 store and the adapters, after the embedded services a development setup leaves unset.

Every process kind (web, worker, reconciler, demo) opens the same runtime, so they agree on
configuration and nothing about a task lives only in one process's memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog

from common.net import public_only_client
from common.settings import Settings
from common.tokens import CallbackTokens
from db.migrate import migrate
from db.pool import connect, create_pool
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import Limits, VendorHealth
from storage.s3 import ResultStore
from taskhook.embedded import start_postgres, start_s3
from vendors.base import VendorAdapter
from vendors.readiness import VendorReadiness
from vendors.registry import build_adapters

log = structlog.get_logger()


def resolve_services(settings: Settings) -> Settings:
    """Start embedded PostgreSQL and S3 for whatever a development configuration leaves unset
    (Settings.from_env never leaves them unset in production), noting each for the
    announcement at start."""
    if settings.database_url is None:
        pg = start_postgres(settings.data_dir)
        settings = settings.with_default(
            f"PostgreSQL embedded, data in {pg.pgdata}", database_url=pg.dsn
        )
    if settings.s3_embedded and settings.s3_endpoint_url is None:
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
