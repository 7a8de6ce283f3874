"""The state machine's rules, checked without a database."""

from __future__ import annotations

import itertools

from common.states import (
    ACTIVE,
    ALLOWED_FROM,
    CANCELABLE,
    SUCCEEDED,
    TERMINAL,
    TaskStatus,
    can_move,
    rank,
)


def test_terminal_states_appear_in_no_allowed_set() -> None:
    for target, sources in ALLOWED_FROM.items():
        assert not (sources & TERMINAL), target


def test_every_pair_moves_only_forward() -> None:
    for current, target in itertools.product(TaskStatus, TaskStatus):
        expected = current in ACTIVE and rank(target) > rank(current)
        if target is TaskStatus.CANCELED:
            expected = current in CANCELABLE
        assert can_move(current, target) is expected, (current, target)


def test_skip_ahead_is_allowed() -> None:
    assert can_move(TaskStatus.PENDING, TaskStatus.STORING)
    assert can_move(TaskStatus.SUBMITTED, TaskStatus.COMPLETED)


def test_failure_from_any_active_state_cancel_only_until_the_vendor_succeeded() -> None:
    for current in ACTIVE:
        assert can_move(current, TaskStatus.FAILED)
        assert can_move(current, TaskStatus.CANCELED) is (current not in SUCCEEDED)
    assert not can_move(TaskStatus.STORING, TaskStatus.CANCELED)


def test_nothing_moves_back_to_pending() -> None:
    assert TaskStatus.PENDING not in ALLOWED_FROM
