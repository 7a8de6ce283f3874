"""db/schema.sql must describe exactly what the migrations build, and migrate is idempotent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from db.migrate import is_current, load_migrations, migrate, schema_sql
from db.pool import dsn_for_database

CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, udt_name, is_nullable,
                         column_default
                    FROM information_schema.columns WHERE table_schema = 'public'
                     AND table_name <> 'schema_migrations'""",
    "constraints": """SELECT conrelid::regclass::text, pg_get_constraintdef(oid)
                        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                         AND conrelid::regclass::text <> 'schema_migrations'""",
    "indexes": """SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
                   AND tablename <> 'schema_migrations'""",
    # Per-table storage settings (fillfactor, autovacuum: 0015_autovacuum.sql).
    "reloptions": """SELECT relname, reloptions::text FROM pg_class
                       WHERE relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL""",
    "enums": """SELECT t.typname, e.enumlabel, e.enumsortorder FROM pg_enum e
                  JOIN pg_type t ON t.oid = e.enumtypid""",
    # Functions by signature, body and settings (schema.sql repeats the migrations' text).
    "functions": """SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc),
                           p.proconfig::text
                      FROM pg_proc AS p WHERE p.pronamespace = 'public'::regnamespace""",
}


async def describe(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: sorted(tuple(r) for r in await conn.fetch(sql)) for name, sql in CATALOG.items()}


@pytest.fixture
async def empty_dbs(server_dsn: str) -> AsyncIterator[tuple[str, str]]:
    names = [f"taskhook_mig_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = await asyncpg.connect(server_dsn)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        yield dsn_for_database(server_dsn, names[0]), dsn_for_database(server_dsn, names[1])
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_schema_sql_equals_migrations(empty_dbs: tuple[str, str]) -> None:
    migrated = await asyncpg.connect(empty_dbs[0])
    scripted = await asyncpg.connect(empty_dbs[1])
    try:
        applied = await migrate(migrated)
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        await scripted.execute(schema_sql())
        assert await describe(migrated) == await describe(scripted)
    finally:
        await migrated.close()
        await scripted.close()


async def test_migrate_twice_applies_nothing_the_second_time(empty_dbs: tuple[str, str]) -> None:
    conn = await asyncpg.connect(empty_dbs[0])
    try:
        assert not await is_current(conn)
        assert await migrate(conn)
        assert await migrate(conn) == []
        assert await is_current(conn)
    finally:
        await conn.close()
