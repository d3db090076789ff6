"""Overload protection on real mutual-TLS servers: the concurrency bound and per-bank rate limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.errors import RETRY_AFTER_KEY
from creditnet.limits import (
    CONCURRENCY_RULE,
    PUSHBACK_KEY,
    RATE_LIMITED_RULE,
    BankRateLimit,
    CallSlots,
    ConcurrencyLimit,
    Limits,
    LimitsError,
    TokenBuckets,
    describe_rate,
    server_interceptors,
)
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity, node_server_name
from creditnet.rpc import ServerHandle, start_server
from creditnet.settings import Rate, SettingsError
from creditnet.v2 import chain_pb2, chain_pb2_grpc, node_pb2, node_pb2_grpc

CITY = pilot.HEFEI


class Holding(node_pb2_grpc.CityNodeServiceServicer, chain_pb2_grpc.ChainServiceServicer):
    """Calls that stay in flight until the test lets them go."""

    def __init__(self) -> None:
        self.entered = 0
        self.entered_changed = asyncio.Condition()
        self.go = asyncio.Event()

    async def _enter(self) -> None:
        async with self.entered_changed:
            self.entered += 1
            self.entered_changed.notify_all()

    async def wait_entered(self, n: int) -> None:
        async with self.entered_changed:
            await self.entered_changed.wait_for(lambda: self.entered >= n)

    async def GetNodeInfo(
        self, request: node_pb2.GetNodeInfoRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.GetNodeInfoResponse:
        await self._enter()
        await self.go.wait()
        return node_pb2.GetNodeInfoResponse(version="held")

    async def Query(
        self, request: node_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.QueryResponse:
        if request.query.payload == b"fail":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "query.refused: as asked")
        return node_pb2.QueryResponse()

    async def SubmitRecords(
        self,
        request_iterator: AsyncIterator[node_pb2.SubmitRecordsRequest],
        context: grpc.aio.ServicerContext,
    ) -> node_pb2.SubmitRecordsResponse:
        await self._enter()
        batches = 0
        async for _ in request_iterator:
            batches += 1
        return node_pb2.SubmitRecordsResponse(batches=batches)

    async def GetEntries(
        self, request: chain_pb2.GetEntriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chain_pb2.GetEntriesResponse]:
        yield chain_pb2.GetEntriesResponse(index=request.start)
        await self._enter()
        await self.go.wait()
        yield chain_pb2.GetEntriesResponse(index=request.start + 1)


@dataclass
class Served:
    handle: ServerHandle
    servicer: Holding
    trust: TrustStore
    ca: CertificateAuthority
    interceptors: list[grpc.aio.ServerInterceptor]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, identity: Identity) -> grpc.aio.Channel:
        ch = secure_channel(f"127.0.0.1:{self.handle.port}", identity, self.trust, node_server_name(CITY))
        self.channels.append(ch)
        return ch

    def node(self, identity: Identity) -> node_pb2_grpc.CityNodeServiceStub:
        return node_pb2_grpc.CityNodeServiceStub(self.channel(identity))

    def limiter(self, kind: type[ConcurrencyLimit] | type[BankRateLimit]) -> ConcurrencyLimit | BankRateLimit:
        return next(i for i in self.interceptors if isinstance(i, kind))


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture(scope="module")
def identities(ca: CertificateAuthority) -> dict[str, Identity]:
    return {
        "node": issue_identity(ca, Role.node(CITY)),
        "bank-a": issue_identity(ca, Role.bank("B0310H231000001")),
        "bank-b": issue_identity(ca, Role.bank("B0302H232000001")),
        "aggregator": issue_identity(ca, Role.aggregator()),
    }


async def serve(ca: CertificateAuthority, identities: dict[str, Identity], limits: Limits) -> Served:
    trust = TrustStore(ca.cert)
    servicer = Holding()
    interceptors = server_interceptors(limits, trust)

    def register(server: grpc.aio.Server) -> None:
        node_pb2_grpc.add_CityNodeServiceServicer_to_server(servicer, server)
        chain_pb2_grpc.add_ChainServiceServicer_to_server(servicer, server)

    handle = await start_server(
        listen="127.0.0.1:0",
        identity=identities["node"],
        trust=trust,
        register=register,
        service_names=["creditnet.v2.CityNodeService", "creditnet.v2.ChainService"],
        interceptors=interceptors,
    )
    return Served(handle, servicer, trust, ca, interceptors)


async def stop(served: Served) -> None:
    served.servicer.go.set()
    for ch in served.channels:
        await ch.close()
    await served.handle.stop(0)


async def refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


# --- the concurrency bound ------------------------------------------------------


async def test_calls_beyond_the_bound_are_refused_at_once_and_admitted_again_when_slots_free(
    ca: CertificateAuthority, identities: dict[str, Identity]
) -> None:
    served = await serve(ca, identities, Limits(max_concurrent_calls=2, rate_per_bank=None))
    try:
        stub = served.node(identities["aggregator"])
        held = [
            asyncio.ensure_future(stub.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=30))
            for _ in range(2)
        ]
        await served.servicer.wait_entered(2)
        limiter = served.limiter(ConcurrencyLimit)
        assert isinstance(limiter, ConcurrencyLimit) and limiter.calls.in_flight == 2
        # Many more than the bound: every one refused, none queued behind the held calls.
        errors = await asyncio.gather(
            *(refusal(stub.Query(node_pb2.QueryRequest(), timeout=30)) for _ in range(20))
        )
        assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all((e.details() or "").startswith(f"{CONCURRENCY_RULE}: ") for e in errors)
        assert limiter.calls.refused == 20
        # Probes are in their own pool: the busy server does not look dead.
        health = health_pb2_grpc.HealthStub(served.channel(identities["aggregator"]))
        resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        served.servicer.go.set()
        assert [r.version for r in await asyncio.gather(*held)] == ["held", "held"]
        # The slots are free before the answers leave, so the next call is admitted.
        assert limiter.calls.in_flight == 0
        await stub.Query(node_pb2.QueryRequest(), timeout=5)
    finally:
        await stop(served)


async def test_streams_hold_a_slot_until_they_end_and_errors_release_it(
    ca: CertificateAuthority, identities: dict[str, Identity]
) -> None:
    served = await serve(ca, identities, Limits(max_concurrent_calls=1, rate_per_bank=None))
    try:
        ch = served.channel(identities["aggregator"])
        stub = node_pb2_grpc.CityNodeServiceStub(ch)
        chain = chain_pb2_grpc.ChainServiceStub(ch)
        limiter = served.limiter(ConcurrencyLimit)
        assert isinstance(limiter, ConcurrencyLimit)
        # A server stream (an async-generator handler) holds its slot while open.
        stream = chain.GetEntries(chain_pb2.GetEntriesRequest(start=7), timeout=30)
        first = await stream.read()
        assert first.index == 7
        await served.servicer.wait_entered(1)
        err = await refusal(stub.Query(node_pb2.QueryRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        served.servicer.go.set()
        assert (await stream.read()).index == 8
        assert await stream.read() == grpc.aio.EOF
        # A client stream passes its messages through the guard.
        batches = [node_pb2.SubmitRecordsRequest() for _ in range(3)]
        assert (await stub.SubmitRecords(iter(batches), timeout=5)).batches == 3
        # A handler's own refusal keeps its status, and gives back its slot.
        err = await refusal(stub.Query(node_pb2.QueryRequest(query={"payload": b"fail"}), timeout=5))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # An abort sends its status before the handler unwinds: the slot comes
        # back a moment after the caller has the refusal.
        for _ in range(100):
            if limiter.calls.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert limiter.calls.in_flight == 0
        await stub.Query(node_pb2.QueryRequest(), timeout=5)
    finally:
        await stop(served)


async def test_control_calls_have_their_own_bounded_pool(
    ca: CertificateAuthority, identities: dict[str, Identity]
) -> None:
    served = await serve(
        ca, identities, Limits(max_concurrent_calls=4, max_control_calls=1, rate_per_bank=None)
    )
    try:
        health = health_pb2_grpc.HealthStub(served.channel(identities["aggregator"]))
        # A Watch stream (a handler that writes with context.write) holds the only control slot.
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        err = await refusal(health.Check(health_pb2.HealthCheckRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert CONCURRENCY_RULE in (err.details() or "")
        # Service calls are unaffected by a full control pool.
        await served.node(identities["aggregator"]).Query(node_pb2.QueryRequest(), timeout=5)
        watch.cancel()
    finally:
        await stop(served)


# --- per-bank rate limits -------------------------------------------------------


async def test_each_bank_has_its_own_bucket_and_refusals_carry_a_retry_hint(
    ca: CertificateAuthority, identities: dict[str, Identity]
) -> None:
    served = await serve(ca, identities, Limits(max_concurrent_calls=8, rate_per_bank=Rate(3, 3600.0)))
    try:
        bank_a = served.node(identities["bank-a"])
        for _ in range(3):
            await bank_a.Query(node_pb2.QueryRequest(), timeout=5)
        err = await refusal(bank_a.Query(node_pb2.QueryRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (err.details() or "").startswith(f"{RATE_LIMITED_RULE}: bank B0310H231000001 ")
        trailers = err.trailing_metadata()
        assert trailers is not None
        # One token comes back every 1200 s; a few seconds of it may have passed.
        wait_ms = int(trailers[RETRY_AFTER_KEY])
        assert 1_100_000 < wait_ms <= 1_200_000
        assert trailers[PUSHBACK_KEY] == trailers[RETRY_AFTER_KEY]
        # Another bank is not affected, nor is a network peer, nor are probes.
        await served.node(identities["bank-b"]).Query(node_pb2.QueryRequest(), timeout=5)
        aggregator = served.node(identities["aggregator"])
        for _ in range(5):
            await aggregator.Query(node_pb2.QueryRequest(), timeout=5)
        health = health_pb2_grpc.HealthStub(served.channel(identities["bank-a"]))
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        rate = served.limiter(BankRateLimit)
        assert isinstance(rate, BankRateLimit) and rate.buckets.refused == 1
        # A refused call never took a concurrency slot.
        conc = served.limiter(ConcurrencyLimit)
        assert isinstance(conc, ConcurrencyLimit) and conc.calls.refused == 0 and conc.calls.in_flight == 0
    finally:
        await stop(served)


def test_no_rate_limit_means_no_rate_interceptor() -> None:
    trust = TrustStore(CertificateAuthority.create().cert)
    kinds = [type(i) for i in server_interceptors(Limits(rate_per_bank=None), trust)]
    assert kinds == [ConcurrencyLimit]
    kinds = [type(i) for i in server_interceptors(Limits(), trust)]
    assert kinds == [BankRateLimit, ConcurrencyLimit]


# --- the pieces -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()


def test_bucket_spends_its_burst_then_refills_evenly(clock: Clock) -> None:
    buckets = TokenBuckets(Rate(4, 60.0), clock=clock)
    assert [buckets.take("b") for _ in range(4)] == [0.0] * 4
    assert buckets.take("b") == pytest.approx(15.0)
    clock.now += 7.5
    assert buckets.take("b") == pytest.approx(7.5)
    clock.now += 7.5
    assert buckets.take("b") == 0.0
    # Idle for an hour: full again, but never more than the burst.
    clock.now += 3600
    assert [buckets.take("b") for _ in range(4)] == [0.0] * 4
    assert buckets.take("b") > 0
    assert buckets.refused == 3


def test_a_clock_stepping_back_refills_nothing(clock: Clock) -> None:
    buckets = TokenBuckets(Rate(1, 10.0), clock=clock)
    assert buckets.take("b") == 0.0
    clock.now -= 100
    assert buckets.take("b") > 0
    clock.now += 100
    # Only the time after the first take counts, not the step back and forth.
    assert buckets.take("b") > 0
    clock.now += 10
    assert buckets.take("b") == 0.0


def test_buckets_are_bounded_and_the_least_recently_used_goes(clock: Clock) -> None:
    buckets = TokenBuckets(Rate(1, 3600.0), max_keys=2, clock=clock)
    assert buckets.take("a") == 0.0 and buckets.take("b") == 0.0
    assert buckets.take("a") > 0  # a is now the most recently used
    assert buckets.take("c") == 0.0  # b goes
    assert len(buckets) == 2
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0  # forgotten, so full again


def test_call_slots() -> None:
    slots = CallSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire() and slots.refused == 1
    slots.release()
    assert slots.try_acquire()
    slots.release()
    slots.release()
    with pytest.raises(RuntimeError):
        slots.release()


@pytest.mark.parametrize(
    "kw",
    [
        {"max_concurrent_calls": 0},
        {"max_control_calls": -1},
        {"max_tracked_banks": 0},
        {"rate_per_bank": Rate(0, 60.0)},
        {"rate_per_bank": Rate(5, 0.0)},
    ],
)
def test_unworkable_limits_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(LimitsError):
        Limits(**kw)  # type: ignore[arg-type]


def test_limits_from_the_environment() -> None:
    assert Limits.from_env({}) == Limits()
    assert Limits().max_concurrent_calls == 512 and Limits().rate_per_bank == Rate(600, 60.0)
    limits = Limits.from_env({"CREDITNET_MAX_CONCURRENT_RPCS": "8", "CREDITNET_RATE_LIMIT_PER_BANK": "off"})
    assert (limits.max_concurrent_calls, limits.rate_per_bank) == (8, None)
    assert limits.hard_cap > limits.max_concurrent_calls + limits.max_control_calls
    with pytest.raises(SettingsError) as err:
        Limits.from_env({"CREDITNET_MAX_CONCURRENT_RPCS": "0", "CREDITNET_RATE_LIMIT_PER_BANK": "fast"})
    assert [name for name, _ in err.value.problems] == [
        "CREDITNET_MAX_CONCURRENT_RPCS",
        "CREDITNET_RATE_LIMIT_PER_BANK",
    ]


def test_rates_are_described_as_written() -> None:
    assert describe_rate(Rate(600, 60.0)) == "600/min"
    assert describe_rate(Rate(20, 1.0)) == "20/s"
    assert describe_rate(Rate(5, 90.0)) == "5 per 90 s"
