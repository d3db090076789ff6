"""Which witnesses a log asks, and when: the hedging and backoff rules of `witness.hedge`."""

from __future__ import annotations

import pytest

from creditnet.witness.hedge import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    HEDGE_FACTOR,
    HEDGE_MAX,
    HEDGE_MIN,
    UNKNOWN_LATENCY,
    WitnessHealth,
    hedge_delay,
    plan,
)

NAMES = ["310000", "320100", "330100", "330400", "national"]


def rig() -> dict[str, WitnessHealth]:
    return {n: WitnessHealth() for n in NAMES}


def planned(
    health: dict[str, WitnessHealth], rotation: int = 0, now: float = 100.0
) -> tuple[list[str], list[str]]:
    return plan(NAMES, health.__getitem__, 3, rotation, now)


def test_healthy_witnesses_are_asked_a_quorum_at_a_time_in_rotation() -> None:
    health = rig()
    assert planned(health, 0) == (NAMES[:3], NAMES[3:])
    # Rotation keeps every witness up with the log.
    first, spares = planned(health, 3)
    assert first == ["330400", "national", "310000"] and spares == ["320100", "330100"]


def test_a_witness_that_failed_is_asked_last_while_it_rests() -> None:
    health = rig()
    health["310000"].asked()
    health["310000"].failed(now=100.0)
    first, spares = planned(health, 0, now=100.1)
    assert "310000" not in first
    assert first == ["320100", "330100", "330400"] and spares == ["national", "310000"]


def test_a_rested_witness_is_probed_on_top_of_the_quorum_not_instead_of_it() -> None:
    health = rig()
    health["310000"].asked()
    health["310000"].failed(now=100.0)
    first, spares = planned(health, 0, now=100.0 + BACKOFF_BASE)
    # Three healthy witnesses are still asked: the probe's answer counts
    # towards the quorum but nothing waits for it.
    assert first == ["320100", "330100", "330400", "310000"] and spares == ["national"]


def test_a_failed_witness_with_a_call_outstanding_is_not_asked_again() -> None:
    health = rig()
    health["310000"].asked()
    health["310000"].failed(now=100.0)
    health["310000"].asked()  # the probe, still outstanding
    first, spares = planned(health, 0, now=200.0)
    assert "310000" not in first + spares


def test_a_healthy_witness_still_busy_is_a_spare_behind_the_idle_ones() -> None:
    health = rig()
    health["310000"].asked()  # e.g. frozen since: its call has not come back yet
    first, spares = planned(health, 0)
    assert first == ["320100", "330100", "330400"] and spares == ["national", "310000"]


def test_with_too_few_idle_witnesses_the_busy_and_resting_ones_make_up_the_quorum() -> None:
    health = rig()
    for n in ("310000", "320100"):
        health[n].asked()
        health[n].failed(now=100.0)
    health["330100"].asked()
    first, spares = planned(health, 0, now=100.1)
    assert first == ["330400", "national", "330100"]
    assert sorted(spares) == ["310000", "320100"]


def test_backoff_doubles_per_failure_up_to_a_bound_and_an_answer_resets_it() -> None:
    h = WitnessHealth()
    rests = []
    for _ in range(8):
        h.asked()
        h.failed(now=0.0)
        rests.append(h.retry_at)
    assert rests[:2] == [BACKOFF_BASE, 2 * BACKOFF_BASE]
    assert rests == sorted(rests) and rests[-1] == BACKOFF_MAX
    h.asked()
    h.answered(0.01)
    assert h.healthy and not h.busy and h.retry_at == 0.0


def test_the_hedge_delay_follows_the_slowest_usual_latency_within_bounds() -> None:
    assert hedge_delay([]) == HEDGE_FACTOR * UNKNOWN_LATENCY
    fast, slow = WitnessHealth(latency=0.001), WitnessHealth(latency=0.03)
    assert hedge_delay([fast]) == HEDGE_MIN
    assert hedge_delay([fast, slow]) == pytest.approx(HEDGE_FACTOR * 0.03)
    assert hedge_delay([WitnessHealth(latency=10.0)]) == HEDGE_MAX
    # A failed witness's latency says nothing about the others.
    broken = WitnessHealth(latency=1.0, failures=2)
    assert hedge_delay([fast, broken]) == HEDGE_MIN


def test_latency_is_a_moving_average_of_answers() -> None:
    h = WitnessHealth()
    h.asked()
    h.answered(0.1)
    assert h.latency == pytest.approx(0.1)
    for _ in range(50):
        h.asked()
        h.answered(0.01)
    assert h.latency == pytest.approx(0.01, abs=1e-4)


def test_a_call_overtaken_by_a_newer_checkpoint_is_not_held_against_the_witness() -> None:
    h = WitnessHealth(latency=0.01)
    h.asked()
    h.asked()
    h.settled()
    assert h.healthy and h.busy and h.latency == 0.01
    h.answered(0.01)
    assert h.healthy and not h.busy
