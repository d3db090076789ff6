"""The aggregator's network checkpoint does not wait for a node that has stopped answering."""

from __future__ import annotations

import asyncio
from pathlib import Path

from creditnet import pilot
from creditnet.aggregator.directory import NodeDirectory
from creditnet.aggregator.head import FETCH_TIMEOUT, NetworkCheckpointer
from creditnet.aggregator.state import AggregatorState
from creditnet.chain.keys import LogKey
from creditnet.chain.network import verify_network_checkpoint
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.store import Store
from creditnet.witness.server import Witness
from tests.chain.peers import unresponsive_endpoint


async def test_a_frozen_node_holds_back_no_round_of_the_network_checkpoint(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    trust = TrustStore(ca.cert)
    key = LogKey.issue(ca, "national")
    store = Store.open(f"sqlite:///{tmp_path / 'national.db'}", migrate=True)
    async with unresponsive_endpoint() as frozen:
        directory = NodeDirectory({pilot.HEFEI: frozen}, issue_identity(ca, Role.aggregator()), trust)
        head = NetworkCheckpointer(directory, trust, key, Witness(store, key), AggregatorState(store), 3)
        try:
            # Each round ends well before the 2 s a read of the frozen node
            # takes to time out: the first waits a bounded while for it, the
            # next ones not at all.
            notes = [await asyncio.wait_for(head.refresh(), FETCH_TIMEOUT * 0.75) for _ in range(3)]
            signed = verify_network_checkpoint(trust, notes[-1], [key.certificate_der])
            assert signed.sequence >= 1 and signed.cities["340100"][0] == 0
        finally:
            await head.stop()
            for link in directory.links.values():
                await link.channel.close()
            store.close()
