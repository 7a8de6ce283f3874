"""Exponential backoff with jitter: bounds, growth, cap, floor, and seeded determinism."""

from __future__ import annotations

import random

import pytest

from common.backoff import backoff_delay


class Fixed(random.Random):
    """A Random whose draws are always `value`: pins the jitter to one end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def ceiling(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    return min(cap, base * 2.0 ** (attempt - 1))


@pytest.mark.parametrize("attempt", range(1, 16))
@pytest.mark.parametrize(("base", "cap"), [(1.0, 300.0), (0.5, 60.0), (2.0, 10.0)])
def test_always_within_half_ceiling_to_ceiling(attempt: int, base: float, cap: float) -> None:
    top = ceiling(attempt, base, cap)
    for seed in range(50):
        delay = backoff_delay(attempt, rng=random.Random(seed), base=base, cap=cap)
        assert top / 2 <= delay <= top, (seed, delay)


@pytest.mark.parametrize(("attempt", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0)])
def test_the_extremes_of_the_jitter(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, rng=Fixed(0.0)) == expected / 2
    assert backoff_delay(attempt, rng=Fixed(1.0)) == expected


def test_grows_with_attempt() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(attempt, rng=rng) for attempt in range(1, 9)]
    # each ceiling doubles, so the next floor is the previous ceiling: never smaller
    assert delays == sorted(delays)
    assert delays[-1] > 8 * delays[0]
    means = [
        sum(backoff_delay(a, rng=random.Random(s)) for s in range(200)) / 200 for a in (1, 2, 3)
    ]
    assert means[0] < means[1] < means[2]


def test_is_capped() -> None:
    for attempt in (10, 11, 20, 60):  # 2 ** 9 = 512 is the first ceiling over 300
        for seed in range(20):
            delay = backoff_delay(attempt, rng=random.Random(seed), cap=300.0)
            assert 150.0 <= delay <= 300.0
    assert backoff_delay(12, rng=Fixed(1.0), cap=60.0) == 60.0
    assert backoff_delay(12, rng=Fixed(0.0), cap=60.0) == 30.0


def test_base_scales_the_ceiling() -> None:
    assert backoff_delay(3, rng=Fixed(1.0), base=0.25) == 1.0
    assert backoff_delay(1, rng=Fixed(1.0), base=5.0) == 5.0


def test_at_least_raises_the_floor() -> None:
    assert backoff_delay(1, rng=Fixed(0.0), at_least=7.0) == 7.0
    assert backoff_delay(1, rng=Fixed(1.0), at_least=7.0) == 7.0
    assert backoff_delay(20, rng=Fixed(1.0), cap=60.0, at_least=120.0) == 120.0


def test_a_smaller_at_least_changes_nothing() -> None:
    for seed in range(10):
        plain = backoff_delay(4, rng=random.Random(seed))
        floored = backoff_delay(4, rng=random.Random(seed), at_least=0.5)
        assert floored == plain
    assert backoff_delay(4, rng=Fixed(0.0), at_least=None) == 4.0
    assert backoff_delay(4, rng=Fixed(0.0), at_least=0.0) == 4.0


def test_same_seed_same_delay() -> None:
    assert backoff_delay(5, rng=random.Random(42)) == backoff_delay(5, rng=random.Random(42))


def test_jitter_differs_between_seeds() -> None:
    delays = {backoff_delay(5, rng=random.Random(seed)) for seed in range(20)}
    assert len(delays) == 20
    assert backoff_delay(5, rng=random.Random(1)) != backoff_delay(5, rng=random.Random(2))


def test_attempt_zero_is_treated_as_the_first() -> None:
    assert backoff_delay(0, rng=Fixed(1.0)) == 1.0


def test_a_huge_attempt_is_still_capped() -> None:
    delay = backoff_delay(2000, rng=random.Random(1), cap=60.0)
    assert 30.0 <= delay <= 60.0
