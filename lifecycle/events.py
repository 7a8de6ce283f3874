"""Task change notifications for live streams: one LISTEN connection per web process.

The transition NOTIFYs `taskhook_tasks` in the same transaction as every move, so a stream
learns of a change from PostgreSQL whichever process made it, and no client polls the table.
Each process fans notifications out to its own subscribers; a lost connection is reopened, and
streams re-read their task after a reconnect so nothing that happened meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import structlog

from db.pool import connect

log = structlog.get_logger()

CHANNEL = "taskhook_tasks"
RECONNECTED = "reconnected"  # put on every queue after a reconnect: re-read, you may have missed


class TaskEvents:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._subscribers: dict[uuid.UUID, set[asyncio.Queue[str]]] = defaultdict(set)
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            task_id = uuid.UUID(json.loads(str(payload))["id"])
        except (ValueError, KeyError, TypeError):
            return
        for queue in self._subscribers.get(task_id, ()):
            queue.put_nowait(str(payload))

    def _on_lost(self, _conn: Any) -> None:
        self._conn = None
        if not self._closed:
            asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closed and self._conn is None:
            try:
                await self._ensure()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for queues in self._subscribers.values():
                for queue in queues:
                    queue.put_nowait(RECONNECTED)

    async def _ensure(self) -> None:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await connect(self._dsn)
            await conn.add_listener(CHANNEL, self._on_notify)
            conn.add_termination_listener(self._on_lost)
            self._conn = conn

    @contextlib.asynccontextmanager
    async def subscribe(self, task_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of notification payloads for one task, live before the caller reads the
        task's current state, so no change falls between the read and the subscription."""
        await self._ensure()
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers[task_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[task_id].discard(queue)
            if not self._subscribers[task_id]:
                del self._subscribers[task_id]

    async def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
