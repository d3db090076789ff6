"""An aggregator replica cut off from its database refuses rather than answer from what it last saw.

Two replicas share a PostgreSQL database; replica 0 reaches it through a TCP
relay the test can cut. Once cut, replica 0 refuses every query
`UNAVAILABLE` `aggregator.database` (it cannot tell whether the consent was
revoked), and a bank that lists both replicas is answered by the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import make_url

from creditnet.config import AggregatorConfig
from creditnet.domain import Purpose
from creditnet.network import InProcessNetwork, NetworkLayout, grant_demo_consent, provision
from creditnet.pki import TrustStore
from creditnet.store.scratch import ScratchDatabases, ServerUnavailable
from creditnet_bank import BankClient, QueryRefused, SectionStatus
from tests.integration.conftest import skip_without_postgres

pytestmark = pytest.mark.postgres

ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)


class Relay:
    """A TCP relay to the database that can be cut: its connections closed, new ones refused."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@pytest_asyncio.fixture
async def replicas(
    scratch: ScratchDatabases, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[NetworkLayout, Relay]]:
    try:
        url = scratch.create("aggregator_cut")
    except ServerUnavailable as exc:
        skip_without_postgres(f"{exc}: the aggregator database test needs PostgreSQL")
    layout = provision(
        tmp_path_factory.mktemp("cut"),
        enterprises_per_city=10,
        seed=5,
        aggregator_replicas=2,
        aggregator_database_url=url,
    )
    target = make_url(url)
    relay = Relay(target.host or "127.0.0.1", target.port or 5432)
    port = await relay.start()
    # Replica 0 reaches the same database through the relay.
    first = layout.aggregator_configs[0]
    config = AggregatorConfig.load(first)
    config.database_url = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    config.save(first)
    net = InProcessNetwork(layout)
    await net.start()
    try:
        yield layout, relay
    finally:
        await net.stop()
        with contextlib.suppress(Exception):
            await relay.cut()


async def test_a_replica_cut_off_from_its_database_refuses_and_the_bank_is_answered_by_the_other(
    replicas: tuple[NetworkLayout, Relay],
) -> None:
    layout, relay = replicas
    trust = TrustStore.load(layout.ca)
    consent = grant_demo_consent(layout)
    first, second = layout.aggregator_endpoints
    async with BankClient(aggregator=first, identity=layout.bank(), trust=trust, timeout=10) as only_first:
        # Through the relay, replica 0 answers like any.
        report = await only_first.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION)
        assert all(s.status in ANSWERED for s in report.sections)
        await relay.cut()
        with pytest.raises(QueryRefused) as refused:
            await only_first.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION, timeout=3)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason.startswith("aggregator.database: ")
    async with BankClient(aggregator=[first, second], identity=layout.bank(), trust=trust) as both:
        report = await both.query(layout.demo_enterprise, consent, Purpose.LOAN_APPLICATION)
        assert all(s.status in ANSWERED for s in report.sections)
        assert both.endpoints[both.replicas.preferred] == second
