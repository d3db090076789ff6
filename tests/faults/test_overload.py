"""Overload on real processes: bounded calls, per-bank rates and message sizes answer RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditnet import pilot
from creditnet import query as query_mod
from creditnet.aggregator.directory import DEFAULT_MAX_PENDING_PER_NODE
from creditnet.channels import MAX_RECEIVE_BYTES, secure_channel
from creditnet.domain import Purpose
from creditnet.errors import RETRY_AFTER_KEY
from creditnet.limits import CONCURRENCY_RULE, RATE_LIMITED_RULE
from creditnet.network import DEMO_BANK, SECOND_BANK, NetworkLayout, grant_demo_consent
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.provider import signed_request
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, node_pb2, node_pb2_grpc
from creditnet_bank import BankClient
from tests.faults.conftest import AGGREGATOR, PATIENCE, FaultNetwork, eventually
from tests.faults.ingest import CITY, batch, enterprise, stored_per_batch

pytestmark = pytest.mark.slow


def oversized_channel(
    target: str, identity: Identity, trust: TrustStore, server_name: str
) -> grpc.aio.Channel:
    """A client that would send more than any server accepts: the limit must be the server's."""
    creds = grpc.ssl_channel_credentials(trust.ca_pem, identity.key_pem, identity.cert_pem)
    return grpc.aio.secure_channel(
        target,
        creds,
        options=[
            ("grpc.max_send_message_length", 4 * MAX_RECEIVE_BYTES),
            ("grpc.ssl_target_name_override", server_name),
        ],
    )


def query_of(size: int) -> node_pb2.QueryRequest:
    return node_pb2.QueryRequest(query=envelope_pb2.SignedEnvelope(payload=b"\0" * size))


async def test_requests_over_the_size_limit_are_refused(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    bank = fault_layout.bank(DEMO_BANK)
    node_target = fault_layout.node_endpoint(pilot.NANJING)
    async with oversized_channel(node_target, bank, fault_trust, node_server_name(pilot.NANJING)) as channel:
        stub = node_pb2_grpc.CityNodeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await stub.Query(query_of(MAX_RECEIVE_BYTES + 1024), timeout=30)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Under the limit the same nonsense reaches the node's checks instead.
        with pytest.raises(grpc.aio.AioRpcError) as small:
            await stub.Query(query_of(MAX_RECEIVE_BYTES - 1024), timeout=30)
        assert small.value.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
    agg_target = fault_layout.aggregator_endpoint
    async with oversized_channel(agg_target, bank, fault_trust, AGGREGATOR_SERVER_NAME) as channel:
        request = aggregator_pb2.FederatedQueryRequest(
            query=envelope_pb2.SignedEnvelope(payload=b"\0" * (MAX_RECEIVE_BYTES + 1024))
        )
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await aggregator_pb2_grpc.AggregatorServiceStub(channel).FederatedQuery(request, timeout=30)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Both servers are still serving.
    await network.wait_serving(pilot.NANJING)
    await network.wait_serving(AGGREGATOR)


async def test_calls_beyond_a_nodes_bound_are_refused_at_once_and_it_keeps_serving(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    bound = 3
    network.env[CITY.value] = {"CREDITNET_MAX_CONCURRENT_RPCS": str(bound)}
    await network.kill(CITY)
    network.restart(CITY)
    await network.wait_serving(CITY)
    provider = fault_layout.provider(CITY)
    release = asyncio.Event()
    runs = [uuid.uuid4().hex[:8] for _ in range(bound)]
    uscc = enterprise(runs[0])

    def holding_stream(run: str) -> AsyncIterator[node_pb2.SubmitRecordsRequest]:
        async def stream() -> AsyncIterator[node_pb2.SubmitRecordsRequest]:
            yield signed_request(provider, batch(run, 0, uscc))
            await release.wait()

        return stream()

    target, name = fault_layout.node_endpoint(CITY), node_server_name(CITY)
    async with (
        secure_channel(target, provider, fault_trust, name) as provider_channel,
        secure_channel(target, fault_layout.bank(DEMO_BANK), fault_trust, name) as bank_channel,
    ):
        stub = node_pb2_grpc.CityNodeServiceStub(provider_channel)
        held = [asyncio.ensure_future(stub.SubmitRecords(holding_stream(r), timeout=60)) for r in runs]
        try:

            async def all_streams_served() -> bool:
                stored = await asyncio.gather(
                    *(asyncio.to_thread(stored_per_batch, fault_layout, uscc, r) for r in runs)
                )
                return all(stored)

            # Each stream's first batch is stored: all `bound` slots are taken.
            await eventually(all_streams_served, "the node serves every held stream")
            bank = node_pb2_grpc.CityNodeServiceStub(bank_channel)
            results = await asyncio.gather(
                *(bank.GetNodeInfo(node_pb2.GetNodeInfoRequest(), timeout=10) for _ in range(30)),
                return_exceptions=True,
            )
            assert all(isinstance(r, grpc.aio.AioRpcError) for r in results), results
            errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all(CONCURRENCY_RULE in (e.details() or "") for e in errors)
            health = health_pb2_grpc.HealthStub(bank_channel)
            status = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            release.set()
        assert [r.batches for r in await asyncio.gather(*held)] == [1] * bound
        info = await node_pb2_grpc.CityNodeServiceStub(bank_channel).GetNodeInfo(
            node_pb2.GetNodeInfoRequest(), timeout=10
        )
        assert info.city == CITY.proto


async def test_a_bank_over_its_rate_is_refused_with_a_retry_hint_and_others_are_not(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    network.env[AGGREGATOR] = {"CREDITNET_RATE_LIMIT_PER_BANK": "3/h"}
    await network.kill(AGGREGATOR)
    network.restart(AGGREGATOR)
    await network.wait_serving(AGGREGATOR)
    target = fault_layout.aggregator_endpoint

    async def list_nodes(code: str) -> aggregator_pb2.ListNodesResponse:
        async with secure_channel(target, fault_layout.bank(code), fault_trust, AGGREGATOR_SERVER_NAME) as ch:
            stub = aggregator_pb2_grpc.AggregatorServiceStub(ch)
            resp: aggregator_pb2.ListNodesResponse = await stub.ListNodes(
                aggregator_pb2.ListNodesRequest(), timeout=10
            )
            return resp

    for _ in range(3):
        await list_nodes(SECOND_BANK)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await list_nodes(SECOND_BANK)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (err.value.details() or "").startswith(f"{RATE_LIMITED_RULE}: bank {SECOND_BANK} ")
    trailers = err.value.trailing_metadata()
    assert trailers is not None and int(trailers[RETRY_AFTER_KEY]) > 0
    # Another bank has its own bucket.
    assert len((await list_nodes(DEMO_BANK)).nodes) == 5


async def test_the_bank_sdk_waits_out_a_rate_limit_as_the_server_says(
    network: FaultNetwork, fault_layout: NetworkLayout, caplog: pytest.LogCaptureFixture
) -> None:
    network.env[AGGREGATOR] = {"CREDITNET_RATE_LIMIT_PER_BANK": "1/s"}
    await network.kill(AGGREGATOR)
    network.restart(AGGREGATOR)
    await network.wait_serving(AGGREGATOR)
    await eventually(network.aggregator_reaches_all, "the aggregator reaches every node")
    consent = grant_demo_consent(fault_layout)
    caplog.set_level(logging.INFO, logger="creditnet_bank.client")
    async with BankClient.from_network(fault_layout.root / "network.json") as bank:
        # The second query finds the bank's bucket empty; the SDK waits as
        # told and is answered, within the query's own deadline.
        reports = [
            await bank.query(fault_layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=15)
            for _ in range(2)
        ]
    assert all(not r.missing_cities for r in reports), [r.missing_cities for r in reports]
    assert any("retrying in" in r.getMessage() for r in caplog.records)


async def test_one_banks_flood_leaves_another_banks_query_every_city(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    # The per-bank rate would turn most of the flood away at the door; here it
    # all comes in, as the share of a rate limit that is admitted does.
    network.env[AGGREGATOR] = {"CREDITNET_RATE_LIMIT_PER_BANK": "off"}
    await network.kill(AGGREGATOR)
    network.restart(AGGREGATOR)
    await network.wait_serving(AGGREGATOR)
    await eventually(network.aggregator_reaches_all, "the aggregator reaches every node")
    flooder = fault_layout.bank(DEMO_BANK)
    flood_consent = grant_demo_consent(fault_layout)
    other_consent = grant_demo_consent(fault_layout, bank=SECOND_BANK)
    workers, rounds = 3 * DEFAULT_MAX_PENDING_PER_NODE, 30
    done = asyncio.Event()
    flooder_turned_away = asyncio.Event()

    async def flood(stub: aggregator_pb2_grpc.AggregatorServiceStub) -> None:
        for _ in range(rounds):
            if done.is_set():
                return
            query = query_mod.build(
                flooder,
                flood_consent,
                enterprise_uscc=fault_layout.demo_enterprise,
                purpose=Purpose.LOAN_APPLICATION,
            )
            try:
                resp = await stub.FederatedQuery(
                    aggregator_pb2.FederatedQueryRequest(query=query), timeout=30
                )
            except grpc.aio.AioRpcError:
                continue
            if any("calls pending" in s.reason for s in resp.sections):
                flooder_turned_away.set()

    target = fault_layout.aggregator_endpoint
    async with (
        secure_channel(target, flooder, fault_trust, AGGREGATOR_SERVER_NAME) as channel,
        BankClient.from_network(fault_layout.root / "network.json", bank=SECOND_BANK) as other,
    ):
        stub = aggregator_pb2_grpc.AggregatorServiceStub(channel)
        flooding = [asyncio.ensure_future(flood(stub)) for _ in range(workers)]
        try:
            # The flood holds all the slots it may on some node before the other bank asks.
            await asyncio.wait_for(flooder_turned_away.wait(), timeout=PATIENCE)
            reports = [
                await other.query(
                    fault_layout.demo_enterprise, other_consent, Purpose.LOAN_APPLICATION, timeout=30
                )
                for _ in range(3)
            ]
        finally:
            done.set()
            await asyncio.gather(*flooding)
    missing = [
        [(s.city, s.status, s.reason) for s in r.sections if s.city in r.missing_cities] for r in reports
    ]
    assert missing == [[], [], []]
