"""The network checkpoint's round reads the cities that changed, not every city (issue 9, item 4).

A round reads a city's checkpoint when the aggregator relayed a query to it
or cosigned a new checkpoint of its log (or could not read it last time), and
besides one city in `sweep_rounds` in turn: without the sweep, a quiet network costs no reads.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from creditnet import pilot
from creditnet import uscc as uscc_mod
from creditnet.aggregator.head import NetworkCheckpointer
from creditnet.chain.network import verify_network_checkpoint
from creditnet.domain import Purpose
from creditnet.network import InProcessNetwork, NetworkLayout, provision
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet_bank import BankClient
from tests.integration.helpers import consent


@pytest.fixture(scope="module")
def slayout(tmp_path_factory: pytest.TempPathFactory) -> NetworkLayout:
    return provision(tmp_path_factory.mktemp("rounds"), enterprises_per_city=4, seed=5, routing=True)


@pytest_asyncio.fixture(scope="module")
async def snetwork(slayout: NetworkLayout) -> AsyncIterator[InProcessNetwork]:
    net = InProcessNetwork(slayout)
    await net.start()
    yield net
    await net.stop()


async def quiet_head(net: InProcessNetwork) -> tuple[NetworkCheckpointer, list[int]]:
    """The aggregator's checkpointer with its loop stopped (the test runs the rounds), no sweeps,
    and every city read once; the reads each later round starts."""
    assert net.aggregator is not None and net.aggregator.service.head is not None
    head = net.aggregator.service.head
    await head.stop()
    head.sweep_rounds = 0
    reads: list[int] = []
    head.on_round = reads.append
    # Bounded: the nodes publish their first cosigned checkpoints as they start.
    for _ in range(150):
        await head.refresh()
        if len(head.head.cities) == len(pilot.CITIES) and reads[-1] == 0:
            break
        await asyncio.sleep(0.2)
    assert len(head.head.cities) == len(pilot.CITIES), head.head.cities
    reads.clear()
    return head, reads


async def test_a_quiet_round_reads_no_city_and_a_query_makes_the_next_read_only_the_cities_asked(
    snetwork: InProcessNetwork, slayout: NetworkLayout
) -> None:
    head, reads = await quiet_head(snetwork)
    before = dict(head.head.cities)
    await head.refresh()
    await head.refresh()
    assert reads == [0, 0] and head.head.cities == before

    enterprise = issue_identity(
        CertificateAuthority.load(slayout.root / "pki"),
        Role.enterprise(uscc_mod.make_uscc(random.Random("rounds"), pilot.HEFEI, entity="92")),
    )
    uscc = enterprise.role.subject
    async with BankClient.from_network(slayout.root / "network.json") as bank:
        report = await bank.query(
            uscc, consent(slayout, enterprise=enterprise, uscc=uscc), Purpose.LOAN_APPLICATION
        )
    asked = {s.city for s in report.sections if s.asked}
    assert pilot.HEFEI in asked and len(asked) < len(pilot.CITIES)

    await head.refresh()
    assert reads[-1] == len(asked)
    # The asked cities' logs grew and the new network checkpoint says so; the others stand.
    note = verify_network_checkpoint(
        TrustStore.load(slayout.ca), head.head.note, [head.log_key.certificate_der]
    )
    grown = {c for c in pilot.CITIES if note.cities[c.value][0] > before[c.value][0]}
    assert grown <= asked and pilot.HEFEI in grown
    assert all(note.cities[c.value][0] == before[c.value][0] for c in pilot.CITIES if c not in asked)
