"""What a process checks before it starts work, and the one line it writes when it has.

The policy (API.md "Starting a process"):

* the database or S3 unreachable: one warning line per attempt, retried with growing pauses
  for TASKHOOK_STARTUP_RETRY seconds (30 by default; 0 = give up at once), then one line and
  exit 4. A process started together with its database (compose, a reboot) comes up on its own;
  one pointed at a wrong host says so within half a minute, not with a traceback.
* the schema behind this release: one line naming `taskhook migrate`, exit 3; with
  TASKHOOK_SCHEMA_WAIT=N the process waits up to N seconds for the migration instead (a web
  process started next to the release step). Ahead of this release (a rollback): one line,
  exit 3.
* then one line, `taskhook_started`: process kind, version, listen address, vendors, storage,
  database host, environment; in development another, `development_defaults`, naming what was
  filled in (embedded services and where, generated secrets).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import structlog

from common.settings import Settings
from db.migrate import SchemaState, schema_state
from db.pool import connect
from storage.s3 import ResultStore, StorageUnavailable

log = structlog.get_logger()

T = TypeVar("T")

EXIT_SETTINGS = 2
EXIT_SCHEMA = 3
EXIT_UNREACHABLE = 4

_DB_ERRORS = (
    OSError,  # refused, unreachable, DNS, timeouts
    asyncpg.PostgresError,  # wrong password, no such database, too many connections
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
_FIRST_PAUSE = 0.5
_MAX_PAUSE = 5.0
_SCHEMA_POLL = 2.0


class StartupFailed(Exception):
    """The process cannot start; the message is the one line to show, with its exit code."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def taskhook_version() -> str:
    try:
        return version("taskhook")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout not installed
        return "unknown"


def database_host(dsn: str) -> str:
    """Where the database is, without credentials: host:port/name (or the socket directory)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or "?"
    host = parts.hostname
    if not host:
        socket_dir = parse_qs(parts.query).get("host", ["?"])[0]
        return f"unix:{socket_dir}/{name}"
    port = parts.port or 5432
    return f"{host}:{port}/{name}"


def store_for(settings: Settings, *, max_attempts: int = 3) -> ResultStore:
    return ResultStore(
        endpoint_url=settings.s3_endpoint_url,
        bucket=settings.s3_bucket,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key,
        region=settings.aws_region,
        connect_timeout=5,
        max_attempts=max_attempts,
    )


def storage_description(settings: Settings) -> str:
    where = settings.s3_endpoint_url or "AWS S3"
    kind = "embedded " if settings.s3_embedded else ""
    return f"{kind}bucket {settings.s3_bucket!r} at {where}"


async def _retrying(
    event: str,
    what: str,
    attempt: Callable[[], Awaitable[T]],
    errors: tuple[type[BaseException], ...],
    *,
    retry_for: float,
    describe: Callable[[BaseException], str],
) -> T:
    """`attempt` until it works or `retry_for` seconds have passed: one warning per failure."""
    deadline = time.monotonic() + retry_for
    pause = _FIRST_PAUSE
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except errors as exc:
            reason = describe(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" after {tries} attempts in {retry_for:g} s" if tries > 1 else ""
                raise StartupFailed(
                    f"{what} is unreachable{waited}: {reason} "
                    "(TASKHOOK_STARTUP_RETRY says how long to keep trying)",
                    exit_code=EXIT_UNREACHABLE,
                ) from None
            log.warning(event, error=reason, retry_in=round(pause, 1))
            await asyncio.sleep(min(pause, left))
            pause = min(_MAX_PAUSE, pause * 2)


def _db_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def check_database(settings: Settings, *, schema: bool = True) -> SchemaState | None:
    """The database answers (retried per the policy) and, when `schema`, its schema is this
    release's (waited for per TASKHOOK_SCHEMA_WAIT). Raises StartupFailed."""
    assert settings.database_url
    dsn = settings.database_url
    where = f"the database at {database_host(dsn)}"

    async def state() -> SchemaState:
        conn = await asyncio.wait_for(connect(dsn), timeout=10)
        try:
            return await schema_state(conn)
        finally:
            await conn.close()

    def read() -> Awaitable[SchemaState]:
        return _retrying(
            "database_unreachable",
            where,
            state,
            _DB_ERRORS,
            retry_for=settings.startup_retry,
            describe=_db_reason,
        )

    found = await read()
    if not schema:
        return found
    deadline = time.monotonic() + settings.schema_wait
    while found.behind and time.monotonic() < deadline:
        log.warning(
            "schema_behind",
            waiting_for="taskhook migrate",
            missing=found.missing,
            functions=list(found.stale_functions),
        )
        await asyncio.sleep(min(_SCHEMA_POLL, max(0.0, deadline - time.monotonic())))
        found = await read()
    if not found.current:
        waited = (
            f" (waited {settings.schema_wait:g} s, TASKHOOK_SCHEMA_WAIT)"
            if found.behind and settings.schema_wait
            else ""
        )
        raise StartupFailed(found.describe() + waited, exit_code=EXIT_SCHEMA)
    return found


async def check_storage(settings: Settings) -> None:
    """The bucket answers (retried per the policy); made when missing, outside production."""
    store = store_for(settings, max_attempts=1)
    await _retrying(
        "storage_unreachable",
        "S3 storage",
        lambda: store.ensure_bucket(create=not settings.production),
        (StorageUnavailable,),
        retry_for=settings.startup_retry,
        describe=str,
    )


async def preflight(settings: Settings, *, storage: bool = True, schema: bool = True) -> None:
    await check_database(settings, schema=schema)
    if storage:
        await check_storage(settings)


def announce(settings: Settings, *, process: str, listen: str | None = None, **extra: Any) -> None:
    """The process's one startup line, and (development) what was filled in for it."""
    assert settings.database_url
    log.info(
        "taskhook_started",
        process=process,
        version=taskhook_version(),
        env=settings.env,
        listen=listen,
        vendors=list(settings.vendors),
        storage=storage_description(settings),
        database=database_host(settings.database_url),
        **extra,
    )
    if settings.defaults:
        log.warning("development_defaults", filled_in=list(settings.defaults))
