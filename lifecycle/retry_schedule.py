"""When a client's webhook that failed is tried again.

The default follows Svix's schedule (https://docs.svix.com/retries): after the first attempt
fails, again 5 s later, then 5 min, 30 min, 2 h, 5 h, 10 h and 10 h: eight attempts over about
27.7 hours. Each delay is stretched or shrunk by up to 20 % at random, so that the events of an
endpoint that was down do not all come back at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common.settings import WEBHOOK_RETRY_SCHEDULE

DEFAULT_DELAYS: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
JITTER = 0.2


@dataclass(frozen=True)
class RetrySchedule:
    delays: tuple[float, ...] = DEFAULT_DELAYS

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float | None:
        """Seconds until the next try after attempt number `attempt` (from 1) failed; None
        when that was the last."""
        if attempt < 1 or attempt > len(self.delays):
            return None
        spread = (rng or random).uniform(1 - JITTER, 1 + JITTER)
        return self.delays[attempt - 1] * spread
