"""The bank SDK given several aggregator endpoints: it passes over one down or frozen, never a refusal."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import grpc
import pytest

from creditnet.domain import Purpose
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout, free_port, grant_demo_consent
from creditnet.pki import TrustStore
from creditnet.rpc import start_server, taken
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc
from creditnet_bank import BankClient, QueryRefused, SectionStatus
from creditnet_bank.hedging import HedgePolicy
from creditnet_bank.replicas import LIST_NODES, aggregator_endpoints

ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)


@asynccontextmanager
async def listener(*, silent: bool) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP port that counts the connections it accepts and drops each (an endpoint that never
    answers) or, `silent`, holds each open saying nothing (what a frozen process's kernel does)."""
    accepted: list[int] = []
    held: list[asyncio.StreamWriter] = []

    async def take(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        if silent:
            held.append(writer)
        else:
            writer.close()

    server = await asyncio.start_server(take, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", accepted
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


def counting_listener() -> AbstractAsyncContextManager[tuple[str, list[int]]]:
    return listener(silent=False)


def silent_listener() -> AbstractAsyncContextManager[tuple[str, list[int]]]:
    return listener(silent=True)


class SlowAggregator(aggregator_pb2_grpc.AggregatorServiceServicer):
    """An aggregator whose ListNodes takes `seconds`, saying at once that it took the call or not."""

    def __init__(self, seconds: float, *, announce: bool) -> None:
        self.seconds = seconds
        self.announce = announce

    async def ListNodes(
        self, request: aggregator_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> aggregator_pb2.ListNodesResponse:
        if self.announce:
            await taken(context)
        await asyncio.sleep(self.seconds)
        return aggregator_pb2.ListNodesResponse(nodes=[aggregator_pb2.NodeStatus(endpoint="slow")])


@asynccontextmanager
async def slow_aggregator(
    layout: NetworkLayout, trust: TrustStore, servicer: SlowAggregator
) -> AsyncIterator[str]:
    handle = await start_server(
        listen="127.0.0.1:0",
        identity=layout.identity("aggregator", "national"),
        trust=trust,
        register=lambda server: aggregator_pb2_grpc.add_AggregatorServiceServicer_to_server(servicer, server),
        service_names=["creditnet.v2.AggregatorService"],
    )
    try:
        yield f"127.0.0.1:{handle.port}"
    finally:
        await handle.stop(0)


async def test_a_query_is_hedged_past_a_frozen_endpoint_and_answered_within_its_deadline(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    async with (
        silent_listener() as (frozen, accepted),
        BankClient(
            aggregator=[frozen, layout.aggregator_endpoint], identity=layout.bank(), trust=trust
        ) as bank,
    ):
        consent = grant_demo_consent(layout)
        # Without a hedge this call would wait on the frozen endpoint to its deadline and fail.
        report = await asyncio.wait_for(
            bank.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=10), 30
        )
        assert all(s.status in ANSWERED for s in report.sections)
        assert accepted, "the frozen endpoint was asked first"
        # The next call goes to the endpoint that answered, and is answered.
        assert bank.endpoints[bank.replicas.preferred] == layout.aggregator_endpoint
        report = await bank.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=10)
        assert all(s.status in ANSWERED for s in report.sections)


@pytest.mark.parametrize("announce", [True, False], ids=["takes-the-call", "says-nothing"])
async def test_a_slow_endpoint_that_took_the_call_is_waited_for_and_one_that_did_not_is_hedged(
    layout: NetworkLayout, trust: TrustStore, announce: bool
) -> None:
    async with (
        slow_aggregator(layout, trust, SlowAggregator(2.0, announce=announce)) as slow,
        counting_listener() as (other, accepted),
        BankClient(aggregator=[slow, other], identity=layout.bank(), trust=trust, timeout=20) as bank,
    ):
        # Generous for a replica that announces itself (a loaded machine's handshake
        # included), short for one that says nothing: neither is raced.
        bank.replicas.policies[LIST_NODES] = HedgePolicy(first_delay=1.5 if announce else 0.3)
        nodes = await asyncio.wait_for(bank.nodes(), 30)
    # Either way the slow endpoint's answer is the one taken (the other drops every call).
    assert [n.endpoint for n in nodes.nodes] == ["slow"]
    if announce:
        assert accepted == [], "a replica that took the call was hedged"
    else:
        assert accepted, "a replica that said nothing was not hedged"


async def test_a_replica_that_took_the_call_and_went_quiet_is_hedged_within_the_deadline(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    async with (
        slow_aggregator(layout, trust, SlowAggregator(3600, announce=True)) as frozen_mid_call,
        BankClient(
            aggregator=[frozen_mid_call, layout.aggregator_endpoint], identity=layout.bank(), trust=trust
        ) as bank,
    ):
        # It took the call at once, so only the late delay (half the budget,
        # with no answer seen yet) sends the call to the other replica.
        nodes = await asyncio.wait_for(bank.nodes(timeout=8), 30)
        assert {n.city for n in nodes.nodes} == {c.proto for c in layout.cities}
        assert bank.endpoints[bank.replicas.preferred] == layout.aggregator_endpoint


@pytest.mark.parametrize("answers", [0, 2])
async def test_a_unary_call_answered_with_no_message_or_several_fails_internal(
    layout: NetworkLayout, trust: TrustStore, answers: int
) -> None:
    async def stream(
        request: aggregator_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[aggregator_pb2.ListNodesResponse]:
        for _ in range(answers):
            yield aggregator_pb2.ListNodesResponse()

    # A server that streams where the method is unary: the SDK reads calls as streams (to see
    # their headers early), so it must hold them to one message itself.
    handler = grpc.method_handlers_generic_handler(
        "creditnet.v2.AggregatorService",
        {
            "ListNodes": grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=aggregator_pb2.ListNodesRequest.FromString,
                response_serializer=aggregator_pb2.ListNodesResponse.SerializeToString,
            )
        },
    )
    server = await start_server(
        listen="127.0.0.1:0",
        identity=layout.identity("aggregator", "national"),
        trust=trust,
        register=lambda s: s.add_generic_rpc_handlers((handler,)),
        service_names=["creditnet.v2.AggregatorService"],
    )
    try:
        async with BankClient(
            aggregator=f"127.0.0.1:{server.port}", identity=layout.bank(), trust=trust
        ) as bank:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await bank.nodes(timeout=10)
    finally:
        await server.stop(0)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert ("no message" if answers == 0 else "more than one message") in (failed.value.details() or "")


async def test_a_query_passes_over_an_endpoint_where_nothing_listens(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with BankClient(
        aggregator=[dead, layout.aggregator_endpoint], identity=layout.bank(), trust=trust, timeout=10
    ) as bank:
        report = await bank.query(
            layout.demo_enterprise, grant_demo_consent(layout), Purpose.LOAN_APPLICATION
        )
        assert all(s.status in ANSWERED for s in report.sections)
        # The next call goes to the endpoint that answered.
        assert bank.endpoints[bank.replicas.preferred] == layout.aggregator_endpoint


async def test_a_refusal_is_an_answer_and_is_not_asked_of_another_endpoint(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore
) -> None:
    # The consent was granted to another bank: the aggregator refuses the query.
    foreign = grant_demo_consent(layout, bank="B0002H231000002")
    async with (
        counting_listener() as (other, accepted),
        BankClient(
            aggregator=[layout.aggregator_endpoint, other], identity=layout.bank(), trust=trust, timeout=5
        ) as bank,
    ):
        with pytest.raises(QueryRefused) as refused:
            await bank.query(layout.demo_enterprise, foreign, Purpose.LOAN_APPLICATION)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert accepted == []


async def test_with_every_endpoint_down_the_query_fails_unavailable_within_its_deadline(
    layout: NetworkLayout, trust: TrustStore
) -> None:
    async with (
        counting_listener() as (first, accepted),
        counting_listener() as (second, accepted_second),
        BankClient(aggregator=[first, second], identity=layout.bank(), trust=trust) as bank,
    ):
        with pytest.raises(QueryRefused) as refused:
            # wait_for only bounds a hang: the client gives up at its own deadline.
            await asyncio.wait_for(
                bank.query(
                    layout.demo_enterprise,
                    grant_demo_consent(layout),
                    Purpose.LOAN_APPLICATION,
                    timeout=1.5,
                ),
                10,
            )
    assert refused.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    # Both endpoints were tried.
    assert accepted and accepted_second


async def test_the_cli_takes_repeated_aggregator_endpoints_and_tries_each(
    layout: NetworkLayout, tmp_path: Path
) -> None:
    bank = layout.data["identities"]["banks"][DEMO_BANK]
    consent_file = tmp_path / "consent.json"
    grant_demo_consent(layout, save_to=consent_file)
    async with counting_listener() as (first, accepted), counting_listener() as (second, accepted_second):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "creditnet", "query",
            "--uscc", layout.demo_enterprise, "--consent", str(consent_file), "--purpose", "loan_application",
            "--aggregator", first, "--aggregator", second,
            "--cert", str(layout.path(bank["cert"])), "--key", str(layout.path(bank["key"])),
            "--ca", str(layout.ca), "--timeout", "1.5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "query refused" in err.decode()
    assert accepted and accepted_second


async def test_a_revocation_is_delivered_through_the_next_aggregator_past_one_down_and_one_frozen(
    network: InProcessNetwork, layout: NetworkLayout, tmp_path: Path
) -> None:
    enterprise = layout.data["identities"]["enterprises"][layout.demo_enterprise]
    consent_file = tmp_path / "consent.json"
    grant_demo_consent(layout, save_to=consent_file)
    async with silent_listener() as (frozen, accepted):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "creditnet", "consent", "revoke",
            "--consent", str(consent_file), "--out", str(tmp_path / "revocation.json"),
            "--cert", str(layout.path(enterprise["cert"])), "--key", str(layout.path(enterprise["key"])),
            "--aggregator", f"127.0.0.1:{free_port()}", "--aggregator", frozen,
            "--aggregator", layout.aggregator_endpoint, "--ca", str(layout.ca),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert accepted, "the frozen aggregator was asked"
    assert proc.returncode == 0, err.decode()
    delivered = [line.split()[0] for line in out.decode().splitlines() if line.endswith(" delivered")]
    assert delivered == [c.value for c in layout.cities]


def test_endpoints_are_a_list_or_comma_separated_and_never_repeated() -> None:
    assert aggregator_endpoints("a:1, b:2") == ["a:1", "b:2"]
    assert aggregator_endpoints(["a:1", "b:2,c:3"]) == ["a:1", "b:2", "c:3"]
    with pytest.raises(ValueError, match="no aggregator endpoint"):
        aggregator_endpoints(" , ")
    with pytest.raises(ValueError, match="given twice"):
        aggregator_endpoints(["a:1", "a:1"])
