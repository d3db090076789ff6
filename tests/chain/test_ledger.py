"""The node's credit-chain log: group commit, witnesses, receipts, restarts, tampering."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import update

from creditnet import pilot
from creditnet.chain.checkpoint import Checkpoint
from creditnet.chain.keys import LogKey
from creditnet.chain.merkle import leaf_hash, root_from_leaves
from creditnet.chain.receipts import ReceiptError, check_commitment, enterprise_commitment, verify_receipt
from creditnet.dates import ts_to_proto
from creditnet.ledger.log import COSIGN_TIMEOUT, Ledger
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.rpc import ServerHandle, start_server
from creditnet.store import AsyncStore, Store
from creditnet.store.models import CHAIN_ENTRIES, CHAIN_HASHES, CHAIN_META
from creditnet.v2 import chain_pb2, chain_pb2_grpc
from creditnet.witness.link import WitnessLink
from creditnet.witness.server import Witness, WitnessService
from tests.chain.peers import unresponsive_endpoint

USCC = "91340104JURQ283FQ8"


@dataclass
class WitnessNode:
    name: str
    key: LogKey
    witness: Witness
    handle: ServerHandle
    store: Store


@dataclass
class Rig:
    ca: CertificateAuthority
    trust: TrustStore
    hefei: Identity
    log_key: LogKey
    witnesses: list[WitnessNode]
    tmp: Path

    def ledger(self, quorum: int = 3, names: list[str] | None = None) -> Ledger:
        links = [
            WitnessLink.connect(w.name, f"127.0.0.1:{w.handle.port}", self.hefei, self.trust)
            for w in self.witnesses
            if names is None or w.name in names
        ]
        store = AsyncStore(Store.open(f"sqlite:///{self.tmp / '340100.db'}", migrate=True))
        return Ledger(store, self.log_key, witnesses=links, quorum=quorum)


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ca = CertificateAuthority.create()
    trust = TrustStore(ca.cert)
    witnesses = []
    for city in (pilot.SHANGHAI, pilot.NANJING, pilot.HANGZHOU, pilot.JIAXING):
        key = LogKey.issue(ca, city.value)
        ident = issue_identity(ca, Role.node(city))
        store = Store.open(f"sqlite:///{tmp_path / f'{city.value}.db'}", migrate=True)
        witness = Witness(store, key)
        service = WitnessService(witness, trust)
        handle = await start_server(
            listen="127.0.0.1:0",
            identity=ident,
            trust=trust,
            register=lambda s, svc=service: chain_pb2_grpc.add_WitnessServiceServicer_to_server(svc, s),
            service_names=["creditnet.v2.WitnessService"],
        )
        witnesses.append(WitnessNode(city.value, key, witness, handle, store))
    rig = Rig(
        ca, trust, issue_identity(ca, Role.node(pilot.HEFEI)), LogKey.issue(ca, "340100"), witnesses, tmp_path
    )
    yield rig
    for w in witnesses:
        await w.handle.server.stop(0)
        w.store.close()


def entry(i: int) -> chain_pb2.LedgerEntry:
    return chain_pb2.LedgerEntry(
        kind=chain_pb2.ENTRY_KIND_QUERY_ANSWERED,
        time=ts_to_proto(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)),
        city=pilot.HEFEI.proto,
        query_id=f"q-{i}",
        bank_code="B0310H231000001",
    )


async def test_concurrent_appends_are_group_committed_and_every_receipt_verifies(rig: Rig) -> None:
    ledger = rig.ledger()
    ledger.start()
    try:
        appended = await asyncio.gather(*(ledger.append(entry(i), USCC) for i in range(60)))
        assert sorted(a.index for a in appended) == list(range(60))
        assert ledger.group_commits < 60  # concurrent appends shared transactions
        receipts = await asyncio.gather(*(ledger.receipt(a.index, a.entry, 10) for a in appended))
        for a, r in zip(appended, receipts, strict=True):
            vr = verify_receipt(rig.trust, r, "340100")
            assert vr.index == a.index and vr.entry.SerializeToString(deterministic=True) == a.entry
            assert check_commitment(vr.entry, USCC, a.salt)
            assert not check_commitment(vr.entry, "91310000MA1FL8XQ37", a.salt)
            assert len(vr.checkpoint.cosignatures) >= 3
    finally:
        await ledger.stop()
        await ledger._astore.close()


async def test_receipt_fails_for_a_tampered_entry_or_too_few_witnesses(rig: Rig) -> None:
    ledger = rig.ledger()
    ledger.start()
    try:
        a = await ledger.append(entry(1), USCC)
        r = await ledger.receipt(a.index, a.entry, 10)
        forged = chain_pb2.Receipt()
        forged.CopyFrom(r)
        forged.entry = entry(2).SerializeToString()
        with pytest.raises(ReceiptError, match="not in the checkpoint"):
            verify_receipt(rig.trust, forged, "340100")
        with pytest.raises(ReceiptError):
            verify_receipt(rig.trust, r, "320100")  # not Nanjing's log
        with pytest.raises(ReceiptError):
            verify_receipt(rig.trust, r, "340100", quorum=5)
    finally:
        await ledger.stop()
        await ledger._astore.close()


async def test_no_quorum_no_receipt(rig: Rig) -> None:
    ledger = rig.ledger(names=["310000", "320100"])  # two witnesses, three needed
    ledger.start()
    try:
        a = await ledger.append(entry(1))
        with pytest.raises(TimeoutError):
            await ledger.receipt(a.index, a.entry, 0.8)
    finally:
        await ledger.stop()
        await ledger._astore.close()


async def test_a_restarted_log_keeps_its_entries_roots_and_checkpoint(rig: Rig) -> None:
    ledger = rig.ledger()
    ledger.start()
    appended = [await ledger.append(entry(i)) for i in range(7)]
    await ledger.receipt(6, appended[6].entry, 10)
    root = ledger.log.tree.root()
    await ledger.stop()
    await ledger._astore.close()

    again = rig.ledger()
    assert again.log.tree.size == 7 and again.log.tree.root() == root
    assert again.published is not None and again.published.size == 7
    again.start()
    # What was published before the restart still gives receipts a bank can
    # check: the witnesses' certificates were kept with the checkpoint.
    kept = await again.receipt(6, appended[6].entry, 1)
    assert verify_receipt(rig.trust, kept, "340100").index == 6
    try:
        a = await again.append(entry(7))
        assert a.index == 7
        # The witnesses accept the restarted log: it extends what they cosigned.
        r = await again.receipt(a.index, a.entry, 10)
        verify_receipt(rig.trust, r, "340100")
        leaves = [leaf_hash(e) for _, e in again.log.entries(0, 8)]
        assert root_from_leaves(leaves) == again.log.tree.root()
    finally:
        await again.stop()
        await again._astore.close()


async def test_witnesses_refuse_a_rewritten_history_and_keep_evidence(rig: Rig) -> None:
    ledger = rig.ledger()
    ledger.start()
    for i in range(5):
        await ledger.append(entry(i))
    await ledger.wait_published(4, 10)
    await ledger.stop()
    await ledger._astore.close()
    # The operator rewrites entry 2 in the database and recomputes every hash,
    # so the node's own view is coherent — but it is not what was cosigned.
    store = ledger._store
    rewritten = entry(99).SerializeToString()
    with store.write_transaction() as conn:
        conn.execute(update(CHAIN_ENTRIES).where(CHAIN_ENTRIES.c.idx == 2).values(entry=rewritten))
        conn.execute(CHAIN_HASHES.delete())
        conn.execute(update(CHAIN_META).values(size=0))
    store.close()
    tampered = rig.ledger()
    entries = [e for _, e in tampered.log.entries(0, 5)]
    tampered.log._pending = []
    tampered.log.tree.append_many(entries)  # rebuild the hashes from the edited entries
    tampered.start()
    try:
        a = await tampered.append(entry(5))
        with pytest.raises(TimeoutError):
            await tampered.receipt(a.index, a.entry, 1.5)
    finally:
        await tampered.stop()
        await tampered._astore.close()
    kinds = {e.kind for w in rig.witnesses for e in w.witness.evidence()}
    assert "inconsistent" in kinds


async def test_two_heads_of_the_same_size_are_evidence_of_a_split_view(rig: Rig) -> None:
    w = rig.witnesses[0]
    signer = rig.log_key.log_signer
    first = Checkpoint(rig.log_key.origin, 3, b"\x01" * 32).sign(signer)
    other = Checkpoint(rig.log_key.origin, 3, b"\x02" * 32).sign(signer)
    req = chain_pb2.AddCheckpointRequest(
        old_size=0, checkpoint=first.encode(), log_key_certificate=rig.log_key.certificate_der
    )
    line, _ = await w.witness.add_checkpoint(rig.trust, req)
    assert line.startswith("— creditnet.yrd/witness/310000 ")
    from creditnet.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="split_view"):
        await w.witness.add_checkpoint(
            rig.trust,
            chain_pb2.AddCheckpointRequest(
                old_size=3, checkpoint=other.encode(), log_key_certificate=rig.log_key.certificate_der
            ),
        )
    ev = w.witness.evidence()
    assert [e.kind for e in ev] == ["split_view"]
    assert ev[0].first_checkpoint == first.encode() and ev[0].second_checkpoint == other.encode()
    # A stale checkpoint (behind what was cosigned) is refused too.
    older = Checkpoint(rig.log_key.origin, 2, b"\x03" * 32).sign(signer)
    with pytest.raises(FailedPrecondition, match="old_size"):
        await w.witness.add_checkpoint(
            rig.trust,
            chain_pb2.AddCheckpointRequest(
                old_size=0, checkpoint=older.encode(), log_key_certificate=rig.log_key.certificate_der
            ),
        )


async def test_a_log_key_from_another_ca_is_refused(rig: Rig) -> None:
    foreign = LogKey.issue(CertificateAuthority.create("rogue"), "340100")
    cp = Checkpoint(foreign.origin, 1, b"\x01" * 32).sign(foreign.log_signer)
    from creditnet.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        await rig.witnesses[0].witness.add_checkpoint(
            rig.trust,
            chain_pb2.AddCheckpointRequest(
                checkpoint=cp.encode(), log_key_certificate=foreign.certificate_der
            ),
        )
    assert grpc.StatusCode.PERMISSION_DENIED  # the service maps it to this code


def test_commitment_binds_uscc_and_salt() -> None:
    assert enterprise_commitment(USCC, b"a" * 16) != enterprise_commitment(USCC, b"b" * 16)


def test_certificate_lists_round_trip_and_truncation_is_refused() -> None:
    from creditnet.ledger.sqlstore import pack_certificates, unpack_certificates

    certs = [b"\x30\x82first", b"", b"\x30second"]
    packed = pack_certificates(certs)
    assert unpack_certificates(packed) == certs
    assert unpack_certificates(None) == []
    with pytest.raises(ValueError, match="truncated"):
        unpack_certificates(packed[:-1])
    with pytest.raises(ValueError, match="trailing"):
        unpack_certificates(packed + b"\0")


async def test_a_witness_that_never_answers_is_hedged_around_not_waited_for(rig: Rig) -> None:
    async with unresponsive_endpoint() as endpoint:
        ledger = rig.ledger()
        frozen = WitnessLink.connect("national", endpoint, rig.hefei, rig.trust)
        # First in the rotation: the very first round asks it.
        ledger.witnesses.insert(0, frozen)
        ledger.start()
        try:
            for i in range(12):
                a = await ledger.append(entry(i))
                # Well inside the 2 s a frozen witness takes to time out: no
                # answer waits for it, not even the first.
                r = await ledger.receipt(a.index, a.entry, COSIGN_TIMEOUT * 0.75)
                vr = verify_receipt(rig.trust, r, "340100")
                assert len(vr.checkpoint.cosignatures) >= 3
            # Remembered: not healthy, or still holding the one call it was sent.
            assert frozen.health.busy or not frozen.health.healthy
            assert frozen.health.in_flight <= 1
            assert frozen.size is None
        finally:
            await ledger.stop()
            await ledger._astore.close()
