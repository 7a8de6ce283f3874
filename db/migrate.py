"""Numbered SQL migrations, applied once each, safe to run from several processes at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from db.queries import Conn

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every taskhook process.
_LOCK_KEY = 0x7A5C_400C


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    # Numbers are handed out to work done in parallel, so a branch may hold 0013 before 0010
    # is merged: a gap is another branch's number. Two files with one number are a mistake.
    if len(set(versions)) != len(versions) or (versions and versions[0] != 1):
        raise RuntimeError(f"migrations must be numbered from 0001, each once, got {versions}")
    return found


def schema_sql() -> str:
    return resources.files("db").joinpath("schema.sql").read_text(encoding="utf-8")


async def applied_versions(conn: Conn) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(conn: Conn) -> list[Migration]:
    """Apply what is missing, each migration in its own transaction; returns what was applied.

    A session advisory lock makes concurrent `taskhook migrate` runs wait for each other.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await applied_versions(conn)
        applied = []
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def is_current(conn: Conn) -> bool:
    return {m.version for m in load_migrations()} <= await applied_versions(conn)


@dataclass(frozen=True)
class SchemaState:
    """The database's migrations against the ones this release knows."""

    applied: frozenset[int]
    known: frozenset[int]

    @property
    def missing(self) -> list[int]:
        """Known here, not applied there: the schema is behind (run `taskhook migrate`)."""
        return sorted(self.known - self.applied)

    @property
    def unknown(self) -> list[int]:
        """Applied there, unknown here: the schema is ahead (this release is older)."""
        return sorted(self.applied - self.known)

    @property
    def current(self) -> bool:
        return not self.missing and not self.unknown

    def describe(self) -> str:
        """One sentence for an operator; what to do comes with it."""
        newest = f"{max(self.known):04d}" if self.known else "none"
        if self.unknown:
            ahead = ", ".join(f"{v:04d}" for v in self.unknown)
            return (
                f"the database schema is ahead of this taskhook: migration(s) {ahead} are "
                f"applied but this release knows up to {newest} (a rollback?); run the "
                "release that applied them, or restore the database from before that upgrade"
            )
        if self.missing:
            behind = ", ".join(f"{v:04d}" for v in self.missing)
            return (
                f"the database schema is behind this taskhook: migration(s) {behind} are not "
                "applied; run `taskhook migrate`"
            )
        return f"the database schema is current ({newest})"


async def schema_state(conn: Conn) -> SchemaState:
    return SchemaState(
        applied=frozenset(await applied_versions(conn)),
        known=frozenset(m.version for m in load_migrations()),
    )
