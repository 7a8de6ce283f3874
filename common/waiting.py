"""The idle wait of a claiming loop (the worker, the webhook sender): woken by a NOTIFY, by a
request to stop, or by the idle poll's timeout, which covers a NOTIFY lost with a connection."""

from __future__ import annotations

import asyncio


async def until_woken(wake: asyncio.Event, stop: asyncio.Event, *, timeout: float) -> None:
    """Return when `wake` or `stop` is set, or after `timeout` seconds, whichever is first."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
