"""Exponential backoff with jitter, so retries from many tasks do not arrive in step.

"Equal jitter": the delay is drawn from the upper half of the exponential step, between
ceiling/2 and ceiling, so a retry never comes sooner than half the step (full jitter would
draw from 0 to ceiling)."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int,
    *,
    rng: random.Random,
    base: float = 1.0,
    cap: float = 300.0,
    at_least: float | None = None,
) -> float:
    ceiling = min(cap, base * 2 ** min(max(0, attempt - 1), 64))
    delay = ceiling / 2 + rng.random() * ceiling / 2
    return float(max(delay, at_least or 0.0))
