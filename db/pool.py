"""Connection pools: one per process, JSON decoded the same way everywhere."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Skip asyncpg's reset query on release (a round trip per checkout): pooled connections
    never change session state. LISTEN and advisory locks live on dedicated connections
    (taskhook.events, taskhook.worker, db.migrate); an open transaction is still rolled back."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def dsn_for_database(dsn: str, name: str) -> str:
    """The same server, another database (works for TCP and unix-socket DSNs)."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
