"""The aggregator bounds the calls pending on each node and reports them."""

from __future__ import annotations

import logging

import pytest

from creditnet import pilot
from creditnet.aggregator.directory import (
    DEFAULT_MAX_PENDING_PER_NODE,
    NodeDirectory,
    NodeLoad,
    acting_for,
)
from creditnet.network import free_port
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def directory(ca: CertificateAuthority, **kw: int) -> NodeDirectory:
    # Nothing listens there: a link only calls its node when asked to.
    nodes = {pilot.HEFEI: f"127.0.0.1:{free_port()}", pilot.NANJING: f"127.0.0.1:{free_port()}"}
    return NodeDirectory(nodes, issue_identity(ca, Role.aggregator()), TrustStore(ca.cert), **kw)


async def test_a_saturated_node_sheds_calls_and_only_that_node(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    d = directory(ca, max_pending_per_node=6)
    try:
        hefei, nanjing = d.links[pilot.HEFEI], d.links[pilot.NANJING]
        caplog.set_level(logging.INFO, logger="creditnet.aggregator.directory")
        # Three banks take their shares (6 // (banks + 1) each) until the node is full.
        for bank, taken in (("A", 3), ("B", 2), ("C", 1)):
            with acting_for(bank):
                assert [hefei.try_acquire() for _ in range(taken)] == [True] * taken
        assert hefei.saturated and hefei.held == {"A": 3, "B": 2, "C": 1}
        with acting_for("D"):
            assert [hefei.try_acquire() for _ in range(2)] == [False, False]
            assert "6 calls pending" in hefei.saturation_reason()
        assert hefei.shed == 2
        # One warning when shedding starts, not one per shed call.
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "340100" in warnings[0].getMessage()
        with acting_for("D"):
            assert nanjing.try_acquire()
        assert d.in_flight() == {pilot.HEFEI: 6, pilot.NANJING: 1}
        expected = [NodeLoad(pilot.HEFEI, 6, 6, 2), NodeLoad(pilot.NANJING, 1, 6, 0)]
        assert d.load() == sorted(expected, key=lambda x: x.city.proto)
        with acting_for("C"):
            hefei.release()
        with acting_for("D"):
            assert hefei.try_acquire()  # a freed slot is usable at once
            hefei.release()
        for bank, taken in (("A", 3), ("B", 2)):
            with acting_for(bank):
                for _ in range(taken):
                    hefei.release()
        assert "no calls pending" in caplog.records[-1].getMessage()
        with pytest.raises(RuntimeError), acting_for("A"):
            hefei.release()
    finally:
        await d.close()


async def test_no_bank_takes_every_slot_of_a_node(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    d = directory(ca, max_pending_per_node=8)
    try:
        link = d.links[pilot.HEFEI]
        caplog.set_level(logging.WARNING, logger="creditnet.aggregator.directory")
        with acting_for("A"):
            # Alone, a bank holds half the slots; the rest wait for others.
            assert sum(link.try_acquire() for _ in range(20)) == 4
            assert "this bank already has 4 calls pending" in link.saturation_reason()
        assert not link.saturated
        with acting_for("B"):
            # Another bank still gets its share: 8 // 3 with two banks holding slots.
            assert sum(link.try_acquire() for _ in range(20)) == 2
        with acting_for("A"):
            # A, over its new share, gets nothing until it is back under it.
            link.release()
            link.release()
            assert not link.try_acquire()
        with acting_for("C"):
            # Slots stay free for a third bank: 8 // 4 now.
            assert sum(link.try_acquire() for _ in range(20)) == 2
        assert link.held == {"A": 2, "B": 2, "C": 2} and not link.saturated
        # One warning per bank when it first reaches its share.
        assert len([r for r in caplog.records if "its share" in r.getMessage()]) == 3
    finally:
        await d.close()


async def test_the_bound_has_a_default_and_must_be_positive(ca: CertificateAuthority) -> None:
    d = directory(ca)
    try:
        assert {lk.max_in_flight for lk in d.links.values()} == {DEFAULT_MAX_PENDING_PER_NODE}
    finally:
        await d.close()
    with pytest.raises(ValueError, match="max_pending_per_node"):
        directory(ca, max_pending_per_node=0)
