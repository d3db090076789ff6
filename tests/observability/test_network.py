"""A federated query on a real in-process network: one trace, and counted by every server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from creditnet import pilot
from creditnet.domain import City
from creditnet.network import InProcessNetwork, grant_demo_consent, provision
from creditnet.v2 import query_pb2
from creditnet_bank import BankClient
from tests.observability.conftest import sample, scrape

FEDERATED = "creditnet.v2.AggregatorService/FederatedQuery"
NODE_QUERY = "creditnet.v2.CityNodeService/Query"


@pytest_asyncio.fixture(scope="module")
async def network(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessNetwork]:
    layout = provision(tmp_path_factory.mktemp("observed-network"), enterprises_per_city=5, seed=11)
    async with InProcessNetwork(layout) as net:
        yield net


async def federated_query(net: InProcessNetwork) -> str:
    """Send one query through the bank SDK; its id."""
    consent = grant_demo_consent(net.layout)
    async with BankClient.from_network(Path(net.layout.root) / "network.json") as bank:
        env = bank.sign_query(net.layout.demo_enterprise, consent, "loan_application")
        report = await bank.send(env, timeout=30)
    assert not report.missing_cities, report.missing_cities
    return query_pb2.CreditQuery.FromString(env.payload).query_id


async def test_a_federated_query_is_one_trace_from_the_bank_to_every_node(
    network: InProcessNetwork, span_exporter: InMemorySpanExporter
) -> None:
    span_exporter.clear()
    query_id = await federated_query(network)
    spans = span_exporter.get_finished_spans()

    (bank_call,) = [s for s in spans if s.name == FEDERATED and s.kind is SpanKind.CLIENT]
    (aggregator,) = [s for s in spans if s.name == FEDERATED and s.kind is SpanKind.SERVER]
    node_calls = [s for s in spans if s.name == NODE_QUERY and s.kind is SpanKind.CLIENT]
    node_servers = [s for s in spans if s.name == NODE_QUERY and s.kind is SpanKind.SERVER]
    trace_id = bank_call.context.trace_id
    assert bank_call.parent is None
    assert aggregator.parent is not None and aggregator.parent.span_id == bank_call.context.span_id
    assert len(node_calls) == len(node_servers) == len(pilot.CITIES)
    assert {s.context.trace_id for s in [aggregator, *node_calls, *node_servers]} == {trace_id}

    calls_by_id = {c.context.span_id: c for c in node_calls}
    cities = set()
    for server in node_servers:
        assert server.attributes is not None and server.parent is not None
        city = City.parse(str(server.attributes["creditnet.city"]))
        cities.add(city)
        # Each node's span hangs under the aggregator's call to that same node.
        client = calls_by_id[server.parent.span_id]
        assert client.attributes is not None
        assert client.attributes["server.address"] == f"{city.value}.node.creditnet"
        assert client.parent is not None and client.parent.span_id == aggregator.context.span_id
        # The node verified the query id itself.
        assert server.attributes["creditnet.query_id"] == query_id
        assert server.attributes["rpc.grpc.status_code"] == 0
    assert cities == set(pilot.CITIES)
    assert aggregator.attributes is not None and aggregator.attributes["creditnet.query_id"] == query_id
    assert bank_call.attributes is not None and bank_call.attributes["creditnet.query_id"] == query_id


async def test_a_federated_query_is_counted_by_the_aggregator_and_every_node(
    network: InProcessNetwork,
) -> None:
    aggregator = network.aggregator
    assert aggregator is not None
    agg_metrics = aggregator.metrics
    endpoint = agg_metrics.serve(0, "127.0.0.1")
    try:
        node_value = {c: network.nodes[c].metrics.registry.get_sample_value for c in pilot.CITIES}
        answered = {
            "grpc_type": "unary",
            "grpc_service": "creditnet.v2.CityNodeService",
            "grpc_method": "Query",
        }

        def sections(got: dict, city: City) -> float:  # type: ignore[type-arg]
            return sum(
                sample(got, "creditnet_aggregator_sections_total", city=city.value, status=s) or 0
                for s in ("ok", "no_records")
            )

        before = await scrape(endpoint.port)
        handled_before = {
            c: node_value[c]("grpc_server_handled_total", {**answered, "grpc_code": "OK"}) or 0
            for c in pilot.CITIES
        }
        answered_before = {
            c: node_value[c]("creditnet_node_queries_answered_total") or 0 for c in pilot.CITIES
        }
        await federated_query(network)
        after = await scrape(endpoint.port)

        federated = {
            "grpc_type": "unary",
            "grpc_service": "creditnet.v2.AggregatorService",
            "grpc_method": "FederatedQuery",
            "grpc_code": "OK",
        }
        assert (sample(after, "grpc_server_handled_total", **federated) or 0) == (
            sample(before, "grpc_server_handled_total", **federated) or 0
        ) + 1
        for city in pilot.CITIES:
            assert sections(after, city) == sections(before, city) + 1
            assert sample(after, "creditnet_aggregator_node_in_flight", city=city.value) == 0
            assert (
                node_value[city]("grpc_server_handled_total", {**answered, "grpc_code": "OK"})
                == handled_before[city] + 1
            )
            assert node_value[city]("creditnet_node_queries_answered_total") == answered_before[city] + 1
            assert (node_value[city]("creditnet_chain_size") or 0) >= 1
    finally:
        agg_metrics.close()
