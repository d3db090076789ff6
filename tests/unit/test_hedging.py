"""The bank SDK's hedge policy: how long a replica gets to take a call, and how often hedges may be sent."""

from __future__ import annotations

import pytest

from creditnet_bank.hedging import (
    FACTOR,
    FIRST_DELAY,
    FLOOR,
    LATE_FLOOR,
    MAX_TOKENS,
    TOKEN_RATIO,
    HedgePolicy,
)


def test_before_any_call_was_taken_the_wait_is_the_first_delay_within_a_quarter_of_the_budget() -> None:
    policy = HedgePolicy()
    assert policy.delay(100.0) == FIRST_DELAY
    assert policy.delay(2.0) == 0.5
    assert policy.delay(-1.0) == 0.0


def test_the_wait_follows_how_long_calls_have_lately_taken_to_be_accepted() -> None:
    policy = HedgePolicy()
    for _ in range(20):
        policy.accepted(0.001)
    # Fast acceptances: the floor, not FACTOR times a millisecond.
    assert policy.delay(100.0) == FLOOR
    for _ in range(32):
        policy.accepted(0.3)
    assert policy.delay(100.0) == pytest.approx(FACTOR * 0.3)
    # The 90th percentile: one slow acceptance in the window does not move it.
    policy.accepted(20.0)
    assert policy.delay(100.0) == pytest.approx(FACTOR * 0.3)
    # A long budget's quarter caps it.
    assert policy.delay(2.0) == 0.5


def test_hedges_are_throttled_once_the_tokens_are_spent_and_earned_back_by_calls_answered_alone() -> None:
    policy = HedgePolicy()
    spent = 0
    while policy.spend():
        spent += 1
    assert spent == MAX_TOKENS
    assert not policy.spend()
    for _ in range(round(1 / TOKEN_RATIO) - 1):
        policy.answered_without_hedge()
    assert not policy.spend()
    policy.answered_without_hedge()
    assert policy.spend()
    assert not policy.spend()


def test_the_floor_and_first_delay_can_be_set() -> None:
    policy = HedgePolicy(first_delay=3.0, floor=0.05)
    assert policy.delay(100.0) == 3.0
    policy.accepted(0.001)
    assert policy.delay(100.0) == 0.05


def test_a_replica_that_took_the_call_gets_factor_times_the_usual_answer_time_within_half_the_budget() -> (
    None
):
    policy = HedgePolicy()
    # Nothing answered yet: half the budget.
    assert policy.late(10.0) == 5.0
    for _ in range(32):
        policy.answered(0.05)
    assert policy.late(10.0) == LATE_FLOOR
    for _ in range(32):
        policy.answered(1.0)
    assert policy.late(10.0) == pytest.approx(FACTOR * 1.0)
    assert policy.late(4.0) == 2.0
