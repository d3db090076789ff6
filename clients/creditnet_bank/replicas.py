"""The replicas of one aggregator, as a client sees them: fail over, and hedge a frozen one.

A call goes to the replica that answered last. One that cannot be reached or
answers UNAVAILABLE is passed over at once; one that has not taken the call
within the hedge delay (`creditnet_bank.hedging`) is asked alongside the
next. A refusal is the network's answer and is never asked of another
replica. Used by the bank's SDK and by every CLI that talks to the
aggregator with several endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from creditnet.channels import secure_channel
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore
from creditnet_bank.hedging import HedgePolicy

__all__ = [
    "BROADCAST_REVOCATION",
    "FEDERATED_QUERY",
    "FIRST_BACKOFF",
    "GET_DIRECTORY",
    "LIST_NODES",
    "MAX_BACKOFF",
    "Replica",
    "Replicas",
    "Rpc",
    "aggregator_endpoints",
]

FEDERATED_QUERY: Final = "/creditnet.v2.AggregatorService/FederatedQuery"
LIST_NODES: Final = "/creditnet.v2.AggregatorService/ListNodes"
BROADCAST_REVOCATION: Final = "/creditnet.v2.AggregatorService/BroadcastRevocation"
GET_DIRECTORY: Final = "/creditnet.v2.DirectoryService/GetDirectory"

# After every endpoint failed once in a row, the pause before the next round (doubling, capped).
FIRST_BACKOFF, MAX_BACKOFF = 0.1, 2.0

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
M = TypeVar("M", bound=Message)

log = logging.getLogger(__name__)


class Rpc(Protocol[T_co]):
    """A unary call in flight (grpc.aio's UnaryUnaryCall), as `Replicas.call` uses it."""

    def __await__(self) -> Generator[Any, None, T_co]: ...
    async def initial_metadata(self) -> Any: ...
    def done(self) -> bool: ...
    def cancel(self) -> bool: ...


class Replica:
    """One aggregator endpoint: its channel."""

    def __init__(self, endpoint: str, identity: Identity, trust: TrustStore) -> None:
        self.endpoint = endpoint
        self.channel = secure_channel(endpoint, identity, trust, AGGREGATOR_SERVER_NAME)
        self._methods: dict[str, Any] = {}

    def unary(
        self,
        method: str,
        request: Message,
        response: type[M],
        *,
        timeout: float,
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> Rpc[M]:
        """Call the unary `method` (``/package.Service/Method``), seeing its response headers as they come.

        grpc.aio surfaces a unary call's response headers only with its
        response, too late to tell a replica that is working on the call
        from a frozen one. The call is therefore made as unary-to-stream: on
        the wire the two are the same (headers, one message, trailers), and
        only this side's API differs.
        """
        multi = self._methods.get(method)
        if multi is None:
            multi = self._methods[method] = self.channel.unary_stream(
                method, request_serializer=_serialize, response_deserializer=response.FromString
            )
        return _Unary(multi(request, timeout=timeout, metadata=metadata))


class _Unary(Generic[M]):
    """A unary call made as unary-to-stream (`Replica.unary`), awaited as a unary one."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    def done(self) -> bool:
        return bool(self._call.done())

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def __await__(self) -> Generator[Any, None, M]:
        return self._response().__await__()

    async def _response(self) -> M:
        # Read to the end: a failed call raises its AioRpcError there, with its status.
        answer: M | None = None
        async for message in self._call:
            if answer is not None:
                # Not kept reading: a server that streams on is not a unary method's.
                self._call.cancel()
                raise _not_unary("more than one message")
            answer = message
        if answer is None:
            raise _not_unary("no message")
        return answer


def _not_unary(what: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"the aggregator answered a unary call with {what}",
    )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Replicas:
    """Channels to every replica of the aggregator, for one caller identity."""

    def __init__(self, endpoints: str | Sequence[str], identity: Identity, trust: TrustStore) -> None:
        self.endpoints = aggregator_endpoints(endpoints)
        # Replicas share the aggregator's certificate and its TLS server name.
        self.replicas = [Replica(ep, identity, trust) for ep in self.endpoints]
        # Which replica a call tries first: the last one that answered.
        self.preferred = 0
        self.policies: dict[str, HedgePolicy] = {}

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.channel.close()

    async def unary(
        self,
        method: str,
        request: Message,
        response: type[M],
        deadline: float,
        *,
        metadata: Callable[[float], Sequence[tuple[str, str | bytes]]] | None = None,
    ) -> M:
        """The unary `method` with `request`, through `call`: each attempt gets the time left
        before `deadline` (monotonic) and `metadata(time left)`."""

        def attempt(replica: Replica, remaining: float) -> Rpc[M]:
            extra = metadata(remaining) if metadata is not None else ()
            return replica.unary(method, request, response, timeout=remaining, metadata=extra)

        return await self.call(method, attempt, deadline)

    def policy(self, method: str) -> HedgePolicy:
        """The hedge policy of `method`'s calls (each method has its own usual times)."""
        policy = self.policies.get(method)
        if policy is None:
            policy = self.policies[method] = HedgePolicy()
        return policy

    async def call(self, method: str, call: Callable[[Replica, float], Rpc[T]], deadline: float) -> T:
        """`call` (a call of `method`) on one replica after another until one answers, all before `deadline`.

        `deadline` is on the monotonic clock. A replica that cannot be
        reached, or answers UNAVAILABLE (its database or its directory is
        not usable, it is shutting down…), is passed over for the next at
        once; once every one has failed in a row, the next round waits a
        little (with jitter), never past the deadline. A replica that has
        not taken the call (sent its response headers) within the hedge
        delay, or has taken it and not answered within the late delay
        (`creditnet_bank.hedging`), is presumed frozen: the next one is asked
        as well, and the first outcome wins. Anything else, an answer or a
        refusal, ends the call; so does the deadline, with the last failure.
        """
        policy = self.policy(method)
        n = len(self.replicas)
        flights: dict[asyncio.Task[T], _Flight] = {}
        next_index = self.preferred
        failed_in_a_row = 0
        backoff = FIRST_BACKOFF
        # The next attempt after a failure (the first one: at once).
        retry_at: float | None = time.monotonic()
        hedged = throttled = False
        try:
            while True:
                now = time.monotonic()
                busy = {f.index for f in flights.values()}
                free = [i % n for i in range(next_index, next_index + n) if i % n not in busy]
                hedge_at = None
                if retry_at is not None and free:
                    if now >= retry_at:
                        retry_at = None
                        next_index = self._launch(flights, free[0], call, deadline, policy)
                        continue
                elif flights and free and not throttled:
                    last = max(flights.values(), key=lambda f: f.sent)
                    budget = deadline - last.sent
                    taken = any(f.taken for f in flights.values())
                    hedge_at = last.sent + (policy.late(budget) if taken else policy.delay(budget))
                    if now >= hedge_at:
                        if not policy.spend():
                            # Hedges are throttled: this call waits on the replicas it asked.
                            throttled = True
                            continue
                        hedged = True
                        log.info(
                            "aggregator %s has %s the call; asking %s as well",
                            ", ".join(self.replicas[f.index].endpoint for f in flights.values()),
                            "not answered" if taken else "not taken",
                            self.replicas[free[0]].endpoint,
                        )
                        next_index = self._launch(flights, free[0], call, deadline, policy)
                        continue
                wake = min((t for t in (retry_at, hedge_at) if t is not None), default=None)
                if not flights:
                    if wake is None:
                        raise AssertionError("no attempt in flight and none to come")  # pragma: no cover
                    # Every replica failed in a row: the pause before the next round.
                    await asyncio.sleep(wake - now)
                    continue
                done, _ = await asyncio.wait(
                    flights,
                    timeout=None if wake is None else max(wake - now, 0.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    flight = flights.pop(task)
                    exc = task.exception()
                    if exc is None:
                        self.preferred = flight.index
                        policy.answered(time.monotonic() - flight.sent)
                        if not hedged:
                            policy.answered_without_hedge()
                        return task.result()
                    if not isinstance(exc, grpc.aio.AioRpcError) or exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise exc
                    failed_in_a_row += 1
                    if n > 1:
                        log.info(
                            "aggregator %s unavailable (%s); trying the next",
                            self.replicas[flight.index].endpoint,
                            (exc.details() or "")[:120],
                        )
                    self.preferred = (flight.index + 1) % n
                    remaining = deadline - time.monotonic()
                    pause = 0.0
                    if failed_in_a_row % n == 0:
                        pause = backoff * (0.5 + random.random())
                        backoff = min(backoff * 2, MAX_BACKOFF)
                    if remaining <= max(pause * 2, 0.001):
                        if flights:
                            continue
                        raise exc
                    retry_at = time.monotonic() + pause
        finally:
            for task in flights:
                task.cancel()
            if flights:
                await asyncio.gather(*flights, return_exceptions=True)

    def _launch(
        self,
        flights: dict[asyncio.Task[T], _Flight],
        index: int,
        call: Callable[[Replica, float], Rpc[T]],
        deadline: float,
        policy: HedgePolicy,
    ) -> int:
        """Start `call` on replica `index`; the replica to try after it."""
        flight = _Flight(index, time.monotonic())

        async def attempt() -> T:
            rpc = call(self.replicas[index], max(deadline - flight.sent, 0.001))
            try:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await rpc.initial_metadata()
                if not rpc.done():
                    flight.taken = True
                    policy.accepted(time.monotonic() - flight.sent)
                return await rpc
            finally:
                rpc.cancel()

        flights[asyncio.ensure_future(attempt())] = flight
        return (index + 1) % len(self.replicas)


@dataclass
class _Flight:
    """One attempt of a call: the replica asked, when, and whether it has taken the call."""

    index: int
    sent: float
    taken: bool = False


def aggregator_endpoints(given: str | Sequence[str]) -> list[str]:
    """HOST:PORT endpoints from a list or a comma-separated string; ValueError if none or repeated."""
    items = given.split(",") if isinstance(given, str) else list(given)
    endpoints = [e.strip() for item in items for e in item.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("no aggregator endpoint given")
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"an aggregator endpoint is given twice: {', '.join(endpoints)}")
    return endpoints
