"""Per-vendor rate limit, 429 back-off and circuit breaker, shared by every process.

The state lives in PostgreSQL (`vendor_state`), not in this process: two reconcilers on two
hosts draw from one token bucket, and one opened circuit stops every caller. Only the cap on
concurrent calls is per process, since it protects this process's sockets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from db import queries
from taskhook import metrics
from taskhook.errors import VendorUnavailable

log = structlog.get_logger()


@dataclass(frozen=True, kw_only=True)
class Limits:
    rate: float = 20.0  # calls per second, all processes together
    burst: float = 20.0  # calls that may go out at once after a quiet spell
    concurrency: int = 8  # calls in flight from one process
    breaker_threshold: int = 10  # consecutive failures that open the circuit
    breaker_cooldown: float = 30.0  # seconds the circuit stays open before one probe


class VendorHealth:
    def __init__(self, pool: asyncpg.Pool[Any], vendor: str, limits: Limits) -> None:
        self.pool = pool
        self.vendor = vendor
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.concurrency)
        self._ensured = False

    async def _ensure(self) -> None:
        if not self._ensured:
            async with self.pool.acquire() as conn:
                await queries.ensure_vendor(conn, vendor=self.vendor, burst=self.limits.burst)
            self._ensured = True

    async def permits(self) -> str | None:
        """'closed' or 'half-open' when a call may go out now; None while the circuit is open."""
        await self._ensure()
        async with self.pool.acquire() as conn:
            state = await queries.circuit_permits(
                conn, vendor=self.vendor, cooldown=self.limits.breaker_cooldown
            )
        metrics.CIRCUIT.labels(vendor=self.vendor).set(
            {"closed": 0, "half-open": 1}.get(state or "open", 2)
        )
        return state

    async def take(self, want: int) -> int:
        """Up to `want` calls' worth of the shared rate; 0 during a 429's Retry-After."""
        if want <= 0:
            return 0
        await self._ensure()
        async with self.pool.acquire() as conn:
            return await queries.take_tokens(
                conn, vendor=self.vendor, want=want, rate=self.limits.rate, burst=self.limits.burst
            )

    async def give_back(self, count: int) -> None:
        if count > 0:
            async with self.pool.acquire() as conn:
                await queries.return_tokens(
                    conn, vendor=self.vendor, count=count, burst=self.limits.burst
                )

    async def record(self, error: Exception | None) -> None:
        """Count a call's outcome. Throttling (429) is not a failure of the vendor: it blocks
        callers for Retry-After instead of moving the breaker."""
        throttled = isinstance(error, VendorUnavailable) and error.throttled
        failed = isinstance(error, VendorUnavailable | TimeoutError) and not throttled
        retry_after = None
        if throttled:
            assert isinstance(error, VendorUnavailable)
            retry_after = error.retry_after if error.retry_after is not None else 1.0
        async with self.pool.acquire() as conn:
            row = await queries.record_vendor_result(
                conn,
                vendor=self.vendor,
                ok=not failed,
                threshold=self.limits.breaker_threshold,
                cooldown=self.limits.breaker_cooldown,
                retry_after=retry_after,
            )
        if row is not None and failed and row["circuit"] == "open":
            log.warning(
                "circuit_open",
                vendor=self.vendor,
                failures=row["failures"],
                cooldown=self.limits.breaker_cooldown,
            )
