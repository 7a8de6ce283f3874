"""`taskhook check`: what an operator runs before going live, and CI/CD before each deploy.

Each check answers pass or fail with one line of detail, and none of them stops the others: an
operator sees everything wrong at once. Nothing is changed, except one probe object written to
the bucket and deleted again. Every check has a time limit, so a silent firewall fails the check
instead of hanging it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import httpx

from common.errors import VendorError
from common.settings import MIN_SECRET_BYTES, Settings
from db.migrate import schema_state
from db.pool import connect
from storage.s3 import StorageUnavailable
from taskhook.app import healthz_proof
from taskhook.startup import database_host, storage_description, store_for
from vendors.base import CheckFailed as Failed
from vendors.registry import BY_NAME, build_adapters

# Webhook timestamps get ±300 s, leases and deadlines are the database's clock: a host further
# off than this is drifting, and its NTP needs a look before it matters.
MAX_CLOCK_SKEW = 5.0
TIME_LIMIT = 15.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": "pass" if self.ok else "fail"}


async def _timed(name: str, check: Callable[[], Awaitable[str]]) -> Check:
    try:
        detail = await asyncio.wait_for(check(), timeout=TIME_LIMIT)
    except TimeoutError:
        return Check(name, False, f"no answer within {TIME_LIMIT:g} s")
    except Failed as exc:
        return Check(name, False, str(exc))
    except (VendorError, StorageUnavailable, httpx.HTTPError) as exc:
        return Check(name, False, str(exc) or type(exc).__name__)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return Check(name, False, f"{type(exc).__name__}: {exc}")
    return Check(name, True, detail)


async def run_checks(
    settings: Settings,
    *,
    http: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Check]:
    own_http = http is None
    client = http or httpx.AsyncClient(timeout=10.0, headers={"User-Agent": "taskhook-check"})
    try:
        checks = [
            await _timed("database", lambda: _database(settings)),
            await _timed("storage", lambda: _storage(settings)),
            *await _vendors(settings, client),
            await _timed("public url", lambda: _public_url(settings, client)),
            _secrets(settings),
            await _timed("clock", lambda: _clock(settings, clock)),
        ]
    finally:
        if own_http:
            await client.aclose()
    return checks


async def _database(settings: Settings) -> str:
    if settings.database_url is None:
        raise Failed("DATABASE_URL is not set")
    conn = await connect(settings.database_url)
    try:
        state = await schema_state(conn)
    finally:
        await conn.close()
    if not state.current:
        raise Failed(state.describe())
    return f"{database_host(settings.database_url)}, {state.describe()}"


async def _storage(settings: Settings) -> str:
    store = store_for(settings, max_attempts=1)
    await store.probe(f"taskhook-check/{uuid.uuid4().hex}")
    return f"put, read back and deleted an object in {storage_description(settings)}"


async def _vendors(settings: Settings, client: httpx.AsyncClient) -> list[Check]:
    adapters = build_adapters(settings, client)
    if not adapters:
        return [Check("vendors", False, "no vendor is configured (see docs/API.md)")]
    checks = []
    for name, adapter in adapters.items():
        checks.append(await _timed(f"{name} credentials", adapter.check_credentials))
        plugin = BY_NAME[name]
        for check_name, check in plugin.checks(settings.vendor(name), adapter, settings, client):
            checks.append(await _timed(check_name, check))
    return checks


async def _public_url(settings: Settings, client: httpx.AsyncClient) -> str:
    url = settings.public_url
    if url is None:
        raise Failed("TASKHOOK_PUBLIC_URL is not set: vendors could not call back")
    if not url.startswith("https://") and settings.production:
        raise Failed(f"{url} is not https: Replicate calls only https webhooks")
    challenge = secrets.token_urlsafe(24)
    started = time.monotonic()
    try:
        response = await client.get(
            f"{url}/healthz", params={"challenge": challenge}, follow_redirects=False
        )
    except httpx.HTTPError as exc:
        raise Failed(f"{url}/healthz did not answer: {exc!r}") from None
    took = (time.monotonic() - started) * 1000
    if response.status_code != 200:
        raise Failed(f"{url}/healthz answered HTTP {response.status_code}")
    try:
        proof = response.json().get("proof")
    except (ValueError, AttributeError):
        proof = None
    if proof != healthz_proof(settings.secret, challenge):
        raise Failed(
            f"{url}/healthz answered, but not as this deployment (another server, or another "
            "TASKHOOK_SECRET)"
        )
    note = "" if url.startswith("https://") else " (http: development only)"
    return f"{url} reaches this deployment ({took:.0f} ms){note}"


def _secrets(settings: Settings) -> Check:
    parts, ok = [], True
    named = [("TASKHOOK_SECRET", settings.secret), ("TASKHOOK_ADMIN_KEY", settings.admin_key)]
    if settings.metrics_token is not None:
        named.append(("TASKHOOK_METRICS_TOKEN", settings.metrics_token))
    for name, value in named:
        if value is None:
            parts.append(f"{name} off")
            continue
        size = len(value.encode())
        ok = ok and size >= MIN_SECRET_BYTES
        generated = any(note.startswith(name + " generated") for note in settings.defaults)
        origin = "generated in the data dir" if generated else "configured"
        parts.append(f"{name} {size} bytes ({origin})")
    return Check("secrets", ok, "; ".join(parts))


async def _clock(settings: Settings, clock: Callable[[], float]) -> str:
    if settings.database_url is None:
        raise Failed("DATABASE_URL is not set")
    conn = await connect(settings.database_url)
    try:
        before = clock()
        database_now = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())")
        after = clock()
    finally:
        await conn.close()
    skew = float(database_now) - (before + after) / 2
    detail = f"{skew:+.3f} s against the database (limit ±{MAX_CLOCK_SKEW:g} s)"
    if abs(skew) > MAX_CLOCK_SKEW:
        raise Failed(detail + ": check NTP on this host and the database's")
    return detail
