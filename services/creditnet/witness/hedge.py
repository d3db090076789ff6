"""Which witnesses a log asks to cosign, and when: hedged, remembering who does not answer.

A frozen witness never refuses: it holds the call until the cosign timeout.
Waiting for it would hold back every answer of the log for that long, so a
round asks `quorum` witnesses, asks a spare as soon as one fails *or* as
soon as the hedge delay (a few times the witnesses' usual latency) passes
without a quorum, and publishes with the first `quorum` cosignatures. A
witness that failed is asked last, and only after a backoff; once that has
passed it is probed alongside the round, where its answer counts but is
not waited for, so a witness that comes back catches up by itself. A
witness whose call is still outstanding is asked only if the idle ones do
not suffice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "HEDGE_FACTOR",
    "HEDGE_MAX",
    "HEDGE_MIN",
    "UNKNOWN_LATENCY",
    "WitnessHealth",
    "hedge_delay",
    "plan",
]

# The hedge delay is this many times the slowest usual latency among the
# witnesses asked first, within these bounds (seconds).
HEDGE_FACTOR = 3.0
HEDGE_MIN = 0.02
HEDGE_MAX = 0.5
# Assumed for a witness that has not answered yet (the first call includes the TLS handshake).
UNKNOWN_LATENCY = 0.05
# Weight of the newest latency in the moving average.
SMOOTHING = 0.2
# After a failure a witness rests this long, doubling per failure up to the maximum.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 4.0

T = TypeVar("T")


@dataclass
class WitnessHealth:
    """What a log remembers of one witness's recent answers."""

    latency: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    in_flight: int = 0

    def asked(self) -> None:
        self.in_flight += 1

    def answered(self, seconds: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        before = seconds if self.latency is None else self.latency
        self.latency = (1 - SMOOTHING) * before + SMOOTHING * seconds
        self.failures = 0
        self.retry_at = 0.0

    def settled(self) -> None:
        """A call that ended telling nothing about the witness's health."""
        self.in_flight = max(0, self.in_flight - 1)

    def failed(self, now: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.failures += 1
        self.retry_at = now + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (self.failures - 1))

    @property
    def healthy(self) -> bool:
        return self.failures == 0

    @property
    def busy(self) -> bool:
        return self.in_flight > 0


def plan(
    witnesses: Sequence[T], health: Callable[[T], WitnessHealth], quorum: int, rotation: int, now: float
) -> tuple[list[T], list[T]]:
    """The witnesses to ask at once, and the spares in the order to ask them.

    Healthy idle witnesses come first, in rotation so that each keeps up with
    the log; a failed witness whose backoff has passed is probed at once, on
    top of the quorum; then healthy witnesses still busy with an earlier
    call, then failed ones still resting. A failed witness with a call
    outstanding is not asked again.
    """
    n = len(witnesses)
    order = [witnesses[(rotation + i) % n] for i in range(n)]
    idle = [w for w in order if health(w).healthy and not health(w).busy]
    probes = sorted(
        (w for w in order if not health(w).healthy and not health(w).busy and health(w).retry_at <= now),
        key=lambda w: health(w).failures,
    )
    busy = [w for w in order if health(w).healthy and health(w).busy]
    resting = sorted(
        (w for w in order if not health(w).healthy and not health(w).busy and health(w).retry_at > now),
        key=lambda w: health(w).retry_at,
    )
    candidates = idle + busy + resting
    need = max(quorum, 1)
    return candidates[:need] + probes, candidates[need:]


def hedge_delay(healths: Sequence[WitnessHealth]) -> float:
    """How long to wait for the witnesses asked first before asking spares too."""
    slowest = max(
        (h.latency if h.latency is not None else UNKNOWN_LATENCY for h in healths if h.healthy),
        default=UNKNOWN_LATENCY,
    )
    return min(HEDGE_MAX, max(HEDGE_MIN, HEDGE_FACTOR * slowest))
