"""Trace context and query id carried in gRPC metadata: client → server → the next server."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from creditnet import pilot
from creditnet.observability import QUERY_ID_METADATA, client_span, outgoing_metadata, query_scope
from creditnet.observability.logs import CallContextFilter, JsonFormatter
from creditnet.observability.metrics import NodeMetrics
from creditnet.observability.tracing import TracingSetupError, configure_tracing, otlp_exporter_from_env
from creditnet.pki import node_server_name
from creditnet.querycontext import bind_query_id, current_query, parse_query_id
from creditnet.tracecontext import extract_context
from tests.observability.conftest import (
    PROBE,
    Pki,
    StartProbe,
    call,
    channel,
    eventually,
    probe_channel,
    probe_log,
    spans_named,
)

QUERY = str(uuid.uuid4())


# --- metadata helpers --------------------------------------------------------------------


def test_the_trace_context_round_trips_through_metadata() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("outer") as span, query_scope(QUERY):
        md = outgoing_metadata([("traceparent", "stale"), ("x-other", "kept"), (QUERY_ID_METADATA, "old")])
    ctx = span.get_span_context()
    keys = [k for k, _ in md]
    assert keys.count("traceparent") == 1 and keys.count(QUERY_ID_METADATA) == 1
    assert ("x-other", "kept") in md and (QUERY_ID_METADATA, QUERY) in md
    traceparent = dict(md)["traceparent"]
    assert traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert ctx.trace_flags.sampled
    remote = trace.get_current_span(extract_context(md)).get_span_context()
    assert remote.is_remote and (remote.trace_id, remote.span_id) == (ctx.trace_id, ctx.span_id)
    # Outside any span and query nothing is added; binary headers are ignored when reading.
    assert outgoing_metadata([("a", "b")]) == [("a", "b")]
    empty = extract_context([("traceparent-bin", b"\x00"), ("a", "b")])
    assert not trace.get_current_span(empty).get_span_context().is_valid


def test_only_uuid_query_ids_are_ever_bound() -> None:
    assert parse_query_id(QUERY.upper()) == QUERY
    assert parse_query_id(QUERY.encode()) == QUERY
    for bad in (None, "", "drop table", "x" * 100, b"\xff\xfe", "1234"):
        assert parse_query_id(bad) is None
    with pytest.raises(ValueError, match="a query id is a UUID"):
        bind_query_id("not-a-uuid")
    with pytest.raises(ValueError, match="a query id is a UUID"), query_scope("nope"):
        pass
    other = str(uuid.uuid4())
    with query_scope(QUERY):
        bind_query_id(other, verified=False)  # a claim never replaces a verified id
        assert current_query() is not None and current_query().query_id == QUERY  # type: ignore[union-attr]
        with query_scope(None):
            assert current_query() is None
        assert current_query().query_id == QUERY  # type: ignore[union-attr]
    assert current_query() is None


def test_otlp_export_is_an_error_without_the_exporter_installed() -> None:
    assert otlp_exporter_from_env({}) is None
    with pytest.raises(TracingSetupError, match="OTEL_EXPORTER_OTLP_ENDPOINT is set"):
        otlp_exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})


# --- over real servers --------------------------------------------------------------------


@pytest.mark.parametrize("sent_with", ["interceptor", "client_span"])
async def test_one_trace_from_the_client_through_a_relay_to_the_next_server(
    pki: Pki, start_probe: StartProbe, spans: InMemorySpanExporter, sent_with: str
) -> None:
    """As a bank → aggregator → node: every hop's span in one trace, the query id passed on."""
    relay = await start_probe(pilot.HEFEI)
    last = await start_probe(pilot.NANJING)
    nanjing = node_server_name(pilot.NANJING)
    explicit = sent_with == "client_span"
    relay.probe.relay_to = channel(
        last.target, pki.nodes[pilot.HEFEI], pki.trust, nanjing, traced=not explicit
    )
    relay.probe.relay_server_name = nanjing if explicit else None
    relay.channels.append(relay.probe.relay_to)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CallContextFilter())
    probe_log.addHandler(handler)
    probe_log.setLevel(logging.INFO)
    try:
        with query_scope(QUERY):
            answer = json.loads(await call(probe_channel(pki, relay), "Relay", QUERY.encode(), timeout=10))
    finally:
        probe_log.removeHandler(handler)

    client = spans_named(spans, f"{PROBE}/Relay")
    servers = spans_named(spans, f"{PROBE}/Who")
    (bank_call,) = [s for s in client if s.kind is SpanKind.CLIENT]
    (relay_server,) = [s for s in client if s.kind is SpanKind.SERVER]
    (relay_call,) = [s for s in servers if s.kind is SpanKind.CLIENT]
    (last_server,) = [s for s in servers if s.kind is SpanKind.SERVER]
    chain = [bank_call, relay_server, relay_call, last_server]
    trace_ids = {s.context.trace_id for s in chain}
    assert len(trace_ids) == 1
    assert bank_call.parent is None
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert relay_server.attributes["creditnet.query_id"] == QUERY  # verified by the relay
    assert last_server.attributes["creditnet.claimed_query_id"] == QUERY  # sent on, not yet verified
    assert relay_call.attributes["server.address"] == "320100.node.creditnet"
    assert relay_server.attributes["rpc.service"] == PROBE
    assert relay_server.attributes["rpc.grpc.status_code"] == 0
    assert all(s.status.status_code is not StatusCode.ERROR for s in chain)
    # What the last server saw, and logged, during its call.
    trace_id = f"{trace_ids.pop():032x}"
    assert answer == {"query_id": QUERY, "verified": False, "trace_id": trace_id}
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["message"] == "who was asked"
    assert line["claimed_query_id"] == QUERY and line["trace_id"] == trace_id
    assert line["span_id"] == f"{last_server.context.span_id:016x}"


async def test_a_call_without_context_starts_a_trace_and_bad_query_ids_are_dropped(
    pki: Pki, start_probe: StartProbe, spans: InMemorySpanExporter
) -> None:
    server = await start_probe(pilot.HEFEI, NodeMetrics(pilot.HEFEI))
    ch = probe_channel(pki, server, traced=False)
    answer = json.loads(
        await ch.unary_unary(f"/{PROBE}/Who")(b"", metadata=((QUERY_ID_METADATA, "x'; drop"),), timeout=10)
    )
    assert answer["query_id"] is None
    (span,) = spans_named(spans, f"{PROBE}/Who")
    assert span.kind is SpanKind.SERVER and span.parent is None
    assert answer["trace_id"] == f"{span.context.trace_id:032x}"
    assert "creditnet.claimed_query_id" not in (span.attributes or {})
    assert span.attributes is not None and span.attributes["creditnet.city"] == "340100"


async def test_refusals_and_deadlines_reach_the_caller_unchanged_and_mark_the_spans(
    pki: Pki, start_probe: StartProbe, spans: InMemorySpanExporter
) -> None:
    server = await start_probe(pilot.HEFEI)
    ch = probe_channel(pki, server)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await call(ch, "Denied", timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked this consent" in (denied.value.details() or "")
    assert await call(ch, "Ok", b"fine", timeout=10) == b"fine"
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await call(ch, "Hang", timeout=0.2)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The aggregator also bounds each node call with asyncio.wait_for.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ch.unary_unary(f"/{PROBE}/Hang")(b"", timeout=30), timeout=0.2)

    def kind_of(name: str, kind: SpanKind) -> list[trace.Span]:
        return [s for s in spans_named(spans, f"{PROBE}/{name}") if s.kind is kind]  # type: ignore[misc]

    for kind in (SpanKind.CLIENT, SpanKind.SERVER):
        (span,) = kind_of("Denied", kind)
        assert span.status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]  # type: ignore[attr-defined]
    (ok,) = kind_of("Ok", SpanKind.CLIENT)
    assert ok.attributes["rpc.grpc.status_code"] == 0  # type: ignore[attr-defined]
    codes = sorted(s.attributes["rpc.grpc.status_code"] for s in kind_of("Hang", SpanKind.CLIENT))  # type: ignore[attr-defined]
    assert codes == [grpc.StatusCode.CANCELLED.value[0], grpc.StatusCode.DEADLINE_EXCEEDED.value[0]]

    async def servers_ended() -> bool:
        return len(kind_of("Hang", SpanKind.SERVER)) == 2

    await eventually(servers_ended, "both hanging calls ended on the server")
    assert server.probe.ended == ["hang", "hang"]


async def test_probes_are_not_traced(pki: Pki, start_probe: StartProbe, spans: InMemorySpanExporter) -> None:
    server = await start_probe(pilot.HEFEI)
    await health_pb2_grpc.HealthStub(probe_channel(pki, server)).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert spans.get_finished_spans() == ()


def test_configure_tracing_keeps_the_first_provider(span_exporter: InMemorySpanExporter) -> None:
    first = trace.get_tracer_provider()
    assert configure_tracing("another-service") is first


async def test_client_span_ends_with_the_status_of_what_left_it(spans: InMemorySpanExporter) -> None:
    class Refused(Exception):
        code = grpc.StatusCode.PERMISSION_DENIED

    method = "/creditnet.v2.AggregatorService/FederatedQuery"
    with query_scope(QUERY), client_span(method, "aggregator.creditnet") as metadata:
        sent = dict(metadata)
    for exc in (TimeoutError(), asyncio.CancelledError(), Refused(), RuntimeError("bug")):
        with pytest.raises(type(exc)), client_span(method):
            raise exc
    with client_span("/grpc.health.v1.Health/Check") as untraced:
        assert untraced == []
    ok, *failed = spans_named(spans, "creditnet.v2.AggregatorService/FederatedQuery")
    assert ok.kind is SpanKind.CLIENT and ok.parent is None
    trace_and_span = [f"{ok.context.trace_id:032x}", f"{ok.context.span_id:016x}"]
    assert sent["traceparent"].split("-")[1:3] == trace_and_span
    assert sent[QUERY_ID_METADATA] == QUERY
    assert ok.attributes is not None and ok.attributes["creditnet.query_id"] == QUERY
    assert ok.attributes["server.address"] == "aggregator.creditnet" and ok.status.is_ok
    assert [s.attributes["rpc.grpc.status_code"] for s in failed] == [  # type: ignore[index]
        grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
        grpc.StatusCode.CANCELLED.value[0],
        grpc.StatusCode.PERMISSION_DENIED.value[0],
        grpc.StatusCode.UNKNOWN.value[0],
    ]
    assert all(s.status.status_code is StatusCode.ERROR for s in failed)
    assert len(spans.get_finished_spans()) == 5
