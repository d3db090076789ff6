"""Prometheus metrics, scraped over HTTP from real servers and parsed from the text format."""

from __future__ import annotations

import asyncio
import inspect
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet import pilot
from creditnet.aggregator.directory import NodeDirectory, acting_for
from creditnet.chain.keys import LogKey
from creditnet.dates import ts_to_proto, utcnow
from creditnet.ledger.log import Ledger
from creditnet.observability.metrics import (
    SECTION_STATUSES,
    AggregatorMetrics,
    MetricsError,
    NodeMetrics,
    ServerMetrics,
    section_status_label,
)
from creditnet.pki import Role, issue_identity
from creditnet.rpc import start_server
from creditnet.store import AsyncStore, Store
from creditnet.v2 import aggregator_pb2, chain_pb2, chain_pb2_grpc
from creditnet.witness.link import WitnessLink
from creditnet.witness.server import Witness, WitnessService
from tests.observability.conftest import (
    PROBE,
    Pki,
    StartProbe,
    call,
    eventually,
    probe_channel,
    sample,
    scrape,
)

HANDLED = "grpc_server_handled_total"
STARTED = "grpc_server_started_total"


def fresh_store(path: Path) -> Store:
    # Store.open is gaining an explicit `migrate` (a fresh file must then ask
    # for its schema); this works on either side of that change.
    if "migrate" in inspect.signature(Store.open).parameters:
        return Store.open(f"sqlite:///{path}", migrate=True)
    return Store.open(f"sqlite:///{path}", migrate=True)


def unary(method: str, code: str | None = None) -> dict[str, str]:
    labels = {"grpc_type": "unary", "grpc_service": PROBE, "grpc_method": method}
    return labels if code is None else {**labels, "grpc_code": code}


async def test_calls_are_counted_by_method_and_final_status(pki: Pki, start_probe: StartProbe) -> None:
    metrics = NodeMetrics(pilot.HEFEI)
    server = await start_probe(pilot.HEFEI, metrics)
    endpoint = metrics.serve(0, "127.0.0.1")
    ch = probe_channel(pki, server, traced=False)
    assert await call(ch, "Ok", b"a") == b"a"
    assert await call(ch, "Ok", b"b") == b"b"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await call(ch, "Denied")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as crashed:
        await call(ch, "Crash")
    assert crashed.value.code() == grpc.StatusCode.UNKNOWN
    await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)

    got = await scrape(endpoint.port)
    assert sample(got, STARTED, **unary("Ok")) == 2
    assert sample(got, HANDLED, **unary("Ok", "OK")) == 2
    assert sample(got, HANDLED, **unary("Denied", "PERMISSION_DENIED")) == 1
    assert sample(got, HANDLED, **unary("Crash", "UNKNOWN")) == 1
    assert sample(got, HANDLED, **unary("Ok", "PERMISSION_DENIED")) is None
    health = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert sample(got, HANDLED, **health, grpc_code="OK") == 1
    # The latency histogram: one observation per call, cumulative buckets.
    assert sample(got, "grpc_server_handling_seconds_count", **unary("Ok")) == 2
    assert sample(got, "grpc_server_handling_seconds_bucket", **unary("Ok"), le="+Inf") == 2
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in got.items()
        if name == "grpc_server_handling_seconds_bucket" and dict(labels)["grpc_method"] == "Denied"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1][1] == 1
    assert (sample(got, "grpc_server_handling_seconds_sum", **unary("Ok")) or 0) > 0
    info = {"role": "node", "city": "340100"}
    assert any(n == "creditnet_server_info" and info.items() <= dict(lb).items() for n, lb in got)


async def test_streams_and_cancelled_calls_are_counted(pki: Pki, start_probe: StartProbe) -> None:
    metrics = NodeMetrics(pilot.HEFEI)
    server = await start_probe(pilot.HEFEI, metrics)
    endpoint = metrics.serve(0, "127.0.0.1")
    ch = probe_channel(pki, server, traced=False)

    async def items() -> object:
        for i in range(3):
            yield str(i).encode()

    assert await ch.stream_unary(f"/{PROBE}/Upload")(items(), timeout=10) == b"3"
    assert [r async for r in ch.unary_stream(f"/{PROBE}/Watch")(b"4", timeout=10)] == [
        b"0",
        b"1",
        b"2",
        b"3",
    ]
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await call(ch, "Hang", timeout=0.2)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def labels(kind: str, method: str) -> dict[str, str]:
        return {"grpc_type": kind, "grpc_service": PROBE, "grpc_method": method, "grpc_code": "OK"}

    got = await scrape(endpoint.port)
    assert sample(got, HANDLED, **labels("client_stream", "Upload")) == 1
    assert sample(got, HANDLED, **labels("server_stream", "Watch")) == 1

    async def hang_counted() -> bool:
        # The server learns of the deadline after the client gave up.
        return sample(await scrape(endpoint.port), HANDLED, **unary("Hang", "CANCELLED")) == 1

    await eventually(hang_counted, "the call past its deadline counted as CANCELLED")
    assert server.probe.ended == ["hang"]


async def test_each_server_has_its_own_registry_and_endpoint(pki: Pki, start_probe: StartProbe) -> None:
    # The same kind of metrics twice in one process: a shared registry would refuse the second.
    first, second = NodeMetrics(pilot.HEFEI), NodeMetrics(pilot.HEFEI)
    hefei = await start_probe(pilot.HEFEI, first)
    await start_probe(pilot.NANJING, second)
    first_ep, second_ep = first.serve(0, "127.0.0.1"), second.serve(0, "127.0.0.1")
    assert first_ep.port != second_ep.port
    await call(probe_channel(pki, hefei, traced=False), "Ok")
    assert sample(await scrape(first_ep.port), HANDLED, **unary("Ok", "OK")) == 1
    assert sample(await scrape(second_ep.port), HANDLED, **unary("Ok", "OK")) is None


async def test_the_endpoint_is_served_once_and_closes() -> None:
    metrics = ServerMetrics("node", pilot.HEFEI)
    endpoint = metrics.serve(0, "127.0.0.1")
    assert metrics.endpoint is endpoint
    with pytest.raises(MetricsError, match="already served"):
        metrics.serve(0, "127.0.0.1")
    assert any(name == "creditnet_server_info" for name, _ in await scrape(endpoint.port))
    metrics.close()
    assert metrics.endpoint is None
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{endpoint.port}/metrics", None, 5)
    metrics.close()  # closing twice is harmless
    with pytest.raises(MetricsError, match="0-65535"):
        metrics.serve(70000)


def test_node_query_and_ingestion_counters() -> None:
    metrics = NodeMetrics(pilot.HEFEI)
    value = metrics.registry.get_sample_value
    # Every ingestion outcome exists from the start, at zero.
    assert value("creditnet_ingest_records_total", {"outcome": "rejected"}) == 0
    metrics.ingest_batch(accepted=7, duplicates=2, rejected=1)
    metrics.ingest_batch(accepted=3, duplicates=0, rejected=4)
    metrics.query_answered(records_disclosed=12)
    metrics.query_answered(records_disclosed=0)
    metrics.query_refused("consent.revoked")
    metrics.query_refused("consent.revoked")
    metrics.query_refused("query.replay")
    assert value("creditnet_ingest_records_total", {"outcome": "accepted"}) == 10
    assert value("creditnet_ingest_records_total", {"outcome": "duplicate"}) == 2
    assert value("creditnet_ingest_records_total", {"outcome": "rejected"}) == 5
    assert value("creditnet_ingest_batches_total") == 2
    assert value("creditnet_node_queries_answered_total") == 2
    assert value("creditnet_node_records_disclosed_total") == 12
    assert value("creditnet_node_queries_refused_total", {"rule": "consent.revoked"}) == 2
    assert value("creditnet_node_queries_refused_total", {"rule": "query.replay"}) == 1
    with pytest.raises(MetricsError, match="negative"):
        metrics.ingest_batch(accepted=-1, duplicates=0, rejected=0)
    with pytest.raises(MetricsError, match="negative"):
        metrics.query_answered(records_disclosed=-1)
    with pytest.raises(MetricsError, match="short name"):
        metrics.query_refused("")
    # Refused input changed nothing.
    assert value("creditnet_ingest_batches_total") == 2
    assert value("creditnet_node_queries_answered_total") == 2


async def test_the_ledger_is_reported_at_scrape_time(pki: Pki, tmp_path: Path) -> None:
    """A real ledger with one real witness: sizes, group commits and the witness's progress."""
    nanjing_key = LogKey.issue(pki.ca, pilot.NANJING.value)
    witness_store = fresh_store(tmp_path / "320100.db")
    service = WitnessService(Witness(witness_store, nanjing_key), pki.trust)
    witness_server = await start_server(
        listen="127.0.0.1:0",
        identity=pki.nodes[pilot.NANJING],
        trust=pki.trust,
        register=lambda s: chain_pb2_grpc.add_WitnessServiceServicer_to_server(service, s),
        service_names=["creditnet.v2.WitnessService"],
    )
    hefei = issue_identity(pki.ca, Role.node(pilot.HEFEI))
    link = WitnessLink.connect("320100", f"127.0.0.1:{witness_server.port}", hefei, pki.trust)
    store = AsyncStore(fresh_store(tmp_path / "340100.db"))
    ledger = Ledger(store, LogKey.issue(pki.ca, "340100"), witnesses=[link], quorum=1)
    metrics = NodeMetrics(pilot.HEFEI)
    metrics.watch_ledger(ledger)
    endpoint = metrics.serve(0, "127.0.0.1")
    ledger.start()
    try:
        before = await scrape(endpoint.port)
        assert sample(before, "creditnet_chain_size") == 0
        assert sample(before, "creditnet_chain_published_size") == 0
        assert sample(before, "creditnet_chain_witness_size", witness="320100") == -1
        entries = [
            chain_pb2.LedgerEntry(
                kind=chain_pb2.ENTRY_KIND_CONSENT_REVOKED,
                time=ts_to_proto(utcnow()),
                city=pilot.HEFEI.proto,
                consent_id=f"c-{i}",
            )
            for i in range(6)
        ]
        appended = await asyncio.gather(*(ledger.append(e) for e in entries))
        last = max(a.index for a in appended)
        await ledger.receipt(last, appended[-1].entry, 30)
        published = ledger.published
        assert published is not None

        async def caught_up() -> bool:
            got = await scrape(endpoint.port)
            return sample(got, "creditnet_chain_published_size") == 6 == ledger.committed_size

        await eventually(caught_up, "the scrape shows all six entries published")
        got = await scrape(endpoint.port)
        assert sample(got, "creditnet_chain_size") == 6
        assert sample(got, "creditnet_chain_unpublished_entries") == 0
        assert sample(got, "creditnet_chain_quorum") == 1
        assert sample(got, "creditnet_chain_published_cosignatures") == 1
        commits = sample(got, "creditnet_chain_group_commits_total")
        assert commits == ledger.group_commits and commits is not None and 1 <= commits <= 6
        assert sample(got, "creditnet_chain_witness_size", witness="320100") == 6
        assert sample(got, "creditnet_chain_witness_ok", witness="320100") == 1
    finally:
        metrics.close()
        await ledger.stop()
        await store.close()
        await witness_server.server.stop(0)
        witness_store.close()


def test_sections_are_counted_by_city_and_status() -> None:
    metrics = AggregatorMetrics(pilot.CITIES)
    value = metrics.registry.get_sample_value
    # Every city and status exists from the start, at zero.
    for city in pilot.CITIES:
        for status in ("ok", "no_records", "denied", "unavailable", "timeout", "invalid", "not_asked"):
            assert value("creditnet_aggregator_sections_total", {"city": city.value, "status": status}) == 0
    assert set(SECTION_STATUSES) == {
        "ok", "no_records", "denied", "unavailable", "timeout", "invalid", "not_asked",
    }  # fmt: skip
    S = aggregator_pb2
    for city, status, ms in [
        (pilot.HEFEI, S.SECTION_STATUS_OK, 12),
        (pilot.HEFEI, S.SECTION_STATUS_OK, 30),
        (pilot.NANJING, S.SECTION_STATUS_NO_RECORDS, 8),
        (pilot.JIAXING, S.SECTION_STATUS_DENIED, 5),
        (pilot.SHANGHAI, S.SECTION_STATUS_UNAVAILABLE, 1),
        (pilot.HANGZHOU, S.SECTION_STATUS_TIMEOUT, 2000),
    ]:
        metrics.observe_section(S.CitySection(city=city.proto, status=status, latency_ms=ms))
    metrics.not_asked(pilot.JIAXING)
    counts = {
        (c.value, s): value("creditnet_aggregator_sections_total", {"city": c.value, "status": s})
        for c in pilot.CITIES
        for s in SECTION_STATUSES
    }
    assert {k: v for k, v in counts.items() if v} == {
        ("340100", "ok"): 2,
        ("320100", "no_records"): 1,
        ("330400", "denied"): 1,
        ("310000", "unavailable"): 1,
        ("330100", "timeout"): 1,
        ("330400", "not_asked"): 1,
    }
    assert value("creditnet_aggregator_section_seconds_count", {"city": "340100"}) == 2
    assert value("creditnet_aggregator_section_seconds_sum", {"city": "340100"}) == pytest.approx(0.042)
    assert value("creditnet_aggregator_section_seconds_bucket", {"city": "330100", "le": "1.0"}) == 0
    assert value("creditnet_aggregator_section_seconds_bucket", {"city": "330100", "le": "2.5"}) == 1
    assert section_status_label(S.SECTION_STATUS_NO_RECORDS) == "no_records"
    with pytest.raises(MetricsError, match="unknown section status"):
        metrics.observe_section(S.CitySection(city=pilot.HEFEI.proto, status=S.SECTION_STATUS_UNSPECIFIED))
    with pytest.raises(MetricsError, match="unknown section status"):
        metrics.section(pilot.HEFEI, "lost", 0.1)
    assert value("creditnet_aggregator_sections_total", {"city": "340100", "status": "ok"}) == 2


async def test_pending_calls_per_node_are_read_from_the_directory(pki: Pki) -> None:
    aggregator = issue_identity(pki.ca, Role.aggregator())
    # Channels connect lazily: nothing listens there, and nothing needs to.
    directory = NodeDirectory(
        {pilot.HEFEI: "127.0.0.1:9", pilot.NANJING: "127.0.0.1:9"},
        aggregator,
        pki.trust,
        max_pending_per_node=2,
    )
    metrics = AggregatorMetrics(pilot.CITIES)
    metrics.watch_directory(directory.load)
    endpoint = metrics.serve(0, "127.0.0.1")
    try:
        hefei = directory.get(pilot.HEFEI)
        assert hefei is not None
        # One slot each for two banks (a bank alone holds at most half): saturated.
        with acting_for("A"):
            assert hefei.try_acquire()
        with acting_for("B"):
            assert hefei.try_acquire()
            assert not hefei.try_acquire()  # shed
        got = await scrape(endpoint.port)
        assert sample(got, "creditnet_aggregator_node_in_flight", city="340100") == 2
        assert sample(got, "creditnet_aggregator_node_in_flight", city="320100") == 0
        assert sample(got, "creditnet_aggregator_node_max_in_flight", city="340100") == 2
        assert sample(got, "creditnet_aggregator_node_shed_total", city="340100") == 1
        with acting_for("B"):
            hefei.release()
        got = await scrape(endpoint.port)
        assert sample(got, "creditnet_aggregator_node_in_flight", city="340100") == 1
    finally:
        metrics.close()
        await directory.close()
