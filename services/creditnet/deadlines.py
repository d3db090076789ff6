"""How long a caller will really wait: the gRPC deadline, corrected for its encoding.

gRPC sends a deadline as a relative `grpc-timeout` header of at most eight
digits and a unit. gRPC C-core (Python, C++, Ruby, PHP...) rounds it *up* to
three significant digits: 10 s goes out as `10100m`, 100 s as `101S`. A
server that spends its whole `time_remaining()` answers after the caller
has given up. So a server trusts the deadline only up to 1% + 1 ms, which
covers that rounding at every magnitude; other stacks (grpc-go rounds to the
microsecond, grpc-java truncates) lose nothing but that slack.

A creditnet client may also say exactly how long the server may work on
this call in the `creditnet-budget-ms` request header (decimal
milliseconds, counted from when it sent the call): its own deadline less a
reserve for the answer to reach it (`answer_reserve`). A server takes the
smaller of the two, so the header can shorten a call's budget, never
lengthen it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import grpc

from creditnet.errors import InvalidArgument

__all__ = [
    "BUDGET_KEY",
    "RESERVE_MAX",
    "RESERVE_MIN",
    "CallerBudget",
    "answer_reserve",
    "budget_metadata",
    "rounding_allowance",
]

BUDGET_KEY = "creditnet-budget-ms"
# The worst upward rounding of gRPC C-core's grpc-timeout encoding, relative.
ROUNDING = 0.01
ROUNDING_FLOOR = 0.001
# A caller's reserve for the answer's way back (see `answer_reserve`).
RESERVE = 0.05
RESERVE_MIN = 0.05
RESERVE_MAX = 0.5
# As many digits as grpc-timeout allows: about 27 hours in milliseconds.
_MAX_DIGITS = 8


def rounding_allowance(remaining: float) -> float:
    """The most a received grpc-timeout of `remaining` seconds may exceed the caller's own."""
    return ROUNDING_FLOOR + ROUNDING * max(remaining, 0.0)


def answer_reserve(remaining: float) -> float:
    """What a caller keeps back from its own deadline for the answer's way back to it.

    The server aims to answer by the budget stated; the answer still has to
    travel and be read by a client whose process may be busy. 5% of the
    time left, at least 50 ms and at most 500 ms.
    """
    return min(RESERVE_MAX, max(RESERVE_MIN, RESERVE * remaining))


def budget_metadata(seconds: float) -> tuple[str, str]:
    """The request header that states a call's budget exactly (rounded down, so never overstated)."""
    return BUDGET_KEY, str(max(0, min(math.floor(seconds * 1000), 10**_MAX_DIGITS - 1)))


@dataclass(frozen=True, slots=True)
class CallerBudget:
    """A caller's budget, read once when the call arrives; `remaining()` counts down from it."""

    seconds: float | None
    start: float

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext) -> CallerBudget:
        start = time.monotonic()
        remaining = context.time_remaining()
        stated = _stated(context)
        if remaining is None:
            return cls(stated, start)
        trusted = remaining - rounding_allowance(remaining)
        if stated is not None:
            # The header is exact to the millisecond (gRPC's own deadline is
            # rounded up to one); the deadline still bounds it should it overstate.
            trusted = min(stated, remaining) - ROUNDING_FLOOR
        return cls(max(0.0, trusted), start)

    def remaining(self) -> float | None:
        if self.seconds is None:
            return None
        return max(0.0, self.seconds - (time.monotonic() - self.start))


def _stated(context: grpc.aio.ServicerContext) -> float | None:
    found = [v for k, v in context.invocation_metadata() or () if k == BUDGET_KEY]
    if not found:
        return None
    value = found[0]
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    if len(found) > 1 or not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        raise InvalidArgument(
            "request.budget", f"{BUDGET_KEY} must appear once, as 1 to {_MAX_DIGITS} decimal digits"
        )
    return int(text) / 1000
