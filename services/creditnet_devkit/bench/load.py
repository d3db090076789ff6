"""Closed-loop load for the benchmarks: a fixed number of callers in flight,
each issuing its next call as soon as its last one returned.

:func:`saturate` runs one level of a sweep. It keeps `in_flight` callers busy
through a warm-up and then a measured window, without pausing between them,
so connections, caches and the servers' batching (group commit, witness
rounds) are in their steady state when the clock starts. The window opens
when the warm-up time is over and every caller has had an answer (at high
load one call can outlast the warm-up), and closes when it has lasted its
time and holds at least `MIN_WINDOW_CALLS` answers (or one per caller when
fewer are in flight). Throughput is the calls that completed inside the
window over the window's length; the latency percentiles are of those calls.
(A window waits for its answers `MAX_STRETCH` times its length at most.)

A call the server answered without doing the work (it shed the load: the
aggregator answers a city's section at once when its bound of calls pending
on that node is reached) returns :class:`Shed`; it is counted apart, not as
throughput, and its caller waits `SHED_BACKOFF` before its next call, as a
client honouring the server's pushback would, rather than turning the
shedding into a busy loop. When the supply of calls
(presigned queries, which a node accepts once each) runs out early, the
window ends there and the result says so.

:func:`drive` is the older count-based form: `total` calls with
`concurrency` in flight, timed from the first to the last.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from creditnet import query as query_mod
from creditnet.domain import City, Purpose
from creditnet.network import NetworkLayout
from creditnet.v2 import envelope_pb2

__all__ = [
    "MAX_STRETCH",
    "MIN_WINDOW_CALLS",
    "SHED_BACKOFF",
    "WARMUP",
    "Shed",
    "Window",
    "drive",
    "one_at_a_time",
    "percentiles",
    "presign",
    "saturate",
    "supply_for",
]

Call = Callable[[int], Awaitable[object]]
# Calls before a count-based measurement (`drive`).
WARMUP = 200
# A caller's pause after a shed call (see the module doc).
SHED_BACKOFF = 0.2
# Calls a measured window holds at least (fewer when fewer are in flight)…
MIN_WINDOW_CALLS = 32
# … unless it has lasted this many times its length.
MAX_STRETCH = 5.0


@dataclass(frozen=True, slots=True)
class Shed:
    """A call's outcome when the server answered without doing the work, and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class Window:
    """Seconds of warm-up, then seconds measured, at each level of a sweep."""

    warmup: float
    measure: float

    @property
    def total(self) -> float:
        return self.warmup + self.measure


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    """p50, p99 and mean of `latencies` (seconds), in milliseconds."""
    ordered = sorted(latencies)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


async def saturate(
    call: Call,
    in_flight: int,
    window: Window,
    supply: int | None = None,
    *,
    meter: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Keep `in_flight` calls going for `window`; `call(i)` gets i = 0, 1, … < `supply` (None: unbounded).

    Returns the rate and latencies of the calls completed in the measured
    window (see the module doc); a failing call fails the measurement. With
    `meter` (a counter such as CPU seconds), also how much it grew over the
    measured window, as ``metered``.
    """
    loop = asyncio.get_running_loop()
    warm_until = loop.time() + window.warmup
    enough = min(in_flight, MIN_WINDOW_CALLS)
    answered_once: set[int] = set()  # callers with a call answered (or shed) so far
    measure_from: float | None = None
    end: float | None = None
    exhausted = False
    readings: dict[str, float] = {}
    done: list[tuple[float, float]] = []  # (completed at, latency)
    shed: list[tuple[float, str]] = []  # (answered at, why)
    next_i = 0

    def mark(now: float) -> None:
        # The window opens once the warm-up is over and every caller has had an
        # answer, and closes once it has lasted `window.measure` and holds enough calls.
        nonlocal measure_from, end
        if end is not None:
            return
        if measure_from is None:
            if now >= warm_until and len(answered_once) == in_flight:
                measure_from = now
                if meter is not None:
                    readings["start"] = meter()
            return
        lasted = now - measure_from
        if lasted >= window.measure * MAX_STRETCH or (
            lasted >= window.measure and sum(at >= measure_from for at, _ in done) >= enough
        ):
            end = now
            if meter is not None:
                readings["end"] = meter()

    async def caller(me: int) -> None:
        nonlocal next_i, exhausted, end
        while True:
            now = loop.time()
            mark(now)
            if end is not None:
                return
            if supply is not None and next_i >= supply:
                if not exhausted:
                    exhausted = True
                    if measure_from is not None:
                        end = now
                        if meter is not None:
                            readings["end"] = meter()
                return
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            outcome = await call(i)
            answered_once.add(me)
            if isinstance(outcome, Shed):
                shed.append((loop.time(), outcome.reason))
                await asyncio.sleep(SHED_BACKOFF)
            else:
                done.append((loop.time(), time.perf_counter() - t0))

    await asyncio.gather(*(caller(me) for me in range(in_flight)))
    if measure_from is None or end is None or end <= measure_from:
        raise RuntimeError(
            f"the supply of {supply} calls ran out after {next_i} calls, before the measured window"
            f" at {in_flight} in flight" + (f" ({len(shed)} shed: {shed[0][1]})" if shed else "")
        )
    # Calls finishing after the window (or after the supply ran out) were
    # answered at less than full load.
    latencies = [latency for at, latency in done if measure_from <= at <= end]
    shed_reasons = [why for at, why in shed if measure_from <= at <= end]
    if not latencies:
        raise RuntimeError(
            f"no call completed in the measured window at {in_flight} in flight"
            + (f"; {len(shed_reasons)} shed: {shed_reasons[0]}" if shed_reasons else "")
        )
    result: dict[str, Any] = {
        "in_flight": in_flight,
        "calls": len(latencies),
        "window_s": end - measure_from,
        "per_second": len(latencies) / (end - measure_from),
        **percentiles(latencies),
        "supply_ran_out": exhausted,
        "shed": len(shed_reasons),
        "shed_reason": shed_reasons[0] if shed_reasons else None,
    }
    if meter is not None:
        result["metered"] = readings["end"] - readings["start"]
    return result


async def one_at_a_time(call: Call, samples: int, warmup: int = 10) -> dict[str, Any]:
    """Unloaded latency: `samples` calls one after another, after `warmup` unmeasured ones."""
    for i in range(warmup):
        await call(i)
    latencies = []
    for i in range(warmup, warmup + samples):
        t0 = time.perf_counter()
        outcome = await call(i)
        latencies.append(time.perf_counter() - t0)
        if isinstance(outcome, Shed):
            raise RuntimeError(f"an unloaded call was shed: {outcome.reason}")
    return {"calls": samples, **percentiles(latencies)}


async def drive(call: Call, total: int, concurrency: int) -> dict[str, float]:
    """Run `total` calls with `concurrency` in flight; return rate and latency percentiles."""
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < total:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"calls": total, "per_second": total / elapsed, **percentiles(latencies)}


def presign(
    layout: NetworkLayout, consent: envelope_pb2.SignedEnvelope, n: int, cities: Sequence[City] = ()
) -> list[envelope_pb2.SignedEnvelope]:
    """`n` distinct queries of the demo bank about the demo enterprise (`cities` empty: every city).

    Signed before the clock starts: the client's signing is not what a
    server's throughput should be charged with.
    """
    bank = layout.bank()
    return [
        query_mod.build(
            bank,
            consent,
            enterprise_uscc=layout.demo_enterprise,
            purpose=Purpose.LOAN_APPLICATION,
            cities=tuple(cities),
        )
        for _ in range(n)
    ]


def supply_for(previous_rate: float | None, window: Window, first: int, in_flight: int) -> int:
    """How many queries to presign for a level: the previous level's rate over the
    whole window with half again to spare (`first` for a series' first level), and
    at least what `in_flight` callers could take if every call were shed."""
    shed = int(in_flight * window.total / SHED_BACKOFF)
    if previous_rate is None:
        return max(first, shed)
    return max(first // 4, int(previous_rate * window.total * 1.5) + 1, shed)
