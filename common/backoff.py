"""Exponential backoff with full jitter, so retries from many tasks do not arrive in step."""

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
