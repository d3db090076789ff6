"""The auditor's checks on a downloaded log, against trees in memory."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditnet import pilot
from creditnet.auditor.checks import (
    ProblemKind,
    TreeProofs,
    build_tree,
    check_against_seen,
    check_entries,
    check_log,
)
from creditnet.auditor.evidence import evidence_item
from creditnet.auditor.state import AuditError, AuditState, SeenCheckpoint
from creditnet.chain.checkpoint import Checkpoint
from creditnet.chain.keys import NETWORK_ORIGIN, LogKey, known_keys, log_origin
from creditnet.chain.merkle import EMPTY_ROOT, root_from_leaves
from creditnet.chain.network import NetworkCheckpointError, verify_network_checkpoint
from creditnet.chain.note import ALG_ED25519, Signer, sign_note
from creditnet.dates import ts_to_proto
from creditnet.domain import City
from creditnet.pki import CertificateAuthority, TrustStore
from creditnet.v2 import chain_pb2

ORIGIN = log_origin("340100")
CA = CertificateAuthority.create()
TRUST = TrustStore(CA.cert)
HEFEI = LogKey.issue(CA, "340100")
NATIONAL = LogKey.issue(CA, "national")


def entry(i: int, *, city: City = pilot.HEFEI, bank: str = "B0310H231000001") -> bytes:
    return chain_pb2.LedgerEntry(
        kind=chain_pb2.ENTRY_KIND_QUERY_ANSWERED,
        time=ts_to_proto(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)),
        city=city.proto,
        query_id=f"q-{i}",
        bank_code=bank,
    ).SerializeToString(deterministic=True)


def log(n: int) -> list[bytes]:
    return [entry(i) for i in range(n)]


def cosigned(entries: list[bytes], size: int, key: LogKey = HEFEI) -> SeenCheckpoint:
    """The checkpoint the node signed (and witnesses cosigned) at `size`."""
    root = build_tree(entries[:size]).root()
    note = Checkpoint(key.origin, size, root).sign(key.log_signer).encode()
    return SeenCheckpoint(size, root, note)


def changed(entries: list[bytes], index: int) -> list[bytes]:
    out = list(entries)
    out[index] = entry(index, bank="B9999H999999999")
    return out


# ------------------------------------------------------------------ honest logs


async def test_an_honest_log_passes_at_every_checkpoint() -> None:
    entries = log(37)
    node = build_tree(entries)
    checkpoints = [cosigned(entries, s) for s in (0, 1, 5, 8, 20, 37)]
    assert await check_log(entries, checkpoints, TreeProofs(node)) is None
    # Entries logged after the latest checkpoint are not covered yet, and fine.
    assert (
        await check_log([*entries, entry(99)], checkpoints, TreeProofs(build_tree([*entries, entry(99)])))
        is None
    )


def test_build_tree_matches_the_rfc_definition() -> None:
    from creditnet.chain.merkle import leaf_hash

    entries = log(23)
    tree = build_tree(entries)
    for size in (0, 1, 2, 7, 16, 23):
        assert tree.root(size) == root_from_leaves([leaf_hash(e) for e in entries[:size]])


# ------------------------------------------------------------------ changed entries


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
async def test_a_changed_entry_is_named_exactly_when_the_nodes_hashes_are_intact(n: int) -> None:
    original = log(n)
    node = build_tree(original)  # the operator edited an entry but not the hashes
    for k in range(n):
        problem = await check_log(changed(original, k), [cosigned(original, n)], TreeProofs(node))
        assert problem is not None and problem.kind is ProblemKind.ENTRY_MISMATCH
        assert (problem.index, problem.size) == (k, n)
        assert problem.message.startswith(f"entry {k} does not match: the root recomputed at size {n} ")
        assert "differs from the checkpoint the witnesses cosigned" in problem.message


async def test_the_example_message() -> None:
    original = log(5)
    problem = await check_log(changed(original, 2), [cosigned(original, 5)], TreeProofs(build_tree(original)))
    assert problem is not None
    assert problem.message.startswith(
        "entry 2 does not match: the root recomputed at size 5 differs from the checkpoint "
        "the witnesses cosigned"
    )


async def test_a_rebuilt_history_is_bounded_by_what_was_proven() -> None:
    original = log(20)
    tampered = changed(original, 11)
    node = build_tree(tampered)  # entries and hashes rewritten together
    only_latest = await check_log(tampered, [cosigned(original, 20)], TreeProofs(node))
    assert only_latest is not None and only_latest.kind is ProblemKind.HISTORY_REWRITTEN
    assert (only_latest.index, only_latest.first, only_latest.size) == (None, 0, 20)
    assert "its history was rebuilt" in only_latest.message
    # A checkpoint the auditor saw earlier proves the prefix it covers.
    bounded = await check_log(tampered, [cosigned(original, 9), cosigned(original, 20)], TreeProofs(node))
    assert bounded is not None and (bounded.first, bounded.size) == (9, 20)
    # Checkpoints right before and after the change name it exactly, proofs or not.
    exact = await check_log(
        tampered, [cosigned(original, s) for s in (11, 12, 20)], TreeProofs(build_tree([]))
    )
    assert exact is not None and exact.kind is ProblemKind.ENTRY_MISMATCH
    assert (exact.index, exact.size) == (11, 12)


async def test_a_node_without_proofs_gets_a_range_not_a_guess() -> None:
    original = log(16)
    tampered = changed(original, 6)
    problem = await check_log(tampered, [cosigned(original, 16)], TreeProofs(build_tree([])))
    assert problem is not None and problem.kind is ProblemKind.HISTORY_REWRITTEN
    assert (problem.first, problem.size) == (0, 16) and "gives no proofs" in problem.message


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    data=st.data(),
    rebuilt=st.booleans(),
)
async def test_the_named_change_is_always_where_the_change_is(
    n: int, data: st.DataObject, rebuilt: bool
) -> None:
    original = log(n)
    k = data.draw(st.integers(min_value=0, max_value=n - 1), label="changed entry")
    sizes = data.draw(st.sets(st.integers(min_value=0, max_value=n)), label="seen sizes") | {n}
    tampered = changed(original, k)
    node = build_tree(tampered if rebuilt else original)
    problem = await check_log(tampered, [cosigned(original, s) for s in sizes], TreeProofs(node))
    assert problem is not None
    assert problem.size is not None and k < problem.size
    if problem.kind is ProblemKind.ENTRY_MISMATCH:
        assert problem.index == k
    else:
        assert problem.kind is ProblemKind.HISTORY_REWRITTEN and rebuilt
        assert problem.first is not None and problem.first <= k
    if not rebuilt:
        assert problem.kind is ProblemKind.ENTRY_MISMATCH


async def test_proofs_from_another_tree_prove_nothing() -> None:
    original = log(12)
    tampered = changed(original, 5)
    stranger = build_tree([entry(i, bank="B0302H232000001") for i in range(12)])
    problem = await check_log(tampered, [cosigned(original, 3), cosigned(original, 12)], TreeProofs(stranger))
    assert problem is not None and problem.kind is ProblemKind.HISTORY_REWRITTEN
    assert (problem.first, problem.size) == (3, 12) and "do not verify either way" in problem.message


# ------------------------------------------------------------------ other problems


async def test_missing_entries_and_bad_proofs() -> None:
    entries = log(10)
    cps = [cosigned(entries, 4), cosigned(entries, 10)]
    short = await check_log(entries[:7], cps, TreeProofs(build_tree(entries)))
    assert short is not None and short.kind is ProblemKind.MISSING_ENTRIES and short.index == 7
    # The entries are right but the node's proofs come from some other tree.
    other = build_tree([entry(i, bank="B0302H232000001") for i in range(10)])
    bad = await check_log(entries, cps, TreeProofs(other))
    assert bad is not None and bad.kind is ProblemKind.BAD_PROOF
    assert "from size 4 to 10 does not verify" in bad.message
    # A size-0 checkpoint must carry the empty root.
    wrong = SeenCheckpoint(0, b"\x01" * 32, cosigned(entries, 0).note)
    zero = await check_log(entries, [wrong, cps[1]], TreeProofs(build_tree(entries)))
    assert zero is not None and zero.kind is ProblemKind.BAD_CHECKPOINT
    assert cosigned(entries, 0).root == EMPTY_ROOT


def test_a_log_never_shrinks_nor_shows_two_roots_for_one_size() -> None:
    entries = log(8)
    latest = cosigned(entries, 6)
    assert check_against_seen(latest, [cosigned(entries, 3), cosigned(entries, 6)]) is None
    back = check_against_seen(latest, [cosigned(entries, 3), cosigned(entries, 8)])
    assert back is not None and back.kind is ProblemKind.ROLLBACK and back.size == 8
    split = check_against_seen(latest, [cosigned(changed(entries, 1), 6)])
    assert split is not None and split.kind is ProblemKind.SPLIT_VIEW


async def test_two_roots_for_one_size_are_a_split_view_whatever_the_entries() -> None:
    entries = log(8)
    both = [cosigned(entries, 6), cosigned(changed(entries, 1), 6), cosigned(entries, 8)]
    problem = await check_log(entries, both, TreeProofs(build_tree(entries)))
    assert problem is not None and problem.kind is ProblemKind.SPLIT_VIEW and problem.size == 6


def test_entries_must_be_this_nodes_ledger_entries() -> None:
    assert check_entries(log(4), pilot.HEFEI) is None
    foreign = [*log(3), entry(3, city=pilot.NANJING)]
    p = check_entries(foreign, pilot.HEFEI)
    assert p is not None and p.kind is ProblemKind.MALFORMED_ENTRY and p.index == 3
    garbage = check_entries([entry(0), b"\xff\xff\xff"], pilot.HEFEI)
    assert garbage is not None and garbage.index == 1
    unknown = check_entries([chain_pb2.LedgerEntry(city=pilot.HEFEI.proto).SerializeToString()], pilot.HEFEI)
    assert unknown is not None and "no known kind" in unknown.message


# ------------------------------------------------------------------ the state file


def test_state_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    assert AuditState.load(path).seen(ORIGIN) == []
    entries = log(9)
    state = AuditState()
    for s in (9, 2, 5, 5):
        state.record(ORIGIN, cosigned(entries, s))
    state.save(path)
    again = AuditState.load(path)
    assert [c.size for c in again.seen(ORIGIN)] == [2, 5, 9]
    assert again.seen(ORIGIN) == state.seen(ORIGIN)
    with pytest.raises(AuditError, match="split view"):
        again.record(ORIGIN, cosigned(changed(entries, 0), 5))

    data = json.loads(path.read_text())
    data["logs"][ORIGIN][0]["root"] = base64.b64encode(b"\x07" * 32).decode()
    path.write_text(json.dumps(data))
    with pytest.raises(AuditError, match="do not match its note"):
        AuditState.load(path)
    path.write_text(
        json.dumps({"version": 1, "logs": {log_origin("320100"): [cosigned(entries, 2).to_json()]}})
    )
    with pytest.raises(AuditError, match=r"not 'creditnet\.yrd/log/320100'"):
        AuditState.load(path)
    path.write_text("{not json")
    with pytest.raises(AuditError, match="not JSON"):
        AuditState.load(path)
    path.write_text(json.dumps({"version": 7, "logs": {}}))
    with pytest.raises(AuditError, match="version 1"):
        AuditState.load(path)


# ------------------------------------------------------------------ evidence and the network head


def test_evidence_is_verified_against_the_logs_own_key() -> None:
    keys = known_keys(TRUST, [HEFEI.certificate_der])
    entries = log(4)
    first, second = cosigned(entries, 4), cosigned(changed(entries, 2), 4)
    ev = chain_pb2.Evidence(
        origin=ORIGIN,
        kind="split_view",
        first_checkpoint=first.note,
        second_checkpoint=second.note,
        detail="two checkpoints of size 4 with different roots",
        found_at=ts_to_proto(dt.datetime(2026, 1, 2, tzinfo=dt.UTC)),
    )
    assert evidence_item("310000", ev, keys).verified
    # A witness cannot frame the log with a checkpoint the log never signed.
    rogue = LogKey.issue(CertificateAuthority.create("rogue"), "340100")
    forged = chain_pb2.Evidence()
    forged.CopyFrom(ev)
    forged.second_checkpoint = cosigned(changed(entries, 2), 4, rogue).note
    item = evidence_item("310000", forged, keys)
    assert not item.verified and item.kind == "split_view" and item.witness == "310000"
    assert not evidence_item("310000", ev, {}).verified


def network_note(signer: Signer, cities: dict[str, tuple[int, bytes]], seq: int = 4) -> str:
    lines = [NETWORK_ORIGIN, str(seq), base64.b64encode(b"\x05" * 32).decode()]
    lines += [f"{c} {s} {base64.b64encode(r).decode()}" for c, (s, r) in cities.items()]
    return sign_note("".join(f"{line}\n" for line in lines), [signer])


def test_the_network_checkpoint_is_signed_by_the_national_log_key() -> None:
    signer = Signer(NETWORK_ORIGIN, NATIONAL.private_key, ALG_ED25519)
    cities = {c.value: (i * 3, bytes([i]) * 32) for i, c in enumerate(pilot.CITIES)}
    note = network_note(signer, cities)
    head = verify_network_checkpoint(TRUST, note, [NATIONAL.certificate_der])
    assert head.sequence == 4 and head.previous == b"\x05" * 32 and dict(head.cities) == cities
    # A city's log key is not the aggregator's.
    with pytest.raises(NetworkCheckpointError, match="national"):
        verify_network_checkpoint(TRUST, note, [HEFEI.certificate_der])
    impostor = network_note(Signer(NETWORK_ORIGIN, HEFEI.private_key, ALG_ED25519), cities)
    with pytest.raises(NetworkCheckpointError, match="does not verify"):
        verify_network_checkpoint(TRUST, impostor, [NATIONAL.certificate_der, HEFEI.certificate_der])
    edited = note.replace(f"340100 {cities['340100'][0]} ", f"340100 {cities['340100'][0] + 1} ")
    with pytest.raises(NetworkCheckpointError, match="does not verify"):
        verify_network_checkpoint(TRUST, edited, [NATIONAL.certificate_der])
    bad_line = network_note(signer, {"wuhan": (1, b"\x01" * 32)})
    with pytest.raises(NetworkCheckpointError, match="unknown city"):
        verify_network_checkpoint(TRUST, bad_line, [NATIONAL.certificate_der])
