"""Per-vendor rate limit, 429 back-off and circuit breaker, shared by every process.

The state lives in PostgreSQL (`vendor_state`), not in this process: two reconcilers on two
hosts draw from one token bucket, and one opened circuit stops every caller. Only the cap on
concurrent calls is per process, since it protects this process's sockets.

Where a vendor limits creates apart from every other call (Replicate: 600 creates a minute,
3,000 other calls), registrations draw from a create budget of their own, the `vendor_state`
row named `<vendor>:create`; a 429 on a create blocks creates only. Elsewhere they draw from
the vendor's one bucket, with polls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import structlog

from common import metrics
from common.errors import VendorUnavailable
from db import queries

log = structlog.get_logger()


@dataclass(frozen=True, kw_only=True)
class Limits:
    rate: float = 20.0  # calls per second, all processes together
    burst: float = 20.0  # calls that may go out at once after a quiet spell
    concurrency: int = 8  # calls in flight from one process
    breaker_threshold: int = 10  # consecutive failures that open the circuit
    breaker_cooldown: float = 30.0  # seconds the circuit stays open before one probe
    # Creates per second in a budget of their own, all processes together; None: creates
    # draw from `rate` with every other call.
    create_rate: float | None = None


Budget = Literal["poll", "create"]
CREATE_SUFFIX = ":create"


class VendorHealth:
    def __init__(self, pool: asyncpg.Pool[Any], vendor: str, limits: Limits) -> None:
        self.pool = pool
        self.vendor = vendor
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.concurrency)
        self._ensured: set[str] = set()

    def _bucket(self, budget: Budget) -> tuple[str, float, float]:
        """(row, rate, burst) of a budget's token bucket."""
        rate = self.limits.create_rate
        if budget == "create" and rate is not None:
            return self.vendor + CREATE_SUFFIX, rate, max(1.0, rate)
        return self.vendor, self.limits.rate, self.limits.burst

    async def _ensure(self, budget: Budget = "poll") -> str:
        row, _, burst = self._bucket(budget)
        if row not in self._ensured:
            async with self.pool.acquire() as conn:
                await queries.ensure_vendor(conn, vendor=row, burst=burst)
            self._ensured.add(row)
        return row

    async def ensure(self) -> None:
        """The vendor's row, made with a full bucket when it has none yet. An operator's pause
        may be the first thing ever written for a vendor: a row it made would start empty."""
        await self._ensure()

    async def permits(self) -> str | None:
        """'closed' or 'half-open' when a call may go out now; None while the circuit is open
        or an operator has paused the vendor (every process reads the same row)."""
        await self._ensure()
        async with self.pool.acquire() as conn:
            state = await queries.circuit_permits(
                conn, vendor=self.vendor, cooldown=self.limits.breaker_cooldown
            )
        metrics.CIRCUIT.labels(vendor=self.vendor).set(
            {"closed": 0, "half-open": 1}.get(state or "open", 2)
        )
        return state

    async def take(self, want: int, *, budget: Budget = "poll") -> int:
        """Up to `want` calls' worth of the budget's shared rate; 0 during a 429's wait."""
        if want <= 0:
            return 0
        row = await self._ensure(budget)
        _, rate, burst = self._bucket(budget)
        async with self.pool.acquire() as conn:
            return await queries.take_tokens(conn, vendor=row, want=want, rate=rate, burst=burst)

    async def give_back(self, count: int, *, budget: Budget = "poll") -> None:
        if count > 0:
            row, _, burst = self._bucket(budget)
            async with self.pool.acquire() as conn:
                await queries.return_tokens(conn, vendor=row, count=count, burst=burst)

    async def record(self, error: Exception | None, *, budget: Budget = "poll") -> None:
        """Count a call's outcome. Throttling (429) is not a failure of the vendor: it blocks
        that budget's callers for the wait the vendor asked for instead of moving the
        breaker (which only the vendor's own row keeps)."""
        throttled = isinstance(error, VendorUnavailable) and error.throttled
        failed = isinstance(error, VendorUnavailable | TimeoutError) and not throttled
        retry_after = None
        if throttled:
            assert isinstance(error, VendorUnavailable)
            retry_after = error.retry_after if error.retry_after is not None else 1.0
        target = self.vendor
        if throttled and budget == "create":
            target = await self._ensure("create")
        async with self.pool.acquire() as conn:
            row = await queries.record_vendor_result(
                conn,
                vendor=target,
                ok=not failed,
                threshold=self.limits.breaker_threshold,
                cooldown=self.limits.breaker_cooldown,
                retry_after=retry_after,
                error=f"{type(error).__name__}: {error}"[:500] if failed else None,
            )
        if row is not None and failed and row.circuit == "open":
            log.warning(
                "circuit_open",
                vendor=self.vendor,
                failures=row.failures,
                cooldown=self.limits.breaker_cooldown,
            )
