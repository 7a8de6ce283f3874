"""db/schema.sql must describe exactly what the migrations build, and migrate is idempotent.

The SQL functions are written once, in db/functions/, and applied after either (by hash)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from db.migrate import (
    Applied,
    apply_functions,
    is_current,
    load_functions,
    load_migrations,
    migrate,
    migrate_all,
    schema_sql,
    schema_state,
)
from db.pool import dsn_for_database

CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, udt_name, is_nullable,
                         column_default
                    FROM information_schema.columns WHERE table_schema = 'public'
                     AND table_name NOT IN ('schema_migrations', 'schema_functions')""",
    "constraints": """SELECT conrelid::regclass::text, pg_get_constraintdef(oid)
                        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                         AND conrelid::regclass::text
                             NOT IN ('schema_migrations', 'schema_functions')""",
    "indexes": """SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
                   AND tablename NOT IN ('schema_migrations', 'schema_functions')""",
    # Per-table storage settings (fillfactor, autovacuum: 0015_autovacuum.sql).
    "reloptions": """SELECT relname, reloptions::text FROM pg_class
                       WHERE relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL""",
    "enums": """SELECT t.typname, e.enumlabel, e.enumsortorder FROM pg_enum e
                  JOIN pg_type t ON t.oid = e.enumtypid""",
    # Functions by signature, body and settings: db/functions/ on both sides, nothing else.
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
        applied = await migrate_all(migrated)
        assert [m.version for m in applied.migrations] == [m.version for m in load_migrations()]
        assert applied.functions == [f.name for f in load_functions()]
        await scripted.execute(schema_sql())
        assert await apply_functions(scripted) == applied.functions
        assert await describe(migrated) == await describe(scripted)
    finally:
        await migrated.close()
        await scripted.close()


async def test_migrate_twice_applies_nothing_the_second_time(empty_dbs: tuple[str, str]) -> None:
    conn = await asyncpg.connect(empty_dbs[0])
    try:
        assert not await is_current(conn)
        assert await migrate(conn)
        assert await migrate_all(conn) == Applied()
        assert await is_current(conn)
    finally:
        await conn.close()


async def test_a_changed_function_file_is_applied_once_by_the_next_migrate(
    empty_dbs: tuple[str, str],
) -> None:
    """A database that ran other text for a function (an older release's, or one from before
    db/functions/ existed: no hash recorded) is behind until migrate applies the file; then it
    runs exactly what a fresh install runs."""
    old = await asyncpg.connect(empty_dbs[0])
    fresh = await asyncpg.connect(empty_dbs[1])
    try:
        await migrate(old)
        await migrate(fresh)
        await old.execute(
            "CREATE OR REPLACE FUNCTION taskhook_webhook_outbox() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
        )
        await old.execute(
            "UPDATE schema_functions SET sha256 = 'older' WHERE name = 'taskhook_webhook_outbox'"
        )
        await old.execute("DELETE FROM schema_functions WHERE name = 'taskhook_receive_many'")
        assert await describe(old) != await describe(fresh)
        state = await schema_state(old)
        assert state.stale_functions == ("taskhook_receive_many", "taskhook_webhook_outbox")
        assert state.behind and not state.current and not await is_current(old)
        assert "run `taskhook migrate`" in state.describe()
        applied = await migrate_all(old)
        assert (applied.migrations, applied.functions) == (
            [],
            ["taskhook_receive_many", "taskhook_webhook_outbox"],
        )
        assert await describe(old) == await describe(fresh)
        assert (await schema_state(old)).current
    finally:
        await old.close()
        await fresh.close()


async def test_a_database_ahead_of_this_release_keeps_its_functions(
    empty_dbs: tuple[str, str],
) -> None:
    """After a rollback the newer release's functions stay: an older migrate must not undo
    them (the database says it is ahead, and the operator decides)."""
    conn = await asyncpg.connect(empty_dbs[0])
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'newer')")
        await conn.execute("UPDATE schema_functions SET sha256 = 'newer'")
        assert (await migrate_all(conn)).functions == []
        assert await conn.fetchval("SELECT count(*) FROM schema_functions WHERE sha256 = 'newer'")
        assert (await schema_state(conn)).unknown == [9999]
    finally:
        await conn.close()


def test_functions_are_written_only_in_db_functions() -> None:
    """No migration creates, replaces or alters a function that has its file: the file is
    applied after the migrations, so such a change would be silently undone (and the text
    written twice). 0017 creates the outbox trigger's placeholder, which its file replaces."""
    names = "|".join(f.name for f in load_functions())
    pattern = re.compile(rf"(CREATE|ALTER|OR REPLACE)\s+FUNCTION\s+({names})\b", re.IGNORECASE)
    found = {(m.version, match[2]) for m in load_migrations() for match in pattern.finditer(m.sql)}
    assert found <= {(17, "taskhook_webhook_outbox")}
    placeholder = next(m.sql for m in load_migrations() if m.version == 17)
    assert "RETURN NULL;\nEND\n$fn$;" in placeholder
