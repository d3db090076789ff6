"""Two aggregator replicas on one database never split the brain (docs/security.md, "Split brain").

Each replica is its own engine on the same database, as two processes would
be: on SQLite a file, on PostgreSQL a scratch database. They race to sign the
next network checkpoint, to cosign different checkpoints of one size of a
log, and to see each other's revocations.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from creditnet import pilot
from creditnet.aggregator.directory import NodeDirectory
from creditnet.aggregator.head import NetworkCheckpointer
from creditnet.aggregator.state import DATABASE_RULE, AggregatorState, NetworkHead
from creditnet.chain.checkpoint import Checkpoint
from creditnet.chain.keys import NETWORK_ORIGIN, LogKey
from creditnet.chain.network import verify_network_checkpoint
from creditnet.chain.note import ALG_ED25519, Signer, sign_note
from creditnet.chain.tree import MemoryHashStore, MerkleTree
from creditnet.errors import FailedPrecondition, Unavailable
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.store import Store
from creditnet.v2 import chain_pb2, node_pb2
from creditnet.witness.server import Witness

CA = CertificateAuthority.create()
TRUST = TrustStore(CA.cert)
NATIONAL = LogKey.issue(CA, "national")
HEFEI_LOG = LogKey.issue(CA, pilot.HEFEI.value)


@pytest.fixture
def replicas(migrated_url: str) -> Iterator[tuple[AggregatorState, AggregatorState]]:
    a, b = AggregatorState(Store.open(migrated_url)), AggregatorState(Store.open(migrated_url))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def assert_one_chain(chain: list[tuple[int, str]]) -> None:
    """Sequences 1..n, each note naming the hash of the one before and signed by the national key."""
    assert [seq for seq, _ in chain] == list(range(1, len(chain) + 1))
    previous = ""
    for seq, note in chain:
        opened = verify_network_checkpoint(TRUST, note, [NATIONAL.certificate_der])
        assert opened.sequence == seq
        lines = note.split("\n")
        assert lines[2] == base64.b64encode(hashlib.sha256(previous.encode()).digest()).decode()
        previous = note


def signed_next(committed: NetworkHead, who: str) -> NetworkHead:
    seq = committed.sequence + 1
    prev = base64.b64encode(hashlib.sha256(committed.note.encode()).digest()).decode()
    signer = Signer(NETWORK_ORIGIN, NATIONAL.private_key, ALG_ED25519)
    # The city line differs per replica: two different checkpoints if both signed one sequence.
    text = f"{NETWORK_ORIGIN}\n{seq}\n{prev}\n340100 {len(who)} {base64.b64encode(bytes(32)).decode()}\n"
    return NetworkHead(sequence=seq, note=sign_note(text, [signer]))


def test_two_replicas_racing_to_sign_the_next_checkpoint_sign_each_sequence_once(
    replicas: tuple[AggregatorState, AggregatorState],
) -> None:
    a, b = replicas
    inside = threading.Event()
    given: dict[str, int] = {}

    def build(who: str) -> Callable[[NetworkHead], NetworkHead]:
        def run(committed: NetworkHead) -> NetworkHead:
            given[who] = committed.sequence
            inside.set()
            # Hold the lock a while: the other replica is trying to take it meanwhile.
            threading.Event().wait(0.3)
            return signed_next(committed, who)

        return run

    first = threading.Thread(target=a.advance, args=(build("a"),))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=b.advance, args=(build("bb"),))
    second.start()
    first.join()
    second.join()
    # The second was given the first's checkpoint as the committed head: it
    # signed sequence 2, chained to it, never a second sequence 1.
    assert sorted(given.values()) == [0, 1]
    chain = a.chain()
    assert len(chain) == 2
    assert_one_chain(chain)
    assert b.head().note == chain[-1][1]


def test_a_checkpoint_that_does_not_follow_the_committed_head_is_never_stored(
    replicas: tuple[AggregatorState, AggregatorState],
) -> None:
    a, b = replicas
    a.advance(lambda head: signed_next(head, "a"))
    stale = NetworkHead()  # what a replica that missed sequence 1 would sign on
    with pytest.raises(ValueError, match="does not follow"):
        b.advance(lambda head: signed_next(stale, "bb"))
    assert [seq for seq, _ in a.chain()] == [1]


async def test_replicas_running_checkpoint_rounds_together_keep_one_chain(
    replicas: tuple[AggregatorState, AggregatorState],
) -> None:
    a, b = replicas
    identity = issue_identity(CA, Role.aggregator())
    heads = []
    for state in (a, b):
        witness = Witness(state.store, NATIONAL, shared=True)
        heads.append(
            NetworkCheckpointer(NodeDirectory({}, identity, TRUST), TRUST, NATIONAL, witness, state, 3)
        )
    for _ in range(5):
        notes = await asyncio.gather(*(h.refresh() for h in heads))
        assert notes[0] == notes[1]
    # Nothing changed after the first: one checkpoint, signed by whichever replica came first.
    chain = a.chain()
    assert len(chain) == 1
    assert_one_chain(chain)


BASE = [b"entry %d" % i for i in range(3)]


def checkpoint(leaves: list[bytes]) -> str:
    tree = MerkleTree(MemoryHashStore())
    tree.append_many(leaves)
    return Checkpoint(HEFEI_LOG.origin, tree.size, tree.root()).sign(HEFEI_LOG.log_signer).encode()


def fork(base: list[bytes], leaves: list[bytes]) -> tuple[str, list[bytes]]:
    """A checkpoint of the log `base` grown by `leaves`, with its consistency proof from `base`."""
    tree = MerkleTree(MemoryHashStore())
    tree.append_many(base + leaves)
    return checkpoint(base + leaves), tree.consistency_proof(len(base))


def offer(note: str, old_size: int, proof: Sequence[bytes] = ()) -> chain_pb2.AddCheckpointRequest:
    return chain_pb2.AddCheckpointRequest(
        old_size=old_size,
        checkpoint=note,
        consistency_proof=list(proof),
        log_key_certificate=HEFEI_LOG.certificate_der,
    )


async def test_two_replicas_offered_different_checkpoints_of_one_size_cosign_only_one(
    replicas: tuple[AggregatorState, AggregatorState],
) -> None:
    a, b = (Witness(s.store, NATIONAL, shared=True) for s in replicas)
    await a.add_checkpoint(TRUST, offer(checkpoint(BASE), 0))
    # B sees what A cosigned at once (no cached state): it is asked from size 3.
    left, left_proof = fork(BASE, [b"left 1", b"left 2"])
    right, right_proof = fork(BASE, [b"right 1", b"right 2"])
    outcomes = await asyncio.gather(
        a.add_checkpoint(TRUST, offer(left, 3, left_proof)),
        b.add_checkpoint(TRUST, offer(right, 3, right_proof)),
        return_exceptions=True,
    )
    cosigned = [o for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if isinstance(o, FailedPrecondition)]
    assert len(cosigned) == 1 and len(refused) == 1, outcomes
    assert refused[0].rule in ("witness.conflict", "witness.split_view", "witness.old_size")
    # The database holds the one that was cosigned, for both replicas.
    winner = left if outcomes[0] is cosigned[0] else right
    state_a, state_b = a.state(HEFEI_LOG.origin), b.state(HEFEI_LOG.origin)
    assert state_a == state_b and state_a is not None and state_a.note == winner


async def test_a_replica_witnesses_from_the_size_another_replica_cosigned(
    replicas: tuple[AggregatorState, AggregatorState],
) -> None:
    a, b = (Witness(s.store, NATIONAL, shared=True) for s in replicas)
    await a.add_checkpoint(TRUST, offer(checkpoint(BASE), 0))
    grown, proof = fork(BASE, [b"more"])
    await b.add_checkpoint(TRUST, offer(grown, 3, proof))
    again, again_proof = fork([*BASE, b"more"], [b"and more"])
    # A cosigned size 3 itself, but judges by the database's size 4.
    line, _ = await a.add_checkpoint(TRUST, offer(again, 4, again_proof))
    assert line.startswith("— creditnet.yrd/witness/national ")
    assert a.evidence() == []


def test_a_revocation_one_replica_keeps_is_seen_by_the_other_at_once(
    replicas: tuple[AggregatorState, AggregatorState],
) -> None:
    a, b = replicas
    digest = hashlib.sha256(b"a consent").digest()
    assert not b.is_revoked(digest)
    a.add_revocation(digest, node_pb2.RevokeConsentRequest())
    assert b.is_revoked(digest)
    assert [p.cities for p in b.pending([pilot.HEFEI])] == [frozenset({pilot.HEFEI})]
    a.mark_delivered(digest, pilot.HEFEI)
    assert b.pending([pilot.HEFEI]) == []


def test_a_replica_that_cannot_reach_its_database_refuses_with_the_rule() -> None:
    # Nothing listens on port 1: every read fails as an unreachable server does.
    engine = create_engine(
        "postgresql+psycopg://creditnet@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    state = AggregatorState(Store(engine))
    try:
        with pytest.raises(Unavailable) as refused:
            state.is_revoked(bytes(32))
        assert refused.value.rule == DATABASE_RULE
        assert "another replica" in refused.value.reason
        with pytest.raises(Unavailable):
            state.head()
    finally:
        state.close()


def test_an_aggregator_upgraded_from_files_keeps_its_chain_and_its_undelivered_revocations(
    replicas: tuple[AggregatorState, AggregatorState], tmp_path: Path
) -> None:
    a, _ = replicas
    # What an aggregator before revision 0006 left in its state directory.
    old = signed_next(NetworkHead(sequence=6), "a")
    (tmp_path / "network-head.json").write_text(
        json.dumps(
            {
                "sequence": old.sequence,
                "note": old.note,
                "city_notes": {},
                "cities": {"340100": [4, base64.b64encode(bytes(32)).decode()]},
            }
        )
    )
    outbox = tmp_path / "revocations"
    outbox.mkdir()
    digest = hashlib.sha256(b"a consent").digest()
    (outbox / f"{digest.hex()}.revocation").write_bytes(node_pb2.RevokeConsentRequest().SerializeToString())
    (outbox / f"{digest.hex()}.delivered").write_text("340100\n")
    a.adopt_files(tmp_path)
    a.adopt_files(tmp_path)  # read once: the files are set aside
    assert a.head().sequence == 7 and a.head().cities["340100"][0] == 4
    # The next checkpoint follows the adopted one, not a new chain at 1.
    assert a.advance(lambda head: signed_next(head, "a")).sequence == 8
    assert a.is_revoked(digest)
    assert [p.cities for p in a.pending([pilot.HEFEI, pilot.SHANGHAI])] == [frozenset({pilot.SHANGHAI})]
    assert not (tmp_path / "network-head.json").exists()
