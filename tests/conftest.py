"""Real PostgreSQL and real S3 for every test that needs them.

DATABASE_URL / TASKHOOK_S3_ENDPOINT_URL when given, else the same embedded servers a user gets.
One template database is migrated per run; each test gets its own copy (CREATE DATABASE ...
TEMPLATE), so tests see committed rows, can race two connections, and never share state.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from common.logs import configure_logging
from common.settings import Settings
from db.migrate import migrate
from db.pool import connect, dsn_for_database
from lifecycle.runtime import Runtime
from taskhook.runtime import open_runtime
from vendors.replicate import ReplicateSettings

TEST_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# Plain JSON lines as in production: structlog's dev renderer formats tracebacks with rich and
# pygments, which under hypothesis's tracer turns one logged 500 into minutes of work.
configure_logging(json=True)

_OWN_BASETEMP_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Give this run a temporary folder of its own, outside pytest's shared one.

    pytest's default base folder (/tmp/pytest-of-<user>/pytest-N) is rotated by every new run on
    the machine: a fourth run deletes the first one's folder, and with it the embedded
    PostgreSQL and S3 this session runs on. A folder that only this run knows is never rotated.
    `--basetemp` still wins when given.
    """
    if config.option.basetemp or hasattr(config, "workerinput"):
        return
    own = Path(tempfile.mkdtemp(prefix="taskhook-tests-"))
    config.option.basetemp = str(own)
    config.stash[_OWN_BASETEMP_KEY] = own


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP_KEY, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


# The suites by kind (pyproject's markers): the inner loop, unit and integration, is
# `pytest -m "not acceptance and not browser and not chaos"`; plain `pytest` runs everything.
_MARKS_BY_FOLDER = {"acceptance": ("acceptance",), "browser": ("browser",)}
_MARKS_BY_MODULE = {"test_chaos.py": ("chaos", "slow"), "test_container.py": ("slow",)}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        relative = item.path.relative_to(here) if item.path.is_relative_to(here) else item.path
        names = _MARKS_BY_FOLDER.get(relative.parts[0], ()) + _MARKS_BY_MODULE.get(
            item.path.name, ()
        )
        for name in names:
            item.add_marker(name)


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    from taskhook.embedded import start_postgres

    server = start_postgres(tmp_path_factory.mktemp("pg"))
    yield server.dsn
    server.stop()


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str
    access_key_id: str | None
    secret_access_key: str | None
    region: str
    bucket: str


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Config]:
    endpoint = os.environ.get("TASKHOOK_S3_ENDPOINT_URL")
    if endpoint:
        yield S3Config(
            endpoint,
            os.environ.get("AWS_ACCESS_KEY_ID"),
            os.environ.get("AWS_SECRET_ACCESS_KEY"),
            os.environ.get("AWS_REGION", "us-east-1"),
            os.environ.get("TASKHOOK_S3_BUCKET", "taskhook-test"),
        )
        return
    from taskhook.embedded import start_s3

    server = start_s3(tmp_path_factory.mktemp("s3"), bucket="taskhook-test")
    yield S3Config(
        server.endpoint_url,
        server.access_key_id,
        server.secret_access_key,
        server.region,
        server.bucket,
    )
    server.stop()


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    name = f"taskhook_test_template_{os.getpid()}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await connect(dsn_for_database(server_dsn, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield name
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db_url(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    name = f"taskhook_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield dsn_for_database(server_dsn, name)
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await connect(db_url)
    yield connection
    await connection.close()


@pytest.fixture
def settings(db_url: str, s3: S3Config, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=db_url,
        secret="test-secret",
        public_url="http://testserver",
        s3_endpoint_url=s3.endpoint_url,
        s3_bucket=s3.bucket,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        aws_region=s3.region,
        allow_private_urls=True,
        vendor_settings={
            "replicate": ReplicateSettings(
                api_token="r8_test",
                api_base="http://vendor.invalid/v1",
                webhook_secrets=(TEST_WEBHOOK_SECRET,),
            )
        },
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, pool_size=8) as rt:
        yield rt


@pytest.fixture
async def client(runtime: Runtime, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from taskhook.app import create_app

    app = create_app(settings, runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
