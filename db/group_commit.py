"""Group commit: many small writes from one process share a round trip and a commit.

A webhook's database work is tiny next to what PostgreSQL spends per transaction (a backend
wake-up, the protocol, the commit record and its WAL flush, the NOTIFY queue lock). So while
one batch is committing, the deliveries that arrive queue up and go together in the next one:
an idle receiver commits each delivery at once (no timer, no added latency), a busy one
commits them in batches as large as the load makes them.

One batch is in flight at a time: a second one beside it would halve both batches and compete
with it for the same cores, and measured slower. But a batch that takes much longer than usual
(waiting on a row lock, a slow disk) must not hold up everything queued behind it, so once the
newest batch in flight has run for `stall` seconds, another may start, up to `concurrency`.

While work keeps queuing, one task commits batch after batch on one connection, sending the
next batch in the same event-loop step that received the last one's answer: going back through
the pool and a new task each time cost two loop turns per batch, each running every callback
then ready while the database sat idle (bench/RESULTS.md, "Figures that were code comments").

Nothing is answered before its batch commits, so a crash loses only unanswered work that the
vendor retries; no state lives here beyond the requests in flight. A batch is one transaction:
if the database refuses it for one delivery's sake (a constraint, a deadlock with another
process), every delivery in it is retried alone, so one bad delivery fails only itself. When
the connection fails, every caller in the batch gets that error, as each would have alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from db.queries import Conn

T = TypeVar("T")
R = TypeVar("R")

# The database is unreachable or the connection broke: retrying alone would not help.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class GroupCommit(Generic[T, R]):
    """Calls `run(conn, items)` (one transaction, one answer per item, in order) for batches
    of the items callers `submit`: one batch in flight, more (up to `concurrency`) only while
    those in flight have all run longer than `stall` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        run: Callable[[Conn, Sequence[T]], Awaitable[Sequence[R]]],
        *,
        concurrency: int = 4,
        stall: float = 0.05,
        max_batch: int = 64,
        on_commit: Callable[[int], object] | None = None,
    ) -> None:
        self._pool = pool
        self._run = run
        self._concurrency = concurrency
        self._stall = stall
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._started: list[float] = []  # when each batch in flight started (loop time)
        self._timer: asyncio.TimerHandle | None = None  # a check when the newest stalls
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until done
        self._on_commit = on_commit  # told each batch's size (a metric)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._may_start(loop.time()):
            task = asyncio.create_task(self._drain(self._take(loop.time())))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm()

    def _take(self, now: float) -> tuple[list[tuple[T, asyncio.Future[R]]], float]:
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        self._started.append(now)
        return batch, now

    def _arm(self) -> None:
        """A check for when the newest batch in flight will have stalled, if work waits."""
        if self._queue and self._timer is None and len(self._started) < self._concurrency:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(max(self._started) + self._stall, self._stalled)

    def _may_start(self, now: float) -> bool:
        if not self._started:
            return True
        return len(self._started) < self._concurrency and now - max(self._started) >= self._stall

    def _stalled(self) -> None:
        self._timer = None
        self._start()

    async def _drain(self, first: tuple[list[tuple[T, asyncio.Future[R]]], float]) -> None:
        """Commit batches back to back on one connection while work keeps queuing: the next
        batch goes to the database in the same step as the previous one's answers, before
        its callers are woken to write their responses. Handing over through the pool or a
        new task instead costs event-loop turns, each running every callback then ready
        (other requests' parsing, responses), all while the database sits idle."""
        loop = asyncio.get_running_loop()
        conn: PoolConnectionProxy[Any] | None = None
        batch, started = first
        pending = True  # `batch` holds callers not yet answered, and a slot in _started
        try:
            while True:
                if conn is None:
                    try:
                        conn = await self._pool.acquire()
                    except Exception as exc:  # database away: every caller's error
                        answers: list[R | BaseException] = [exc] * len(batch)
                if conn is not None:
                    answers = await self._answers(conn, [item for item, _ in batch])
                    if any(isinstance(a, CONNECTION_ERRORS) for a in answers):
                        # A broken connection goes back (the pool replaces it); the next
                        # batch takes a fresh one.
                        held, conn = conn, None
                        await self._pool.release(held)
                done = batch
                self._started.remove(started)
                pending = bool(self._queue) and self._may_start(loop.time())
                if pending:
                    batch, started = self._take(loop.time())
                self._start()  # any further batches the stall rule allows
                self._wake(done, answers)
                if not pending:
                    return
        except BaseException as exc:  # cancelled: this batch's callers get the error
            if pending:
                self._started.remove(started)
                self._wake(batch, [exc] * len(batch))
            raise
        finally:
            if conn is not None:
                await self._pool.release(conn)

    @staticmethod
    def _wake(
        batch: list[tuple[T, asyncio.Future[R]]], answers: Sequence[R | BaseException]
    ) -> None:
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # the caller has gone (client disconnect)
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _answers(self, conn: Conn, items: list[T]) -> list[R | BaseException]:
        """One answer or error per item, in order. A refused batch is retried one by one; a
        broken connection is every item's error."""
        if self._on_commit is not None:
            self._on_commit(len(items))
        try:
            try:
                return list(await self._run(conn, items))
            except asyncpg.PostgresError as exc:
                if len(items) == 1 or isinstance(exc, CONNECTION_ERRORS):
                    raise
                return await self._one_by_one(conn, items)
        except Exception as exc:  # handed to every caller
            return [exc] * len(items)

    async def _one_by_one(self, conn: Conn, items: list[T]) -> list[R | BaseException]:
        """The batch was refused as a whole: each item in its own transaction, so only the
        item the database refuses fails."""
        answers: list[R | BaseException] = []
        for item in items:
            try:
                (answer,) = await self._run(conn, [item])
            except CONNECTION_ERRORS as exc:  # this item and the rest fail with it
                return answers + [exc] * (len(items) - len(answers))
            except Exception as exc:  # this caller's error, raised in its request
                answers.append(exc)
            else:
                answers.append(answer)
        return answers
