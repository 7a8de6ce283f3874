"""Delivering webhook messages the way Replicate does, plus the faults we inject.

Two layers:

* :class:`WebhookSender` performs one message's delivery: signing (each dialect its own way),
  the vendor's own retry schedule (``Dialect.retry_delays``: Replicate retries only a
  prediction's final webhook, also after a 4xx, for about a minute; fal retries its one webhook
  10 times over 2 hours; midjourney-proxy never retries), scaled by ``time_scale``, and the
  per-message faults — drop, delay, a junk copy with a forged signature sent first, a
  duplicate copy sent after.
* :class:`Courier` is one prediction's outbox. It delivers that prediction's messages one at a
  time in the order they were produced, so without ``reorder`` a receiver sees ``start`` … ``logs``
  … ``completed`` in order even with delays. With ``reorder`` it holds them until the
  prediction is finished and releases them as a shuffled batch.

Each message is serialised once; retries and duplicates resend the same bytes under the same
``webhook-id`` with a fresh timestamp and signature, exactly as a real sender would.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from simulator.config import SimulatorConfig
from simulator.signing import new_webhook_id
from simulator.stats import Stats

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
# (message id, body, forged) -> headers of one send; each vendor dialect signs its own way.
Signer = Callable[[str, bytes, bool], dict[str, str]]
# event -> the vendor's waits (real seconds) before each resend of a refused message.
RetrySchedule = Callable[[str], tuple[float, ...]]


@dataclass
class Message:
    """One webhook message: an event and the prediction JSON at that moment."""

    event: str
    body: bytes
    webhook_id: str = field(default_factory=new_webhook_id)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WebhookSender:
    """Shared by all couriers: holds the HTTP client, the secret and the counters."""

    def __init__(
        self, config: SimulatorConfig, stats: Stats, client: Callable[[], httpx.AsyncClient]
    ) -> None:
        self._config = config
        self._stats = stats
        self._client = client

    async def deliver(
        self,
        url: str,
        message: Message,
        rng: random.Random,
        sign: Signer,
        delays: tuple[float, ...] = (),
    ) -> None:
        """Deliver one message, applying this message's share of the configured faults;
        `delays` are the vendor's waits before each resend (none: sent once)."""
        cfg = self._config
        # Draw every roll up front so the RNG stream per message is the same whatever the
        # probabilities are: the same seed gives the same decisions across configurations.
        drop_roll, delay_roll, junk_roll, dup_roll = (rng.random() for _ in range(4))
        if drop_roll < cfg.drop:
            self._stats.dropped += 1
            return
        if cfg.delay > 0:
            await asyncio.sleep(delay_roll * cfg.delay)
        if junk_roll < cfg.bad_signature:
            self._stats.bad_signature += 1
            await self._post(url, message, sign, forged=True)
        await self._deliver_with_retries(url, message, sign, delays)
        if dup_roll < cfg.duplicate:
            self._stats.duplicated += 1
            await self._deliver_with_retries(url, message, sign, delays)

    async def _deliver_with_retries(
        self, url: str, message: Message, sign: Signer, delays: tuple[float, ...]
    ) -> None:
        """Send a genuine copy; while it is refused (no answer, or any status but 2xx: the
        vendors retry after a 4xx too), resend after each of `delays`, scaled."""
        for attempt in range(len(delays) + 1):
            if attempt:
                self._stats.retried += 1
                await asyncio.sleep(delays[attempt - 1] * self._config.time_scale)
            self._stats.sent += 1
            status = await self._post(url, message, sign, forged=False)
            if status is not None and 200 <= status < 300:
                self._stats.delivered += 1
                return
        self._stats.failed_deliveries += 1

    async def _post(self, url: str, message: Message, sign: Signer, *, forged: bool) -> int | None:
        """One POST; the status code, or None when the request never got an answer."""
        headers = sign(message.webhook_id, message.body, forged)
        try:
            response = await self._client().post(url, content=message.body, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.debug("webhook %s to %s failed: %r", message.webhook_id, url, exc)
            return None
        return response.status_code


class Courier:
    """The outbox of one prediction; see the module docstring for the ordering rules."""

    def __init__(
        self,
        *,
        url: str,
        sender: WebhookSender,
        rng: random.Random,
        reorder: bool,
        spawn: Spawn,
        sign: Signer,
        retries: RetrySchedule = lambda event: (),
    ) -> None:
        self._url = url
        self._sender = sender
        self._sign = sign
        self._retries = retries
        # Fault rolls and the shuffle use separate streams: the worker and whoever closes the
        # courier run concurrently, and interleaved draws would break reproducibility.
        self._fault_rng = random.Random(rng.getrandbits(64))
        self._shuffle_rng = random.Random(rng.getrandbits(64))
        self._reorder = reorder
        self._spawn = spawn
        self._held: list[Message] = []
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._released: deque[Message] = deque()  # released, not finished, in queue order
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def post(self, event: str, body: bytes) -> None:
        """Queue a message produced now (held back when reordering)."""
        if self._closed:
            raise RuntimeError("courier is closed")
        message = Message(event=event, body=body)
        if self._reorder:
            self._held.append(message)
        else:
            self._release([message])

    def close(self) -> None:
        """No more messages: release a held batch shuffled, and let the worker finish."""
        if self._closed:
            return
        self._closed = True
        self._release_held()
        self._queue.put_nowait(None)

    async def flush(self) -> None:
        """Wait until every message produced so far has been sent, dropped or given up on.

        Held messages are released (in production order) first: this is what ``early`` uses to
        put the ``start`` webhook on the wire before the create call returns.
        """
        self._release_held()
        pending = [m.done for m in self._released if not m.done.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _release_held(self) -> None:
        batch, self._held = self._held, []
        if self._closed:
            self._shuffle_rng.shuffle(batch)
        self._release(batch)

    def _release(self, messages: list[Message]) -> None:
        if not messages:
            return
        for message in messages:
            self._released.append(message)
            self._queue.put_nowait(message)
        if self._worker is None:
            self._worker = self._spawn(self._run())

    async def _run(self) -> None:
        """Deliver released messages one after another until closed."""
        try:
            while (message := await self._queue.get()) is not None:
                try:
                    await self._sender.deliver(
                        self._url,
                        message,
                        self._fault_rng,
                        self._sign,
                        self._retries(message.event),
                    )
                except Exception:
                    log.exception("webhook %s could not be delivered", message.webhook_id)
                self._released.popleft()
                message.done.set_result(None)
        finally:
            # Cancelled (app shutdown): nobody may wait forever on an unsent message.
            for message in self._released:
                if not message.done.done():
                    message.done.cancel()
            self._released.clear()
