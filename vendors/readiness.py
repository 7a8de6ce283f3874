"""An adapter's preparation (Replicate's webhook secret, fal's keys), retried until it works.

A vendor that cannot be prepared at start (its API down for a minute, a network that is not up
yet) must not leave its webhooks refused until someone restarts the process: the first attempt
runs at start, and when it fails the same call is retried in the background with growing pauses
(at most one call per `min_interval`, whoever asks), until it succeeds. Meanwhile `/readyz` and
`/admin` say which vendor is not ready and why, and the vendor's webhooks get an honest 503 that
the vendor retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from common.errors import VendorError
from vendors.base import VendorAdapter

log = structlog.get_logger()


class VendorReadiness:
    """Whether one adapter is prepared, and the retries that get it there."""

    def __init__(
        self,
        adapter: VendorAdapter,
        *,
        min_interval: float = 5.0,
        max_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.vendor = adapter.name
        self.ready = False
        self.error: str | None = None
        self.attempts = 0
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._clock = clock
        self._last_attempt: float | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "error": self.error, "attempts": self.attempts}

    async def attempt(self) -> bool:
        """One call to the adapter's prepare(), unless the last was under `min_interval` ago
        (then the answer is the last one's): a flood of webhooks asks, the vendor is asked once."""
        async with self._lock:
            now = self._clock()
            if self.ready or (
                self._last_attempt is not None and now - self._last_attempt < self._min_interval
            ):
                return self.ready
            self._last_attempt = now
            self.attempts += 1
            try:
                await self.adapter.prepare()
            except VendorError as exc:
                self.error = str(exc) or type(exc).__name__
                log.warning(
                    "vendor_prepare_failed",
                    vendor=self.vendor,
                    error=self.error,
                    attempts=self.attempts,
                )
                return False
            if self.attempts > 1:
                log.info("vendor_prepared", vendor=self.vendor, attempts=self.attempts)
            self.ready, self.error = True, None
            return True

    def poke(self) -> None:
        """Ask the background retry to try now (still no sooner than `min_interval`)."""
        self._wake.set()

    def start_healing(self) -> None:
        """Retry in the background until prepared; a no-op once ready or already retrying."""
        if self.ready or self._task is not None:
            return
        self._task = asyncio.create_task(self._heal(), name=f"prepare-{self.vendor}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _heal(self) -> None:
        pause = self._min_interval
        while not await self.attempt():
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=pause)
                # Poked: wait out what is left of the minimum interval, not the whole pause.
                since = self._clock() - (self._last_attempt or 0.0)
                await asyncio.sleep(max(0.0, self._min_interval - since))
            except TimeoutError:
                pass
            pause = min(self._max_interval, pause * 2)
