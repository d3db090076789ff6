"""When to ask a second aggregator replica while the first is silent.

A replica that is down fails fast (UNAVAILABLE) and the client moves on. One
that is frozen (its process stopped, its packets dropped) says nothing at
all until the call's deadline. Every creditnet aggregator sends its response
headers as soon as it has taken a call (docs/protocol.md, "Hedging past a
frozen replica"). A replica that has sent none for clearly longer than
calls usually take to be accepted, or took the call and has not answered
for clearly longer than calls usually take, is presumed frozen, and the same
request goes to the next replica as well: the first outcome wins and the
other call is cancelled. This is safe only because every call the SDK sends
this way is idempotent: a node answers one query id once and sends the kept
answer again, reading a directory or the node list changes nothing, and a
revocation delivered twice is one revocation.

The waits are a multiple of the recent times of the same method, never
under a floor and never over a quarter (not taken) or half (not answered)
of the call's budget, so that the hedged call keeps the rest. A token
bucket, like gRPC's retry throttling, holds hedges to about one call in ten
while every replica is slow, so that hedging cannot double the load of an
aggregator that is merely overloaded.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = [
    "FACTOR",
    "FIRST_DELAY",
    "FLOOR",
    "LATE_FLOOR",
    "HedgePolicy",
]

# Before any call has been accepted: a new connection's TLS handshake included.
FIRST_DELAY: Final = 1.0
FLOOR: Final = 0.2
# The waits, as a multiple of the 90th percentile of recent times.
FACTOR: Final = 4.0
# A replica that took the call and then went quiet (frozen mid-call) is
# hedged after FACTOR times the usual answer time, never under this.
LATE_FLOOR: Final = 0.5
WINDOW: Final = 32
# Hedges in hand at most; a call answered without a hedge earns a tenth of one.
MAX_TOKENS: Final = 10
TOKEN_RATIO: Final = 0.1
# Counted in tenths, so that ten calls earn exactly one hedge.
_TENTHS: Final = 10


class HedgePolicy:
    """How long to wait for a replica to take a call, and whether a hedge may be sent now."""

    def __init__(self, *, first_delay: float = FIRST_DELAY, floor: float = FLOOR) -> None:
        self.first_delay = first_delay
        self.floor = floor
        self._accepted: deque[float] = deque(maxlen=WINDOW)
        self._answered: deque[float] = deque(maxlen=WINDOW)
        self._tenths = MAX_TOKENS * _TENTHS

    def delay(self, budget: float) -> float:
        """Seconds to wait for the replica asked to take a call with `budget` seconds left."""
        wait = max(self.floor, FACTOR * _p90(self._accepted)) if self._accepted else self.first_delay
        return max(0.0, min(wait, budget / 4))

    def late(self, budget: float) -> float:
        """Seconds to wait for a replica that took a call (with `budget` seconds left) to answer it."""
        wait = max(LATE_FLOOR, FACTOR * _p90(self._answered)) if self._answered else budget / 2
        return max(0.0, min(wait, budget / 2))

    def answered(self, seconds: float) -> None:
        """A replica answered a call `seconds` after it was sent."""
        self._answered.append(seconds)

    def accepted(self, seconds: float) -> None:
        """A replica took a call `seconds` after it was sent."""
        self._accepted.append(seconds)

    def answered_without_hedge(self) -> None:
        self._tenths = min(MAX_TOKENS * _TENTHS, self._tenths + round(TOKEN_RATIO * _TENTHS))

    def spend(self) -> bool:
        """Take a token for a hedge; False (and nothing taken) when hedges are throttled."""
        if self._tenths < _TENTHS:
            return False
        self._tenths -= _TENTHS
        return True


def _p90(times: deque[float]) -> float:
    ordered = sorted(times)
    return ordered[(len(ordered) - 1) * 9 // 10]
