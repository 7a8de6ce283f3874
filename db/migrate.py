"""Numbered SQL migrations, applied once each, then the SQL functions, each from its one file;
safe to run from several processes at once.

Tables change by migrations (history: a database runs each once, in order). A function's body
is not history: it is written once, in db/functions/<name>.sql, and applied after the
migrations whenever the file's text differs from what this database last applied (its SHA-256,
recorded in schema_functions). A change to a function is an edit of its file, reviewed as a
diff; no migration restates it (issue 19.4).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Function:
    """One SQL function's file: CREATE OR REPLACE FUNCTION and its settings (ALTER FUNCTION),
    applied whole whenever its text changes."""

    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


_FUNCTION = re.compile(r"^([a-z0-9_]+)\.sql$")


def load_functions() -> list[Function]:
    found = [
        Function(match[1], entry.read_text(encoding="utf-8"))
        for entry in resources.files("db").joinpath("functions").iterdir()
        if (match := _FUNCTION.match(entry.name))
    ]
    return sorted(found, key=lambda f: f.name)


@dataclass(frozen=True)
class Applied:
    """What one `taskhook migrate` did: migrations (in order), then functions (by name)."""

    migrations: list[Migration] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)


def schema_sql() -> str:
    return resources.files("db").joinpath("schema.sql").read_text(encoding="utf-8")


async def applied_versions(conn: Conn) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def applied_functions(conn: Conn) -> dict[str, str]:
    """Each function's SHA-256 as this database last applied it."""
    exists = await conn.fetchval("SELECT to_regclass('schema_functions') IS NOT NULL")
    if not exists:
        return {}
    return {
        r["name"]: r["sha256"]
        for r in await conn.fetch("SELECT name, sha256 FROM schema_functions")
    }


async def stale_functions(conn: Conn) -> list[str]:
    """The functions whose file differs from what this database runs (or never ran)."""
    done = await applied_functions(conn)
    return [f.name for f in load_functions() if done.get(f.name) != f.sha256]


async def apply_functions(conn: Conn) -> list[str]:
    """Apply every function file whose text changed, all in one transaction; returns their
    names. Needs the tables and types the functions name: after the migrations (or schema.sql).

    A database some migration ahead of this release (a rollback: schema_state says so) keeps
    its functions: they belong to that newer release, and an older one must not undo them."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_functions ("
        " name text PRIMARY KEY, sha256 text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    known = {m.version for m in load_migrations()}
    if await applied_versions(conn) - known:
        return []
    done = await applied_functions(conn)
    changed = [f for f in load_functions() if done.get(f.name) != f.sha256]
    if changed:
        async with conn.transaction():
            for function in changed:
                await conn.execute(function.sql)
                await conn.execute(
                    "INSERT INTO schema_functions (name, sha256) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE"
                    " SET sha256 = EXCLUDED.sha256, applied_at = now()",
                    function.name,
                    function.sha256,
                )
    return [f.name for f in changed]


async def migrate(conn: Conn) -> list[Migration]:
    """Apply what is missing (see `migrate_all`); returns the migrations applied."""
    return (await migrate_all(conn)).migrations


async def migrate_all(conn: Conn) -> Applied:
    """Apply what is missing, each migration in its own transaction, then the functions whose
    file changed (`apply_functions`); returns what was applied.

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
        return Applied(migrations=applied, functions=await apply_functions(conn))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def is_current(conn: Conn) -> bool:
    known = {m.version for m in load_migrations()}
    return known <= await applied_versions(conn) and not await stale_functions(conn)


@dataclass(frozen=True)
class SchemaState:
    """The database's migrations against the ones this release knows."""

    applied: frozenset[int]
    known: frozenset[int]
    # Functions whose file differs from what the database runs: `taskhook migrate` applies them.
    stale_functions: tuple[str, ...] = ()

    @property
    def missing(self) -> list[int]:
        """Known here, not applied there: the schema is behind (run `taskhook migrate`)."""
        return sorted(self.known - self.applied)

    @property
    def unknown(self) -> list[int]:
        """Applied there, unknown here: the schema is ahead (this release is older)."""
        return sorted(self.applied - self.known)

    @property
    def behind(self) -> bool:
        """`taskhook migrate` would bring it up to this release."""
        return bool(self.missing or self.stale_functions) and not self.unknown

    @property
    def current(self) -> bool:
        return not self.missing and not self.unknown and not self.stale_functions

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
        if self.stale_functions:
            return (
                "the database's SQL functions are behind this taskhook: "
                f"{', '.join(self.stale_functions)} differ from db/functions/; "
                "run `taskhook migrate`"
            )
        return f"the database schema is current ({newest})"


async def schema_state(conn: Conn) -> SchemaState:
    return SchemaState(
        applied=frozenset(await applied_versions(conn)),
        known=frozenset(m.version for m in load_migrations()),
        stale_functions=tuple(await stale_functions(conn)),
    )
