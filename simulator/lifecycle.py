"""The simulated vendor itself: predictions, their lifecycles and their webhooks.

:class:`Simulator` owns every prediction and every background task. Each prediction runs as
one asyncio task that walks ``starting`` → ``processing`` (a tqdm line of logs per step) →
``succeeded`` / ``failed``, spread over ``job_seconds``, emitting Replicate's ``start``,
``logs``, ``output`` and ``completed`` events on the way. All tasks are cancelled on
:meth:`Simulator.stop` so shutting the app down never leaves work behind.

Randomness: one seeded root RNG feeds an API-fault stream and a per-prediction stream (drawn
at create time, in request order), so a sequential test with a fixed seed sees the same
decisions on every run even though lifecycles interleave.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

import httpx

from simulator.config import SimulatorConfig
from simulator.dialect import Dialect, ReplicateDialect
from simulator.predictions import EventKind, Prediction, Status, tqdm_line
from simulator.stats import Stats
from simulator.validation import FAIL_WORD, CreateRequest
from simulator.webhooks import Courier, WebhookSender

log = logging.getLogger(__name__)

RANDOM_FAILURE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 22.19 GiB total capacity) "
    "[simulated failure]"
)
REQUESTED_FAILURE = f"Prediction failed: the prompt asked for it ({FAIL_WORD})"


class Simulator:
    """State and behaviour behind the HTTP routes (which live in ``app.py``)."""

    def __init__(self, config: SimulatorConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.stats = Stats()
        root = random.Random(config.seed)
        self._api_rng = random.Random(root.getrandbits(64))
        self._prediction_rng = random.Random(root.getrandbits(64))
        self._predictions: dict[str, Prediction] = {}
        self._couriers: dict[str, Courier] = {}
        self._lifecycles: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Timers of held jobs: waiting is not work, so `wait_idle` does not wait for them.
        self._holds: dict[str, asyncio.Task[None]] = {}
        self._given_client = client
        self._own_client: httpx.AsyncClient | None = None
        self._sender = WebhookSender(config, self.stats, self._http)
        self.replicate = ReplicateDialect(config.webhook_secret)

    # -- app lifespan -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the webhook HTTP client unless the caller supplied one."""
        if self._given_client is None and self._own_client is None:
            # Keep every connection alive: with httpx's default of 20, a backlog of webhooks
            # opened a new TCP connection per delivery (seen in the chaos run).
            self._own_client = httpx.AsyncClient(
                timeout=10,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
            )

    async def stop(self) -> None:
        """Cancel every lifecycle and delivery, then close our own client."""
        for timer in self._holds.values():
            timer.cancel()
        self._holds.clear()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._lifecycles.clear()
        self._couriers.clear()
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None

    async def wait_idle(self) -> None:
        """Wait until no lifecycle runs and no webhook is pending (handy for tests)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def _http(self) -> httpx.AsyncClient:
        client = self._given_client or self._own_client
        if client is None:
            raise RuntimeError("simulator not started: run the app's lifespan or pass a client")
        return client

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("simulator task crashed", exc_info=exc)

    # -- API faults ---------------------------------------------------------------------

    def api_fault(self) -> int | None:
        """503 or 429 for a fraction ``error_rate`` of API calls, else None."""
        roll, kind = self._api_rng.random(), self._api_rng.random()
        if roll >= self.config.error_rate:
            return None
        if kind < 0.5:
            self.stats.api_errors_503 += 1
            return 503
        self.stats.api_errors_429 += 1
        return 429

    def lose_answer(self) -> bool:
        """Whether this create's answer is lost (``lost_answers``), counted."""
        if self.config.lost_answers <= 0 or self._api_rng.random() >= self.config.lost_answers:
            return False
        self.stats.lost_answers += 1
        return True

    # -- predictions --------------------------------------------------------------------

    def get(self, prediction_id: str) -> Prediction | None:
        """The prediction, or None if this simulator never created it."""
        return self._predictions.get(prediction_id)

    def newest_first(self, dialect: Dialect) -> list[Prediction]:
        """One dialect's jobs, the most recent first (Replicate's list order)."""
        jobs = [p for p in self._predictions.values() if (p.dialect or self.replicate) is dialect]
        return jobs[::-1]

    async def wait_terminal(self, prediction: Prediction, *, timeout: float) -> None:
        """Until the job has ended or `timeout` seconds passed (Replicate's `Prefer: wait`)."""
        lifecycle = self._lifecycles.get(prediction.id)
        if lifecycle is not None and not prediction.terminal:
            await asyncio.wait([lifecycle], timeout=timeout)

    async def create(
        self,
        request: CreateRequest,
        *,
        base_url: str,
        dialect: Dialect | None = None,
        retention: float | None = None,
        inline_outputs: bool = False,
        hold_for: float | None = None,
    ) -> Prediction:
        """Register a prediction, send ``start`` and launch its lifecycle.

        There is no idempotency key: none of the vendors has one, so a create sent twice
        makes two jobs, both billed. ``retention``: seconds (real, scaled here) after the job
        ends that its results stay; ``inline_outputs``: outputs as data: URIs; ``hold_for``:
        the job waits (no webhook, no progress) until :meth:`release`, and is canceled if that
        does not come within so many (real, scaled here) seconds.

        With ``early`` the call returns only after the webhooks produced so far (``start``,
        or everything when ``job_seconds == 0``) were delivered: callbacks that beat the
        create response are a real race our receiver must handle.
        """
        cfg = self.config
        dialect = dialect or self.replicate
        rng = random.Random(self._prediction_rng.getrandbits(64))
        will_fail = rng.random() < cfg.fail or FAIL_WORD in request.prompt
        prediction = Prediction(
            model=request.model,
            version=request.version,
            input=request.input,
            webhook=request.webhook,
            events_filter=request.events_filter,
            base_url=base_url,
            num_outputs=request.num_outputs,
            will_fail=will_fail,
            id=dialect.new_id(),
            dialect=dialect,
            retention=None if retention is None else cfg.scaled(retention),
            inline_outputs=inline_outputs,
        )
        self._predictions[prediction.id] = prediction
        self.stats.predictions_created += 1
        courier: Courier | None = None
        if prediction.webhook is not None:
            courier = Courier(
                url=prediction.webhook,
                sender=self._sender,
                rng=rng,
                reorder=cfg.reorder,
                spawn=self._spawn,
                sign=lambda message_id, body, forged: dialect.webhook_headers(
                    message_id, body, forged=forged
                ),
                retries=dialect.retry_delays,  # type: ignore[arg-type]
            )
            self._couriers[prediction.id] = courier
        if hold_for is not None:
            prediction.held = True
            timer = asyncio.create_task(self._expire_hold(prediction, cfg.scaled(hold_for)))
            self._holds[prediction.id] = timer
            return prediction
        await self._launch(prediction)
        return prediction

    async def release(self, prediction: Prediction) -> bool:
        """Start a held job; False when it was not waiting (started, ended or never held)."""
        if not prediction.held or prediction.terminal:
            return False
        prediction.held = False
        timer = self._holds.pop(prediction.id, None)
        if timer is not None:
            timer.cancel()
        await self._launch(prediction)
        return True

    async def _expire_hold(self, prediction: Prediction, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._holds.pop(prediction.id, None)
        if prediction.held and not prediction.terminal:
            prediction.held = False
            self._finish(prediction, "canceled", error="the confirmation window closed")

    async def _launch(self, prediction: Prediction) -> None:
        """Send ``start`` and run the lifecycle (see ``early`` in :meth:`create`)."""
        cfg = self.config
        self._emit(prediction, "start")
        lifecycle = self._spawn(self._run(prediction))
        self._lifecycles[prediction.id] = lifecycle
        courier = self._couriers.get(prediction.id)
        if cfg.early:
            if cfg.job_seconds == 0:
                await asyncio.wait([lifecycle])
            if courier is not None:
                await courier.flush()

    def cancel(self, prediction_id: str) -> Prediction | None:
        """Cancel a running prediction (no-op when already terminal); None if unknown."""
        prediction = self._predictions.get(prediction_id)
        if prediction is None:
            return None
        if not prediction.terminal:
            lifecycle = self._lifecycles.pop(prediction_id, None)
            if lifecycle is not None:
                lifecycle.cancel()
            self._finish(prediction, "canceled")
        return prediction

    async def _run(self, prediction: Prediction) -> None:
        """One prediction's lifecycle; every await is a point where cancel may land."""
        cfg = self.config
        pause = cfg.job_seconds / (cfg.steps + 1)
        await asyncio.sleep(pause)
        if prediction.terminal:
            return
        prediction.start_processing()
        began = time.monotonic()
        # A failing prediction crashes halfway: it logs half its steps, then stays silent.
        logged_steps = (cfg.steps + 1) // 2 if prediction.will_fail else cfg.steps
        for step in range(1, cfg.steps + 1):
            await asyncio.sleep(pause)
            if prediction.terminal:
                return
            if step <= logged_steps:
                prediction.progress = round(100 * step / cfg.steps)
                prediction.logs += tqdm_line(step, cfg.steps, time.monotonic() - began)
                self._emit(prediction, "logs")
        if prediction.will_fail:
            error = REQUESTED_FAILURE if FAIL_WORD in prediction.prompt else RANDOM_FAILURE
            self._finish(prediction, "failed", error=error)
            return
        prediction.output = [prediction.output_ref(i) for i in range(prediction.num_outputs)]
        self._emit(prediction, "output")
        self._finish(prediction, "succeeded")

    def _finish(self, prediction: Prediction, status: Status, *, error: str | None = None) -> None:
        prediction.finish(status, error=error)
        if prediction.webhook is not None:
            prediction.webhook_completed = prediction.completed_at
        self.stats.final_statuses[status] += 1
        self._lifecycles.pop(prediction.id, None)
        self._emit(prediction, "completed")
        courier = self._couriers.pop(prediction.id, None)
        if courier is not None:
            courier.close()

    def _emit(self, prediction: Prediction, event: EventKind) -> None:
        """Snapshot the prediction into a webhook message, if it wants this event."""
        courier = self._couriers.get(prediction.id)
        if courier is None:
            return
        body = (prediction.dialect or self.replicate).webhook_body(prediction, event)
        if body is None:
            return
        self.stats.messages += 1
        courier.post(event, body)
