"""The budget a server takes from a caller's deadline never outlasts the caller's own wait.

Measured against real gRPC on loopback: the caller's deadline travels as a
rounded `grpc-timeout` header, and the server's view of it is compared with
the moment the caller gives up, on the same monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio

from creditnet.deadlines import (
    BUDGET_KEY,
    RESERVE_MAX,
    RESERVE_MIN,
    CallerBudget,
    answer_reserve,
    budget_metadata,
    rounding_allowance,
)
from creditnet.errors import CreditnetError

METHOD = "/creditnet.test.Deadline/Probe"
# Both ends count from different moments: the caller from sending, the
# server from receiving. Loopback transit on a busy machine stays below this.
TRANSIT = 0.01


@dataclass
class Seen:
    budgets: list[tuple[float, float | None]] = field(default_factory=list)
    refusals: list[CreditnetError] = field(default_factory=list)


@dataclass
class Probe:
    seen: Seen
    call: grpc.aio.UnaryUnaryMultiCallable


@pytest_asyncio.fixture
async def probe() -> AsyncIterator[Probe]:
    seen = Seen()

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            budget = CallerBudget.of(context)
        except CreditnetError as exc:
            seen.refusals.append(exc)
            return b""
        seen.budgets.append((budget.start, budget.seconds))
        return b""

    server = grpc.aio.server()
    handlers = {"Probe": grpc.unary_unary_rpc_method_handler(handler)}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("creditnet.test.Deadline", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        # On a connected channel, as in a long-running client: a first call's
        # header goes out after the connection is made, its deadline already
        # shortened by that, and so is rounded up less often.
        await call(b"", timeout=5)
        seen.budgets.clear()
        yield Probe(seen, call)
    await server.stop(0)


async def ask(probe: Probe, timeout: float, metadata: Sequence[tuple[str, str]] = ()) -> tuple[float, float]:
    """Where the caller gives up, and where the server's budget ends, on one clock."""
    sent = time.monotonic()
    await probe.call(b"", timeout=timeout, metadata=tuple(metadata))
    start, seconds = probe.seen.budgets[-1]
    assert seconds is not None
    return sent + timeout, start + seconds


@pytest.mark.parametrize("timeout", [0.3, 1.5, 8.0, 10.0, 10.05, 30.0, 100.0, 150.0])
async def test_the_budget_ends_before_the_caller_gives_up_at_any_deadline(
    probe: Probe, timeout: float
) -> None:
    # At 10 s, gRPC tells the server 10.1 s: a server spending all of it
    # answers 100 ms after the caller gave up.
    gives_up, budget_ends = await ask(probe, timeout)
    assert budget_ends <= gives_up + TRANSIT
    # ...and no more than the encoding's slack is given away.
    assert gives_up - budget_ends <= 2 * rounding_allowance(timeout) + 0.05


@pytest.mark.parametrize("timeout", [1.5, 10.0, 100.0])
async def test_a_stated_budget_is_used_exactly_but_never_past_the_deadline(
    probe: Probe, timeout: float
) -> None:
    gives_up, budget_ends = await ask(probe, timeout, [budget_metadata(timeout)])
    assert gives_up - 0.05 <= budget_ends <= gives_up + TRANSIT
    # A budget longer than the deadline is bounded by the deadline.
    gives_up, budget_ends = await ask(probe, timeout, [budget_metadata(timeout * 10)])
    assert budget_ends <= gives_up + rounding_allowance(timeout)
    assert budget_ends - gives_up <= timeout


@pytest.mark.parametrize("value", ["", "-5", "1.5", "1e3", "123456789", "ten"])
async def test_a_malformed_budget_header_is_refused(probe: Probe, value: str) -> None:
    await probe.call(b"", timeout=5, metadata=((BUDGET_KEY, value),))
    (refusal,) = probe.seen.refusals
    assert refusal.rule == "request.budget"
    assert refusal.code is grpc.StatusCode.INVALID_ARGUMENT


def test_the_stated_budget_is_rounded_down_and_bounded_to_eight_digits() -> None:
    assert budget_metadata(9.9999) == (BUDGET_KEY, "9999")
    assert budget_metadata(-1) == (BUDGET_KEY, "0")
    assert budget_metadata(10**9) == (BUDGET_KEY, "99999999")


def test_a_caller_keeps_back_a_bounded_share_of_its_time_for_the_answers_way_back() -> None:
    assert answer_reserve(0.5) == RESERVE_MIN
    assert answer_reserve(3.0) == pytest.approx(0.15)
    assert answer_reserve(10.0) == RESERVE_MAX
    assert answer_reserve(100.0) == RESERVE_MAX
