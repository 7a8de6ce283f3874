"""Polls of a task whose callbacks were lost are spaced so that a finished job is seen well
inside the time its vendor keeps the result (issue 16.4): Replicate an hour, fal 6 minutes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from lifecycle.reconcile import MAX_POLL_GAP, next_poll_delay, poll_cap
from vendors.fal import FalAdapter
from vendors.midjourney_proxy import MidjourneyProxyAdapter
from vendors.replicate import ReplicateAdapter


@pytest.mark.parametrize(
    ("adapter", "retention"),
    [(ReplicateAdapter, 3600.0), (FalAdapter, 360.0), (MidjourneyProxyAdapter, None)],
)
def test_each_adapter_says_how_long_its_vendor_keeps_results(
    adapter: Any, retention: float | None
) -> None:
    assert adapter.result_retention == retention


@pytest.mark.parametrize("quiet", [0.0, 30.0, 600.0, 3600.0, 86400.0])
@pytest.mark.parametrize("poll_after", [15.0, 600.0])
def test_no_two_polls_of_a_fal_task_are_further_apart_than_a_third_of_its_window(
    quiet: float, poll_after: float
) -> None:
    rng = random.Random(1)
    cap = poll_cap(FalAdapter.result_retention)
    assert cap == 120.0
    delays = [next_poll_delay(quiet, poll_after=poll_after, rng=rng, cap=cap) for _ in range(1000)]
    assert max(delays) <= 120.0, "even with jitter, and a long TASKHOOK_POLL_AFTER"


def test_vendors_that_keep_results_are_polled_at_most_five_minutes_apart() -> None:
    rng = random.Random(2)
    assert poll_cap(None) == MAX_POLL_GAP == poll_cap(ReplicateAdapter.result_retention) == 300
    assert max(next_poll_delay(86400, poll_after=15, rng=rng) for _ in range(1000)) <= 300


def test_a_quiet_task_is_still_asked_less_often_as_time_passes() -> None:
    rng = random.Random(3)
    early = next_poll_delay(20, poll_after=15, rng=rng)
    late = next_poll_delay(500, poll_after=15, rng=rng)
    assert early < late
