"""Servers restarted under a client: a crashed aggregator mid-query, and graceful SIGTERM drains."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from creditnet import pilot
from creditnet.channels import secure_channel
from creditnet.domain import Purpose
from creditnet.network import NetworkLayout, grant_demo_consent
from creditnet.pki import TrustStore, node_server_name
from creditnet.provider import signed_request
from creditnet.v2 import node_pb2, node_pb2_grpc, query_pb2
from creditnet_bank import BankClient, SectionStatus
from tests.faults.conftest import AGGREGATOR, FaultNetwork, answered, eventually, network_json
from tests.faults.ingest import CITY as INGEST_CITY
from tests.faults.ingest import batch, enterprise, stored_per_batch

pytestmark = pytest.mark.slow

ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)
# serve_until_signalled's grace period (CREDITNET_SHUTDOWN_GRACE's default).
GRACE = 5.0


def query_id(env: object) -> str:
    q = query_pb2.CreditQuery()
    q.ParseFromString(env.payload)  # type: ignore[attr-defined]
    return q.query_id


async def test_a_client_retries_through_an_aggregator_crash_and_no_node_answers_twice(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    # A frozen node keeps the aggregator waiting: the query is surely in flight when it dies.
    slow = pilot.JIAXING
    live = [c for c in pilot.CITIES if c is not slow]
    operator = network.operator
    old_aggregator = network.proc(AGGREGATOR).pid
    async with BankClient.from_network(network_json(fault_layout)) as bank:
        env = bank.sign_query(
            fault_layout.demo_enterprise, grant_demo_consent(fault_layout), Purpose.LOAN_APPLICATION
        )
        qid = query_id(env)
        network.freeze(slow)
        try:
            sent = asyncio.create_task(bank.send(env, timeout=40))

            async def live_nodes_answered() -> bool:
                counts = await answered(fault_layout, live, qid, operator, fault_trust)
                return all(n == 1 for n in counts.values())

            await eventually(live_nodes_answered, "the live nodes answer the first attempt")
            assert not sent.done()
            # The aggregator crashes with the query in flight, and comes back.
            await network.kill(AGGREGATOR)
            network.restart(AGGREGATOR)
        finally:
            network.thaw(slow)
        # The client retried the same envelope with backoff until the new aggregator answered.
        report = await sent
    assert network.proc(AGGREGATOR).pid != old_aggregator
    by_city = {s.city: s for s in report.sections}
    # The cities that answered the lost attempt send that same answer again.
    for city in live:
        assert by_city[city].status in ANSWERED, by_city[city]
    # The frozen node may still be answering the lost attempt when the retry
    # comes: then the retry is a replay, refused.
    assert by_city[slow].status in (*ANSWERED, SectionStatus.DENIED), by_city[slow]
    # Every node answered this query id at most once, whatever reached it.
    counts = await answered(fault_layout, list(pilot.CITIES), qid, operator, fault_trust)
    assert all(n <= 1 for n in counts.values()), counts
    assert all(counts[c] == 1 for c in live), counts


async def test_sigterm_drains_the_aggregators_calls_in_flight_and_exits_cleanly(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    slow = pilot.HANGZHOU
    live = [c for c in pilot.CITIES if c is not slow]
    async with BankClient.from_network(network_json(fault_layout)) as bank:
        env = bank.sign_query(
            fault_layout.demo_enterprise, grant_demo_consent(fault_layout), Purpose.LOAN_APPLICATION
        )
        qid = query_id(env)
        network.freeze(slow)
        try:
            # The aggregator waits for the frozen node until just before this
            # deadline, which ends within the grace period.
            sent = asyncio.create_task(bank.send(env, timeout=GRACE - 1))

            async def in_flight() -> bool:
                counts = await answered(fault_layout, live, qid, network.operator, fault_trust)
                return all(n == 1 for n in counts.values())

            await eventually(in_flight, "the query is in flight at the aggregator")
            network.terminate(AGGREGATOR)
            report = await sent
        finally:
            network.thaw(slow)
    by_city = {s.city: s.status for s in report.sections}
    assert by_city[slow] is SectionStatus.TIMEOUT
    assert all(by_city[c] in ANSWERED for c in live), by_city
    assert await network.wait_exit(AGGREGATOR) == 0
    assert "draining in-flight calls" in network.log(AGGREGATOR)


async def test_sigterm_stops_a_node_within_the_grace_period_even_with_a_stream_left_open(
    network: FaultNetwork, fault_layout: NetworkLayout, fault_trust: TrustStore
) -> None:
    city = INGEST_CITY
    run = uuid.uuid4().hex[:8]
    never = asyncio.Event()

    async def open_stream() -> AsyncIterator[node_pb2.SubmitRecordsRequest]:
        yield signed_request(provider, batch(run, 0, enterprise(run)))
        await never.wait()  # a provider that never finishes its stream

    provider = fault_layout.provider(city)
    async with secure_channel(
        fault_layout.node_endpoint(city), provider, fault_trust, node_server_name(city)
    ) as channel:
        call = node_pb2_grpc.CityNodeServiceStub(channel).SubmitRecords(open_stream(), timeout=60)

        async def serving_the_stream() -> bool:
            return bool(await asyncio.to_thread(stored_per_batch, fault_layout, enterprise(run), run))

        await eventually(serving_the_stream, "the node stores the stream's first batch")
        network.terminate(city)
        # The node waits out the grace period for the stream, then cancels it and exits 0.
        assert await network.wait_exit(city) == 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        never.set()
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert "draining in-flight calls" in network.log(city)
