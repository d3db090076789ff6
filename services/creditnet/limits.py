"""Overload protection for every server, as grpc.aio server interceptors.

Two limits, each where it can be enforced cheaply and by the party that
knows the key:

- **Calls served at once** (`ConcurrencyLimit`), on every server, nodes and
  aggregator alike. A call beyond the bound is answered RESOURCE_EXHAUSTED
  ``overload.concurrency`` at once: nothing is queued, so an overloaded
  server sheds load in microseconds instead of collapsing under a growing
  backlog. Health checks, reflection and witness cosigning are counted in a
  separate, smaller pool, so a flood of queries neither makes a busy server
  look dead to its probes nor stalls the other cities' credit chains, and
  that control pool is bounded as well.

- **Calls per bank** (`BankRateLimit`): a token bucket per bank, keyed by
  the institution code in the TLS peer certificate's role, refused with
  RESOURCE_EXHAUSTED ``overload.rate_limited`` and a retry-after hint in the
  trailing metadata. Every call a bank certificate makes counts (a query, a
  ListNodes that fans out health checks, a chain read), except the control
  calls above. The key costs one cached certificate lookup and is checked
  before the request is verified, so a flooding bank is turned away before
  it costs a signature check.

  At the aggregator the TLS peer of a FederatedQuery is the bank itself
  (only bank certificates may call it) and the query's verified signer must
  be that same bank, so the bucket charged is the signer's. A node sees the
  aggregator, not the bank, as the TLS peer of every forwarded query: it
  charges banks only for the calls they make to it directly, and relies on
  the aggregator's per-bank limits plus its own concurrency bound for
  forwarded ones (a node cannot name the bank of a forwarded query before
  verifying its signature, which is the cost the limit exists to avoid).

gRPC's own ``maximum_concurrent_rpcs`` refuses before a request is read, but
frees its slot only after the response has gone out, so a client that just
got its answer can be refused by a server with nothing left to do; it is
kept as a backstop well above these bounds (`Limits.hard_cap`), against
floods of large requests that would otherwise all be read before refusal.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from creditnet.errors import RETRY_AFTER_KEY, CreditnetError, Error, ResourceExhausted
from creditnet.handlers import Finish, wrap_handler
from creditnet.pki import Role, RoleKind, TrustStore
from creditnet.rpc import PeerIdentities
from creditnet.settings import (
    MAX_CONCURRENT_RPCS,
    RATE_LIMIT_PER_BANK,
    Problems,
    Rate,
    ServerSettings,
    SettingsError,
)

__all__ = [
    "CONCURRENCY_RULE",
    "PUSHBACK_KEY",
    "RATE_LIMITED_RULE",
    "BankRateLimit",
    "CallSlots",
    "ConcurrencyLimit",
    "Limits",
    "LimitsError",
    "TokenBuckets",
    "describe_rate",
    "server_interceptors",
]

log = logging.getLogger(__name__)

CONCURRENCY_RULE = "overload.concurrency"
RATE_LIMITED_RULE = "overload.rate_limited"
# RETRY_AFTER_KEY's value goes under gRPC's standard pushback key too, which
# gRPC retry policies in every language honour when RESOURCE_EXHAUSTED is retryable.
PUSHBACK_KEY = "grpc-retry-pushback-ms"

# Calls that keep the network itself running: probes, reflection and the
# witness cosignatures other logs need to publish.
CONTROL_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/creditnet.v2.WitnessService/",
)


def _setting_default(variable: Any) -> Any:
    # The documented default of the environment variable is the one that runs.
    return variable.parse(variable.default)


DEFAULT_MAX_CONCURRENT_CALLS: int = _setting_default(MAX_CONCURRENT_RPCS)
DEFAULT_RATE_PER_BANK: Rate | None = _setting_default(RATE_LIMIT_PER_BANK)
DEFAULT_MAX_CONTROL_CALLS = 64
DEFAULT_MAX_TRACKED_BANKS = 10_000


class LimitsError(Error, ValueError):
    """A limit that cannot work (a bound below 1, a rate of nothing)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one server takes on; `rate_per_bank` None means no per-bank limit."""

    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    rate_per_bank: Rate | None = field(default=DEFAULT_RATE_PER_BANK)
    max_control_calls: int = DEFAULT_MAX_CONTROL_CALLS
    # Buckets kept at once; the least recently used are dropped beyond it
    # (a dropped bucket is full again, which only ever favours the bank).
    max_tracked_banks: int = DEFAULT_MAX_TRACKED_BANKS

    def __post_init__(self) -> None:
        for name in ("max_concurrent_calls", "max_control_calls", "max_tracked_banks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LimitsError(f"{name} must be a whole number ≥ 1, got {value!r}")
        rate = self.rate_per_bank
        if rate is not None and not (rate.requests >= 1 and math.isfinite(rate.period) and rate.period > 0):
            raise LimitsError(
                f"a rate needs at least 1 request over a positive period, got {rate.requests}/{rate.period}s"
            )

    @property
    def hard_cap(self) -> int:
        """For grpc.aio.server(maximum_concurrent_rpcs=…): a backstop well above both pools."""
        return 2 * (self.max_concurrent_calls + self.max_control_calls)

    @classmethod
    def from_settings(cls, server: ServerSettings) -> Limits:
        return cls(max_concurrent_calls=server.max_concurrent_rpcs, rate_per_bank=server.rate_limit_per_bank)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """CREDITNET_MAX_CONCURRENT_RPCS and CREDITNET_RATE_LIMIT_PER_BANK, or their defaults.

        For servers started from a JSON config, which carries no limits.
        """
        env = os.environ if env is None else env
        problems: Problems = []
        calls = MAX_CONCURRENT_RPCS.value(env, problems)
        rate = RATE_LIMIT_PER_BANK.value(env, problems)
        if problems:
            raise SettingsError(problems)
        return cls(max_concurrent_calls=calls, rate_per_bank=rate)


def describe_rate(rate: Rate) -> str:
    """``600/min`` for Rate(600, 60)."""
    names = {1.0: "s", 60.0: "min", 3600.0: "h"}
    unit = names.get(rate.period)
    return f"{rate.requests}/{unit}" if unit else f"{rate.requests} per {rate.period:g} s"


def _is_control(method: str) -> bool:
    return method.startswith(CONTROL_PREFIXES)


# --- the counters ---------------------------------------------------------------


class CallSlots:
    """A bound on calls in flight that refuses instead of waiting."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise LimitsError(f"a bound on calls in flight must be at least 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self.refused = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("released a call slot that was never taken")
        self.in_flight -= 1


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """One token bucket per key: `rate.requests` at once, refilled evenly over `rate.period`."""

    def __init__(
        self,
        rate: Rate,
        *,
        max_keys: int = DEFAULT_MAX_TRACKED_BANKS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate.requests < 1 or not rate.period > 0:
            raise LimitsError(f"a rate needs at least 1 request over a positive period, got {rate}")
        if max_keys < 1:
            raise LimitsError(f"max_keys must be at least 1, got {max_keys}")
        self.rate = rate
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one token of `key`: 0.0 when granted, else the seconds until one is available."""
        now = self.clock()
        capacity = float(self.rate.requests)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(capacity, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            # A clock that steps back refills nothing, then or later.
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(capacity, bucket.tokens + elapsed * self.rate.per_second)
            bucket.stamp = max(bucket.stamp, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        self.refused += 1
        return (1.0 - bucket.tokens) / self.rate.per_second


# --- wrapping method handlers -----------------------------------------------------

Release = Callable[[], None]
# Admits a call (returning what to run when it ends) or aborts it.
Gate = Callable[[grpc.aio.ServicerContext], Awaitable[Release]]


def _nothing() -> None:
    return None


def _guard_handler(handler: grpc.RpcMethodHandler, gate: Gate) -> grpc.RpcMethodHandler:
    """The same method handler, with `gate` deciding at the start of every call."""

    async def around(context: grpc.aio.ServicerContext) -> Finish:
        release = await gate(context)
        return lambda _exc: release()

    return wrap_handler(handler, around)


class ConcurrencyLimit(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse calls beyond the bound with RESOURCE_EXHAUSTED overload.concurrency, at once."""

    def __init__(self, limits: Limits) -> None:
        self.calls = CallSlots(limits.max_concurrent_calls)
        self.control = CallSlots(limits.max_control_calls)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        slots = self.control if _is_control(method) else self.calls
        what = "control calls" if slots is self.control else "calls"

        async def gate(context: grpc.aio.ServicerContext) -> Release:
            if not slots.try_acquire():
                exc = ResourceExhausted(
                    CONCURRENCY_RULE,
                    f"this server already has {slots.limit} {what} in flight; retry with backoff",
                )
                await context.abort(exc.code, exc.reason)
            return slots.release

        return _guard_handler(handler, gate)


class BankRateLimit(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse a bank's calls beyond its token bucket with RESOURCE_EXHAUSTED overload.rate_limited."""

    def __init__(
        self,
        rate: Rate,
        trust: TrustStore,
        *,
        max_banks: int = DEFAULT_MAX_TRACKED_BANKS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = TokenBuckets(rate, max_keys=max_banks, clock=clock)
        self.peers = PeerIdentities(trust)

    def _bank(self, context: grpc.aio.ServicerContext) -> str | None:
        try:
            role: Role = self.peers.role(context)
        except (CreditnetError, ValueError):
            # Not ours to refuse: the service answers an unusable peer itself.
            return None
        return role.subject if role.kind is RoleKind.BANK else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or _is_control(handler_call_details.method):
            return handler

        async def gate(context: grpc.aio.ServicerContext) -> Release:
            bank = self._bank(context)
            if bank is not None:
                wait = self.buckets.take(bank)
                if wait > 0:
                    ms = max(1, math.ceil(wait * 1000))
                    exc = ResourceExhausted(
                        RATE_LIMITED_RULE,
                        f"bank {bank} is over its limit of {describe_rate(self.buckets.rate)} calls; "
                        f"retry in {ms / 1000:.1f} s",
                    )
                    await context.abort(
                        exc.code,
                        exc.reason,
                        trailing_metadata=((RETRY_AFTER_KEY, str(ms)), (PUSHBACK_KEY, str(ms))),
                    )
            return _nothing

        return _guard_handler(handler, gate)


def server_interceptors(limits: Limits, trust: TrustStore) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors for start_server(interceptors=…), outermost first.

    The rate limit comes first so that a call it refuses never holds one of
    the slots the concurrency bound counts.
    """
    out: list[grpc.aio.ServerInterceptor] = []
    if limits.rate_per_bank is not None:
        out.append(BankRateLimit(limits.rate_per_bank, trust, max_banks=limits.max_tracked_banks))
    out.append(ConcurrencyLimit(limits))
    return out
