"""The benchmark harness's load generator and its reading of issue 11's targets."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from creditnet_devkit.bench import targets
from creditnet_devkit.bench.load import SHED_BACKOFF, Shed, Window, one_at_a_time, saturate, supply_for
from creditnet_devkit.bench.throughput import best

# A call that takes this long, whatever the load: what the generator should report.
SERVICE_S = 0.02


async def service(_i: int) -> object:
    await asyncio.sleep(SERVICE_S)
    return None


async def test_a_saturated_level_reports_in_flight_over_service_time() -> None:
    r = await saturate(service, 4, Window(0.1, 0.5))
    # 4 callers, 20 ms each: 200 calls/s; event-loop timer slack only lowers it.
    assert 120 < r["per_second"] <= 205
    assert r["calls"] == pytest.approx(r["per_second"] * r["window_s"])
    assert SERVICE_S * 1000 <= r["p50_ms"] <= r["p99_ms"] < 100
    assert r["window_s"] == pytest.approx(0.5, abs=0.05)
    assert not r["supply_ran_out"] and r["shed"] == 0


async def test_calls_slower_than_the_window_are_still_measured() -> None:
    async def slow(_i: int) -> object:
        await asyncio.sleep(0.25)
        return None

    # Warm-up and window together are shorter than one call: the window waits
    # for every caller's first answer, then for answers inside it.
    r = await saturate(slow, 2, Window(0.05, 0.1))
    assert r["calls"] >= 2 and r["p50_ms"] >= 250
    assert 0.1 <= r["window_s"] < 0.1 * 5 + 0.1


async def test_the_window_ends_when_the_supply_of_calls_runs_out() -> None:
    seen: list[int] = []

    async def once_each(i: int) -> object:
        seen.append(i)
        return await service(i)

    r = await saturate(once_each, 2, Window(0.05, 10.0), supply=30)
    assert sorted(seen) == list(range(30))  # each request used exactly once
    assert r["supply_ran_out"]
    assert r["window_s"] < 1.0  # not the 10 s asked for
    assert 0 < r["calls"] <= 30


async def test_shed_calls_are_counted_apart_and_their_callers_back_off() -> None:
    async def half_shed(i: int) -> object:
        await asyncio.sleep(SERVICE_S)
        return Shed("bound reached") if i % 2 else None

    r = await saturate(half_shed, 2, Window(0.0, 1.0))
    assert r["shed"] > 0 and r["shed_reason"] == "bound reached"
    # Each shed call costs its caller the back-off (0.2 s): about 16 calls in the
    # second, where two callers without it would make 100.
    assert 8 < r["calls"] + r["shed"] < 30
    assert r["per_second"] == pytest.approx(r["calls"] / r["window_s"])


async def test_a_failing_call_fails_the_measurement() -> None:
    async def broken(i: int) -> object:
        if i == 3:
            raise RuntimeError("section failed")
        return await service(i)

    with pytest.raises(RuntimeError, match="section failed"):
        await saturate(broken, 2, Window(0.0, 0.5))


async def test_nothing_completed_in_the_window_is_an_error_not_a_zero() -> None:
    async def always_shed(_i: int) -> object:
        return Shed("overloaded")

    with pytest.raises(RuntimeError, match=r"no call completed.*overloaded"):
        await saturate(always_shed, 2, Window(0.0, 0.3))


async def test_the_meter_reads_the_measured_window_only() -> None:
    counter = itertools.count()
    ticks = 0

    async def ticking(i: int) -> object:
        nonlocal ticks
        ticks = next(counter)
        return await service(i)

    r = await saturate(ticking, 2, Window(0.3, 0.3), meter=lambda: float(ticks))
    # About as many ticks as measured calls, not the warm-up's too.
    assert r["metered"] == pytest.approx(r["calls"], abs=4)


async def test_unloaded_latency_is_one_call_at_a_time() -> None:
    in_flight = 0
    most = 0

    async def counted(_i: int) -> object:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return None

    r = await one_at_a_time(counted, 10, warmup=2)
    assert most == 1 and r["calls"] == 10 and r["p50_ms"] >= 5


def test_presigned_supply_covers_the_previous_rate_or_a_shedding_level() -> None:
    w = Window(2.0, 8.0)
    assert supply_for(None, w, 3000, 8) == 3000
    assert supply_for(100.0, w, 3000, 8) == max(750, 1501, int(8 * 10 / SHED_BACKOFF))
    assert supply_for(1000.0, w, 3000, 8) == 15001
    assert supply_for(1.0, w, 3000, 128) == int(128 * 10 / SHED_BACKOFF)


def _level(in_flight: int, rate: float, p99: float = 10.0) -> dict[str, Any]:
    return {"in_flight": in_flight, "per_second": rate, "p50_ms": p99 / 2, "p99_ms": p99}


def test_ratios_compare_each_series_at_its_own_saturation() -> None:
    r = {
        "echo": [_level(8, 2000), _level(32, 4000), _level(128, 3000)],
        "node": [_level(8, 300), _level(32, 600), _level(128, 500)],
        "node_without_chain": [_level(8, 700), _level(32, 800), _level(128, 750)],
        "fanout": [_level(8, 400), _level(32, 500), _level(128, 450)],
        "federated": [_level(8, 150), _level(32, 200), _level(128, 20)],
        "node_16": _level(16, 500, p99=40.0),
        "federated_16": _level(16, 180, p99=100.0),
        "federated_unloaded": {"p50_ms": 24.0},
        "ingest": {"store_ingest_per_second": 70.0, "raw_executemany_per_second": 100.0},
    }
    assert best(r["echo"])["in_flight"] == 32
    head = targets.headline(r)
    assert head == pytest.approx(
        {
            "node_vs_echo": 600 / 4000,
            "chain_cost": 1 - 600 / 800,
            "federated_p99_vs_single": 100 / 40,
            "federated_vs_fanout": 200 / 500,
            "federated_p50_unloaded_ms": 24.0,
            "ingest_vs_raw": 0.70,
        }
    )
    checked = targets.check(head)
    assert set(checked) == {t.key for t in targets.TARGETS} == set(head)
    # A value on its bound meets it; every other verdict follows the bound's direction.
    assert {k: v["status"] for k, v in checked.items()} == {
        "node_vs_echo": "met",
        "chain_cost": "met",
        "federated_p99_vs_single": "missed",
        "federated_vs_fanout": "met",
        "federated_p50_unloaded_ms": "met",
        "ingest_vs_raw": "met",
    }
    assert checked["chain_cost"]["target"] == "<= 0.25" and checked["node_vs_echo"]["bound"] == 0.15
