"""Real mutual-TLS servers with a small probe service, and an in-memory span exporter.

The probe service ("test.Probe") has one method per way a call can end, so
the interceptor's counting, timing and tracing is observed on real calls
through real gRPC servers; `Relay` calls a second server, as the aggregator
calls the nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from creditnet import pilot
from creditnet.channels import CHANNEL_OPTIONS
from creditnet.domain import City
from creditnet.errors import PermissionDenied
from creditnet.observability import (
    bind_query_id,
    client_interceptors,
    client_span,
    configure_tracing,
    current_query,
)
from creditnet.observability.interceptors import server_interceptors
from creditnet.observability.metrics import ServerMetrics
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity, node_server_name
from creditnet.rpc import ServerHandle, refusals, start_server

PROBE = "test.Probe"
probe_log = logging.getLogger("tests.observability.probe")


# --- identities and the process's tracer provider ----------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    trust: TrustStore
    bank: Identity
    nodes: dict[City, Identity]


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = CertificateAuthority.create()
    nodes = {c: issue_identity(ca, Role.node(c)) for c in (pilot.HEFEI, pilot.NANJING)}
    return Pki(ca, TrustStore(ca.cert), issue_identity(ca, Role.bank("B0310H231000001")), nodes)


@pytest.fixture(scope="session")
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """Spans of every tracer that uses the global provider (servers wired as in production)."""
    provider = configure_tracing("creditnet-tests")
    assert isinstance(trace.get_tracer_provider(), type(provider))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    yield exporter
    # The provider outlives these tests; the exporter stops keeping spans.
    exporter.shutdown()


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    span_exporter.clear()
    return span_exporter


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


# --- the probe service --------------------------------------------------------------------


class Probe:
    """Each method ends a call one way; `relay_to` is the channel `Relay` forwards on."""

    def __init__(self) -> None:
        self.relay_to: grpc.aio.Channel | None = None
        # Set: `Relay` sends with client_span on a plain channel, not through the interceptor.
        self.relay_server_name: str | None = None
        self.hang = asyncio.Event()
        self.ended: list[str] = []

    async def ok(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    @refusals
    async def denied(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise PermissionDenied("consent.revoked", "the enterprise has revoked this consent")

    async def crash(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("a bug")

    async def hang_until_cancelled(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await self.hang.wait()
        finally:
            self.ended.append("hang")
        return b""

    async def upload(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        n = 0
        async for _ in requests:
            n += 1
        return str(n).encode()

    async def watch(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request or b"0")):
            yield str(i).encode()

    async def who(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """What this server knows of the call: its query and trace; also logged."""
        query = current_query()
        if request:
            bind_query_id(request.decode(), verified=True)
        span = trace.get_current_span().get_span_context()
        probe_log.info("who was asked")
        return json.dumps(
            {
                "query_id": query.query_id if query else None,
                "verified": query.verified if query else None,
                "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
            }
        ).encode()

    async def relay(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Verify the query id sent in `request`, then ask the next server `Who`, as the aggregator does."""
        if request:
            bind_query_id(request.decode())
        assert self.relay_to is not None
        method = f"/{PROBE}/Who"
        if self.relay_server_name is None:
            answer: bytes = await self.relay_to.unary_unary(method)(b"", timeout=10)
            return answer
        with client_span(method, self.relay_server_name) as metadata:
            answer = await self.relay_to.unary_unary(method)(b"", timeout=10, metadata=metadata)
        return answer

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            PROBE,
            {
                "Ok": unary(self.ok),
                "Denied": unary(self.denied),
                "Crash": unary(self.crash),
                "Hang": unary(self.hang_until_cancelled),
                "Who": unary(self.who),
                "Relay": unary(self.relay),
                "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
            },
        )


@dataclass
class ProbeServer:
    city: City
    handle: ServerHandle
    probe: Probe
    metrics: ServerMetrics | None
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.handle.port}"

    async def stop(self) -> None:
        self.probe.hang.set()
        for ch in self.channels:
            await ch.close()
        await self.handle.server.stop(0)
        if self.metrics is not None:
            self.metrics.close()


def channel(
    target: str, identity: Identity, trust: TrustStore, server_name: str, *, traced: bool = True
) -> grpc.aio.Channel:
    """A mutual-TLS channel with (or without) the observability client interceptor.

    Built here rather than with channels.secure_channel so these tests mean the
    same thing before and after that function is given the interceptor.
    """
    creds = grpc.ssl_channel_credentials(trust.ca_pem, identity.key_pem, identity.cert_pem)
    return grpc.aio.secure_channel(
        target,
        creds,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)],
        interceptors=client_interceptors(server_name) if traced else None,
    )


StartProbe = Callable[..., Awaitable[ProbeServer]]


@pytest_asyncio.fixture
async def start_probe(pki: Pki) -> AsyncIterator[StartProbe]:
    started: list[ProbeServer] = []

    async def start(city: City = pilot.HEFEI, metrics: ServerMetrics | None = None) -> ProbeServer:
        probe = Probe()
        handle = await start_server(
            listen="127.0.0.1:0",
            identity=pki.nodes[city],
            trust=pki.trust,
            register=lambda server: server.add_generic_rpc_handlers((probe.handler(),)),
            service_names=[PROBE],
            interceptors=server_interceptors(metrics),
        )
        server = ProbeServer(city, handle, probe, metrics)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def probe_channel(pki: Pki, server: ProbeServer, *, traced: bool = True) -> grpc.aio.Channel:
    ch = channel(server.target, pki.bank, pki.trust, node_server_name(server.city), traced=traced)
    server.channels.append(ch)
    return ch


async def call(ch: grpc.aio.Channel, method: str, request: bytes = b"", **kw: Any) -> bytes:
    result: bytes = await ch.unary_unary(f"/{PROBE}/{method}")(request, **kw)
    return result


# --- scraping -----------------------------------------------------------------------------

Sample = tuple[str, frozenset[tuple[str, str]]]


async def scrape(port: int) -> dict[Sample, float]:
    """Every sample of the text exposition at http://127.0.0.1:port/metrics."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body: bytes = resp.read()
            return body.decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, patience: float = 30.0) -> None:
    """Wait for something the server does after the client already has its answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {patience:.0f} s: {what}")
        await asyncio.sleep(0.02)
