"""The aggregator bounds the calls pending on each node and reports them."""

from __future__ import annotations

import logging

import pytest

from creditnet.aggregator.directory import DEFAULT_MAX_PENDING_PER_NODE, NodeDirectory, NodeLoad
from creditnet.domain import City
from creditnet.network import free_port
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def directory(ca: CertificateAuthority, **kw: int) -> NodeDirectory:
    # Nothing listens there: a link only calls its node when asked to.
    nodes = {City.HEFEI: f"127.0.0.1:{free_port()}", City.NANJING: f"127.0.0.1:{free_port()}"}
    return NodeDirectory(nodes, issue_identity(ca, Role.aggregator()), TrustStore(ca.cert), **kw)


async def test_a_saturated_node_sheds_calls_and_only_that_node(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    d = directory(ca, max_pending_per_node=3)
    try:
        hefei, nanjing = d.links[City.HEFEI], d.links[City.NANJING]
        caplog.set_level(logging.INFO, logger="creditnet.aggregator.directory")
        assert [hefei.try_acquire() for _ in range(5)] == [True, True, True, False, False]
        assert hefei.saturated and hefei.shed == 2
        assert "3 calls pending" in hefei.saturation_reason()
        # One warning when shedding starts, not one per shed call.
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "hefei" in warnings[0].getMessage()
        assert nanjing.try_acquire()
        assert d.in_flight() == {City.HEFEI: 3, City.NANJING: 1}
        expected = [NodeLoad(City.HEFEI, 3, 3, 2), NodeLoad(City.NANJING, 1, 3, 0)]
        assert d.load() == sorted(expected, key=lambda x: x.city.proto)
        hefei.release()
        assert hefei.try_acquire()  # a freed slot is usable at once
        for _ in range(3):
            hefei.release()
        assert "no calls pending" in caplog.records[-1].getMessage()
        with pytest.raises(RuntimeError):
            hefei.release()
        # Shedding again after recovery warns again.
        for _ in range(4):
            hefei.try_acquire()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
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
