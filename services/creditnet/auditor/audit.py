"""Auditing a city node's credit-chain log from the outside.

An auditor trusts only the network CA and what it checked before. It
downloads a node's whole log, recomputes every leaf and the root at the size
of the node's latest cosigned checkpoint and at every checkpoint it saw on
earlier runs (kept in a local state file), checks each of those checkpoints
against the next both by recomputation and by the node's own consistency
proofs, and reads the other nodes' evidence about the log. It reports the
first problem exactly: when the recomputed root at a cosigned size differs,
bisection with consistency proofs verified against the cosigned root finds
the first entry that is not the cosigned history.

The checks on downloaded data are pure functions over an in-memory tree
(:func:`check_log`, :func:`check_against_seen`), so they are testable
without a network; :func:`verify_log` fetches and calls them, and
:func:`survey` gathers every node's latest checkpoint, the aggregator's
network checkpoint and all evidence.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import enum
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from creditnet.chain.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from creditnet.chain.keys import NATIONAL, NETWORK_ORIGIN, KnownKey, known_keys, log_origin
from creditnet.chain.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    fold_subtree,
    inclusion_path_ranges,
    node_hash,
    subtree_nodes,
    verify_consistency,
)
from creditnet.chain.note import ALG_ED25519, Note, NoteError, VerifierKey, open_note
from creditnet.chain.receipts import DEFAULT_QUORUM, ReceiptError, verify_checkpoint
from creditnet.chain.tree import MemoryHashStore, MerkleTree
from creditnet.channels import secure_channel
from creditnet.dates import ts_from_proto, utcnow
from creditnet.domain import City
from creditnet.errors import Error
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, TrustStore, node_server_name
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, chain_pb2, chain_pb2_grpc

__all__ = [
    "AuditError",
    "AuditReport",
    "AuditState",
    "ChainStatus",
    "EntryOrderError",
    "EvidenceItem",
    "NetworkCheckpoint",
    "NetworkCheckpointError",
    "NodeCheckpoint",
    "NodeProofs",
    "Problem",
    "ProblemKind",
    "ProofSource",
    "ProofUnavailable",
    "SeenCheckpoint",
    "TreeProofs",
    "WitnessCosignature",
    "audit",
    "build_tree",
    "check_against_seen",
    "check_entries",
    "check_log",
    "download_entries",
    "evidence_item",
    "locate_change",
    "pool_certificates",
    "survey",
    "verify_log",
    "verify_network_checkpoint",
]

STATE_VERSION = 1
# GetEntries serves at most 100 000 entries per call; smaller calls keep the
# progress bar moving and a slow link within each call's deadline.
ENTRIES_PER_CALL = 10_000
DEFAULT_TIMEOUT = 30.0
_DECIMAL = re.compile(r"0|[1-9][0-9]*")

ProgressFn = Callable[[int, int], None]


class AuditError(Error, ValueError):
    """Bad input to the auditor: a malformed state file or argument."""


class ProofUnavailable(Error):
    """The node did not give a proof that was asked for."""


class NetworkCheckpointError(Error, ValueError):
    """A network checkpoint that is malformed or not signed by the aggregator's log key."""


class ProblemKind(enum.Enum):
    UNREACHABLE = "unreachable"
    NO_CHECKPOINT = "no_checkpoint"
    BAD_CHECKPOINT = "bad_checkpoint"
    ROLLBACK = "rollback"
    SPLIT_VIEW = "split_view"
    MISSING_ENTRIES = "missing_entries"
    ENTRY_ORDER = "entry_order"
    ENTRY_MISMATCH = "entry_mismatch"
    HISTORY_REWRITTEN = "history_rewritten"
    BAD_PROOF = "bad_proof"
    MALFORMED_ENTRY = "malformed_entry"
    EVIDENCE = "evidence"


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing found wrong with a log."""

    kind: ProblemKind
    message: str
    # The entry that is not the cosigned history, when known exactly.
    index: int | None = None
    # The cosigned size at which it showed.
    size: int | None = None
    # Entries [first, size) hold the first change when it cannot be pinned down.
    first: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "message": self.message,
            "index": self.index,
            "size": self.size,
            "first": self.first,
        }


# --------------------------------------------------------------------------
# Checkpoints the auditor has seen, and where it keeps them


@dataclass(frozen=True, slots=True)
class SeenCheckpoint:
    """A checkpoint that was verified (log signature and witness quorum) when seen."""

    size: int
    root: bytes
    note: str

    def __post_init__(self) -> None:
        if self.size < 0:
            raise AuditError(f"checkpoint size {self.size} is negative")
        if len(self.root) != HASH_SIZE:
            raise AuditError(f"checkpoint root must be {HASH_SIZE} bytes, got {len(self.root)}")

    @classmethod
    def from_note(cls, note: str, origin: str) -> SeenCheckpoint:
        """Size and root read from a signed note of `origin` (signatures are not checked here)."""
        try:
            cp = Checkpoint.parse(Note.parse(note).text)
        except (NoteError, CheckpointError) as exc:
            raise AuditError(f"not a checkpoint note: {exc}") from None
        if cp.origin != origin:
            raise AuditError(f"the checkpoint is for {cp.origin!r}, not {origin!r}")
        return cls(cp.size, cp.root_hash, note)

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "root": base64.b64encode(self.root).decode(), "note": self.note}


class AuditState:
    """The checkpoints an auditor has verified before, per log origin, in a JSON file.

    ``{"version": 1, "logs": {"<origin>": [{"size", "root" (base64), "note"}, ...]}}``
    """

    def __init__(self, logs: Mapping[str, Sequence[SeenCheckpoint]] | None = None) -> None:
        self._logs: dict[str, list[SeenCheckpoint]] = {}
        for origin, cps in (logs or {}).items():
            for cp in cps:
                self.record(origin, cp)

    @classmethod
    def load(cls, path: Path) -> AuditState:
        """Read a state file; a missing file is an empty state."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise AuditError(f"cannot read the audit state {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AuditError(f"the audit state {path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise AuditError(f"the audit state {path} is not a version {STATE_VERSION} creditnet audit state")
        logs = data.get("logs")
        if not isinstance(logs, dict):
            raise AuditError(f"the audit state {path} has no 'logs' object")
        state = cls()
        for origin, items in logs.items():
            if not isinstance(items, list):
                raise AuditError(f"the audit state {path}: {origin!r} must hold a list of checkpoints")
            for i, item in enumerate(items):
                try:
                    state.record(origin, _seen_from_json(item, origin))
                except AuditError as exc:
                    raise AuditError(f"the audit state {path}: {origin!r} checkpoint {i}: {exc}") from None
        return state

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old file or the new one."""
        data = {
            "version": STATE_VERSION,
            "logs": {o: [cp.to_json() for cp in cps] for o, cps in sorted(self._logs.items())},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def seen(self, origin: str) -> list[SeenCheckpoint]:
        """The checkpoints seen of `origin`, by size."""
        return list(self._logs.get(origin, ()))

    def record(self, origin: str, cp: SeenCheckpoint) -> None:
        cps = self._logs.setdefault(origin, [])
        for old in cps:
            if old.size == cp.size:
                if old.root != cp.root:
                    raise AuditError(
                        f"two checkpoints of {origin} at size {cp.size} with different roots; "
                        "the log showed a split view"
                    )
                return
        cps.append(cp)
        cps.sort(key=lambda c: c.size)


def _seen_from_json(item: object, origin: str) -> SeenCheckpoint:
    if not isinstance(item, dict):
        raise AuditError("must be an object with size, root and note")
    size, root, note = item.get("size"), item.get("root"), item.get("note")
    if not isinstance(size, int) or not isinstance(root, str) or not isinstance(note, str):
        raise AuditError("needs an integer size, a base64 root and a note")
    try:
        raw = base64.b64decode(root, validate=True)
    except binascii.Error:
        raise AuditError("root is not base64") from None
    cp = SeenCheckpoint.from_note(note, origin)
    if (cp.size, cp.root) != (size, raw):
        raise AuditError("size and root do not match its note")
    return cp


# --------------------------------------------------------------------------
# Pure checks


class ProofSource(Protocol):
    """Where proofs come from: the audited node (or a tree in memory).

    Both methods raise :class:`ProofUnavailable` when there is no proof to be had.
    """

    async def consistency_proof(self, first: int, second: int) -> list[bytes]: ...

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...


class TreeProofs:
    """Proofs from a Merkle tree in memory (a copy of a log, or a test's tree)."""

    def __init__(self, tree: MerkleTree) -> None:
        self.tree = tree

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        try:
            return self.tree.consistency_proof(first, second)
        except ValueError as exc:
            raise ProofUnavailable(str(exc)) from None

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        try:
            return self.tree.inclusion_proof(index, size)
        except ValueError as exc:
            raise ProofUnavailable(str(exc)) from None


class NodeProofs:
    """Proofs asked of a node's ChainService."""

    def __init__(self, stub: chain_pb2_grpc.ChainServiceStub, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.stub = stub
        self.timeout = timeout

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        try:
            resp = await self.stub.GetConsistencyProof(
                chain_pb2.GetConsistencyProofRequest(first_size=first, second_size=second),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise ProofUnavailable(f"{exc.code().name}: {exc.details()}") from None
        return list(resp.proof)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        try:
            resp = await self.stub.GetInclusionProof(
                chain_pb2.GetInclusionProofRequest(index=index, tree_size=size), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise ProofUnavailable(f"{exc.code().name}: {exc.details()}") from None
        return list(resp.proof)


def build_tree(entries: Sequence[bytes]) -> MerkleTree:
    """The RFC 9162 tree of `entries`, in memory: any root or subtree in O(log n)."""
    tree = MerkleTree(MemoryHashStore())
    if entries:
        tree.append_many(entries)
    return tree


def check_against_seen(latest: SeenCheckpoint, seen: Sequence[SeenCheckpoint]) -> Problem | None:
    """A log never shrinks and never has two roots for one size."""
    for old in sorted(seen, key=lambda c: c.size):
        if old.size > latest.size:
            return Problem(
                ProblemKind.ROLLBACK,
                f"the node's latest checkpoint has size {latest.size}, but a checkpoint of size "
                f"{old.size} was cosigned before: the log went back",
                size=old.size,
            )
        if old.size == latest.size and old.root != latest.root:
            return Problem(
                ProblemKind.SPLIT_VIEW,
                f"two cosigned checkpoints of size {old.size} with different roots: a split view",
                size=old.size,
            )
    return None


def _chain(checkpoints: Sequence[SeenCheckpoint]) -> list[SeenCheckpoint]:
    by_size: dict[int, SeenCheckpoint] = {}
    for cp in checkpoints:
        by_size.setdefault(cp.size, cp)
    return [by_size[s] for s in sorted(by_size)]


async def check_log(
    entries: Sequence[bytes], checkpoints: Sequence[SeenCheckpoint], proofs: ProofSource
) -> Problem | None:
    """Check downloaded entries against cosigned checkpoints; the first problem, or None.

    For every checkpoint (ascending size) the root recomputed from the entries
    must be the cosigned root; the first that is not is narrowed to an entry
    (see :func:`locate_change`). Then each checkpoint must be consistent with
    the next by the proof the node gives.
    """
    chain = _chain(checkpoints)
    if not chain:
        return None
    for cp in checkpoints:
        twin = next(c for c in chain if c.size == cp.size)
        if twin.root != cp.root:
            return Problem(
                ProblemKind.SPLIT_VIEW,
                f"two cosigned checkpoints of size {cp.size} with different roots: a split view",
                size=cp.size,
            )
    top = chain[-1].size
    if len(entries) < top:
        return Problem(
            ProblemKind.MISSING_ENTRIES,
            f"the node served {len(entries)} entries, but its cosigned checkpoint covers {top}",
            index=len(entries),
            size=top,
        )
    if chain[0].size == 0 and chain[0].root != EMPTY_ROOT:
        return Problem(
            ProblemKind.BAD_CHECKPOINT, "a cosigned checkpoint of size 0 does not have the empty root", size=0
        )
    tree = build_tree(entries)
    good = 0
    for cp in chain:
        if tree.root(cp.size) != cp.root:
            return await locate_change(tree, good, cp, proofs)
        good = cp.size
    for a, b in itertools.pairwise(chain):
        if a.size == 0:
            continue
        try:
            proof = await proofs.consistency_proof(a.size, b.size)
            verify_consistency(a.size, b.size, proof, a.root, b.root)
        except ProofUnavailable as exc:
            return Problem(
                ProblemKind.BAD_PROOF,
                f"the node gave no consistency proof from size {a.size} to {b.size}: {exc}",
                size=b.size,
            )
        except ProofError as exc:
            return Problem(
                ProblemKind.BAD_PROOF,
                f"the node's consistency proof from size {a.size} to {b.size} does not verify "
                f"although its entries do: {exc}",
                size=b.size,
            )
    return None


async def locate_change(tree: MerkleTree, good: int, bad: SeenCheckpoint, proofs: ProofSource) -> Problem:
    """Narrow a root mismatch at ``bad.size`` down to the first changed entry.

    Every claim made is proven against the cosigned root, whatever the node
    sends. ``good`` is a size whose recomputed root is cosigned, so entries
    before it are the cosigned history. A consistency proof from size ``m``
    that verifies against our root at ``m`` and the cosigned root proves the
    entries before ``m`` too; bisection keeps ``lo`` proven and ``hi``
    unproven, and ends with ``hi == lo + 1``. Entry ``lo`` is then certainly
    changed when ``hi`` is the cosigned size. Otherwise the node's own hash of
    leaf ``lo`` (the first hash of its sibling's inclusion proof) decides: if
    our prefix with that hash verifies against the cosigned root, the
    cosigned entry ``lo`` had that hash and the served one does not. If the
    node's hash is that of the changed entry, it rebuilt its hashes to match,
    and only the range of entries that may hold the first change is named.
    """
    size = bad.size
    proof_at: dict[int, list[bytes] | None] = {}

    async def proof_from(m: int) -> list[bytes] | None:
        if m not in proof_at:
            try:
                proof_at[m] = await proofs.consistency_proof(m, size)
            except ProofUnavailable:
                proof_at[m] = None
        return proof_at[m]

    async def proven(m: int, root: bytes) -> bool:
        proof = await proof_from(m)
        if proof is None:
            return False
        try:
            verify_consistency(m, size, proof, root, bad.root)
        except ProofError:
            return False
        return True

    lo, hi = good, size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await proven(mid, tree.root(mid)):
            lo = mid
        else:
            hi = mid
    where = f"the root recomputed at size {size} differs from the checkpoint the witnesses cosigned"
    before = f"; entries 0-{lo - 1} are proven to be the cosigned history" if lo else ""
    if hi == size:
        return Problem(
            ProblemKind.ENTRY_MISMATCH, f"entry {lo} does not match: {where}{before}", index=lo, size=size
        )
    cosigned_leaf = await _node_leaf_hash(proofs, lo, size)
    if (
        cosigned_leaf is not None
        and cosigned_leaf != tree.leaf_hash(lo)
        and await proven(hi, _root_with_last_leaf(tree, lo, cosigned_leaf))
    ):
        return Problem(
            ProblemKind.ENTRY_MISMATCH,
            f"entry {lo} does not match: {where}{before}, and the node's own proofs show the "
            f"cosigned entry {lo} had another hash",
            index=lo,
            size=size,
        )
    if cosigned_leaf is None:
        why = "the node gives no proofs that say which"
    elif cosigned_leaf == tree.leaf_hash(lo):
        why = "the node's own hashes agree with its changed entries (its history was rebuilt)"
    else:
        why = "the node's proofs do not verify either way"
    return Problem(
        ProblemKind.HISTORY_REWRITTEN,
        f"entries {lo}-{size - 1} do not match: {where}; {why}, so the first changed entry is "
        f"one of them{before}",
        size=size,
        first=lo,
    )


async def _node_leaf_hash(proofs: ProofSource, index: int, size: int) -> bytes | None:
    """The node's stored hash of leaf `index`: the first hash of its sibling's inclusion proof."""
    sibling = index ^ 1
    if sibling >= size or inclusion_path_ranges(sibling, size)[0] != (index, index + 1):
        return None
    try:
        proof = await proofs.inclusion_proof(sibling, size)
    except ProofUnavailable:
        return None
    return proof[0] if proof and len(proof[0]) == HASH_SIZE else None


def _root_with_last_leaf(tree: MerkleTree, index: int, leaf: bytes) -> bytes:
    """The root at size ``index + 1`` of our entries with leaf ``index`` replaced by `leaf`.

    The tree of ``index + 1`` leaves is a fold of perfect subtrees; all but
    the last lie before ``index`` and come from our tree. In the last one,
    leaf ``index`` is the rightmost, so every sibling on its way up is a
    left sibling, also before ``index``.
    """
    size = index + 1
    level = (size & -size).bit_length() - 1
    acc = leaf
    for j in range(level):
        acc = node_hash(tree.subtree_hash(size - (2 << j), size - (1 << j)), acc)
    head = size - (1 << level)
    parts = [tree.subtree_hash(i << lv, (i + 1) << lv) for lv, i in subtree_nodes(0, head)] if head else []
    return fold_subtree([*parts, acc])


def check_entries(entries: Sequence[bytes], city: City) -> Problem | None:
    """Every entry is a LedgerEntry of a known kind, written by this city's node."""
    for i, data in enumerate(entries):
        entry = chain_pb2.LedgerEntry()
        try:
            entry.ParseFromString(data)
        except DecodeError:
            return Problem(ProblemKind.MALFORMED_ENTRY, f"entry {i} is not a LedgerEntry", index=i)
        if entry.kind not in chain_pb2.EntryKind.values() or entry.kind == chain_pb2.ENTRY_KIND_UNSPECIFIED:
            return Problem(
                ProblemKind.MALFORMED_ENTRY, f"entry {i} has no known kind ({entry.kind})", index=i
            )
        if entry.city != city.proto:
            return Problem(
                ProblemKind.MALFORMED_ENTRY, f"entry {i} does not name the {city.value} node", index=i
            )
    return None


# --------------------------------------------------------------------------
# Evidence


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    """Misbehaviour a witness kept: two checkpoints of a log that cannot both be true."""

    witness: str
    origin: str
    kind: str
    detail: str
    found_at: dt.datetime
    first_checkpoint: str
    second_checkpoint: str
    # Both checkpoints carry the log's own valid signature: transferable proof.
    verified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "witness": self.witness,
            "origin": self.origin,
            "kind": self.kind,
            "detail": self.detail,
            "found_at": self.found_at.isoformat(),
            "verified": self.verified,
            "first_checkpoint": self.first_checkpoint,
            "second_checkpoint": self.second_checkpoint,
        }


def _signed_by(note: str, key: VerifierKey | None, origin: str) -> bool:
    if key is None or not note:
        return False
    try:
        open_checkpoint(note, [key], origin=origin)
    except (NoteError, ValueError):
        return False
    return True


def evidence_item(witness: str, ev: chain_pb2.Evidence, log_keys: Mapping[str, KnownKey]) -> EvidenceItem:
    name = ev.origin.removeprefix(log_origin(""))
    known = log_keys.get(name)
    key = known.log if known is not None else None
    return EvidenceItem(
        witness=witness,
        origin=ev.origin,
        kind=ev.kind,
        detail=ev.detail,
        found_at=ts_from_proto(ev.found_at),
        first_checkpoint=ev.first_checkpoint,
        second_checkpoint=ev.second_checkpoint,
        verified=_signed_by(ev.first_checkpoint, key, ev.origin)
        and _signed_by(ev.second_checkpoint, key, ev.origin),
    )


async def _list_evidence(
    stubs: Mapping[str, chain_pb2_grpc.WitnessServiceStub], timeout: float
) -> tuple[dict[str, list[chain_pb2.Evidence]], dict[str, str]]:
    async def one(stub: chain_pb2_grpc.WitnessServiceStub) -> list[chain_pb2.Evidence]:
        resp = await stub.ListEvidence(chain_pb2.ListEvidenceRequest(), timeout=timeout)
        return list(resp.evidence)

    names = list(stubs)
    results = await asyncio.gather(*(one(stubs[n]) for n in names), return_exceptions=True)
    got: dict[str, list[chain_pb2.Evidence]] = {}
    errors: dict[str, str] = {}
    for name, res in zip(names, results, strict=True):
        if isinstance(res, grpc.aio.AioRpcError):
            errors[name] = f"{res.code().name}: {res.details()}"
        elif isinstance(res, BaseException):
            raise res
        else:
            got[name] = res
    return got, errors


async def pool_certificates(
    nodes: Mapping[str, chain_pb2_grpc.ChainServiceStub],
    aggregator: aggregator_pb2_grpc.AggregatorServiceStub | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[bytes]:
    """Every log-key certificate the nodes (and the aggregator) send with their checkpoints.

    A checkpoint is cosigned by witnesses whose certificates should travel
    with it, but any certificate the CA issued for that witness's log key
    verifies it equally; pooling them lets a checkpoint whose node lost some
    certificates (e.g. after a restart) still be checked. Calls that fail
    contribute nothing.
    """

    async def node_certs(stub: chain_pb2_grpc.ChainServiceStub) -> list[bytes]:
        resp = await stub.GetCheckpoint(chain_pb2.GetCheckpointRequest(), timeout=timeout)
        return list(resp.key_certificates)

    async def aggregator_certs(stub: aggregator_pb2_grpc.AggregatorServiceStub) -> list[bytes]:
        resp = await stub.GetNetworkCheckpoint(aggregator_pb2.GetNetworkCheckpointRequest(), timeout=timeout)
        return list(resp.key_certificates)

    calls = [node_certs(s) for s in nodes.values()]
    if aggregator is not None:
        calls.append(aggregator_certs(aggregator))
    pooled: dict[bytes, None] = {}
    for res in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(res, grpc.aio.AioRpcError):
            continue
        if isinstance(res, BaseException):
            raise res
        pooled.update(dict.fromkeys(res))
    return list(pooled)


# --------------------------------------------------------------------------
# Verifying one node's log


@dataclass(frozen=True, slots=True)
class WitnessCosignature:
    name: str
    time: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"witness": self.name, "time": self.time.isoformat()}


@dataclass(frozen=True, slots=True)
class AuditReport:
    city: City
    origin: str
    # The node's latest cosigned checkpoint, if it had a valid one.
    checkpoint: SeenCheckpoint | None
    cosignatures: tuple[WitnessCosignature, ...]
    # Entries downloaded (the log may hold more than the checkpoint covers).
    entries: int
    # Sizes whose recomputed roots and proofs were checked.
    checked: tuple[int, ...]
    evidence: tuple[EvidenceItem, ...]
    witness_errors: Mapping[str, str]
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "city": self.city.value,
            "origin": self.origin,
            "ok": self.ok,
            "problem": self.problem.to_json() if self.problem else None,
            "checkpoint": None
            if cp is None
            else {"size": cp.size, "root": base64.b64encode(cp.root).decode(), "note": cp.note},
            "cosignatures": [c.to_json() for c in self.cosignatures],
            "entries": self.entries,
            "checked_sizes": list(self.checked),
            "evidence": [e.to_json() for e in self.evidence],
            "witness_errors": dict(self.witness_errors),
        }


class EntryOrderError(Error, ValueError):
    """A node streamed its entries out of order."""


async def download_entries(
    stub: chain_pb2_grpc.ChainServiceStub,
    *,
    expected: int = 0,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[bytes]:
    """Every entry of the log, in order; `progress(done, total)` as they arrive.

    `expected` (the checkpoint size) is the total shown until more arrive.
    Raises :class:`EntryOrderError` if the node sends an index out of order.
    """
    entries: list[bytes] = []
    while True:
        start = len(entries)
        call = stub.GetEntries(
            chain_pb2.GetEntriesRequest(start=start, end=start + ENTRIES_PER_CALL), timeout=timeout
        )
        async for item in call:
            if item.index != len(entries):
                raise EntryOrderError(f"the node sent entry {item.index} where entry {len(entries)} belongs")
            entries.append(item.entry)
            if progress is not None and len(entries) % 1000 == 0:
                progress(len(entries), max(expected, len(entries)))
        if len(entries) - start < ENTRIES_PER_CALL:
            break
    if progress is not None:
        progress(len(entries), max(expected, len(entries)))
    return entries


def _rpc_problem(exc: grpc.aio.AioRpcError, what: str) -> Problem:
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return Problem(ProblemKind.NO_CHECKPOINT, f"{what}: {exc.details()}")
    return Problem(ProblemKind.UNREACHABLE, f"{what}: {exc.code().name}: {exc.details()}")


async def verify_log(
    city: City,
    node: chain_pb2_grpc.ChainServiceStub,
    trust: TrustStore,
    *,
    seen: Sequence[SeenCheckpoint] = (),
    witnesses: Mapping[str, chain_pb2_grpc.ChainServiceStub] | None = None,
    evidence_from: Mapping[str, chain_pb2_grpc.WitnessServiceStub] | None = None,
    certificates: Sequence[bytes] = (),
    quorum: int = DEFAULT_QUORUM,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> AuditReport:
    """Audit `city`'s whole log (see the module docstring); the report names the first problem.

    `seen` are checkpoints of this log verified on earlier runs; `witnesses`
    are the other nodes, whose log-key certificates are pooled with
    `certificates` (see :func:`pool_certificates`); `evidence_from` are the
    witnesses (nodes and aggregator) whose evidence about this log is read,
    in parallel.
    """
    origin = log_origin(city.value)
    evidence_task = asyncio.ensure_future(_list_evidence(evidence_from or {}, timeout))
    pool_task = asyncio.ensure_future(pool_certificates(witnesses or {}, timeout=timeout))
    checkpoint: SeenCheckpoint | None = None
    cosigs: tuple[WitnessCosignature, ...] = ()
    entries: list[bytes] = []
    checked: tuple[int, ...] = ()
    problem: Problem | None = None
    log_keys: dict[str, KnownKey] = {}
    try:
        try:
            resp = await node.GetCheckpoint(chain_pb2.GetCheckpointRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            problem = _rpc_problem(exc, f"the {city.value} node gave no checkpoint")
        else:
            # The node's own certificates last: they win for its own name.
            certs = [*certificates, *await pool_task, *resp.key_certificates]
            log_keys = known_keys(trust, certs)
            try:
                cp = verify_checkpoint(trust, resp.checkpoint, certs, city.value, quorum)
            except ReceiptError as exc:
                problem = Problem(
                    ProblemKind.BAD_CHECKPOINT, f"the {city.value} node's latest checkpoint: {exc}"
                )
            else:
                checkpoint = SeenCheckpoint(cp.checkpoint.size, cp.checkpoint.root_hash, resp.checkpoint)
                cosigs = tuple(
                    WitnessCosignature(c.name, dt.datetime.fromtimestamp(c.timestamp, dt.UTC))
                    for c in cp.cosignatures
                )
        if checkpoint is not None:
            problem = check_against_seen(checkpoint, seen)
        if checkpoint is not None and problem is None:
            try:
                entries = await download_entries(
                    node, expected=checkpoint.size, progress=progress, timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                problem = _rpc_problem(exc, f"the {city.value} node did not serve its entries")
            except EntryOrderError as exc:
                problem = Problem(ProblemKind.ENTRY_ORDER, str(exc))
        if checkpoint is not None and problem is None:
            chain = _chain([*seen, checkpoint])
            checked = tuple(c.size for c in chain)
            problem = await check_log(entries, chain, NodeProofs(node, timeout))
            if problem is None:
                problem = check_entries(entries, city)
        found, witness_errors = await evidence_task
    finally:
        for task in (evidence_task, pool_task):
            if not task.done():
                task.cancel()
    evidence = tuple(
        evidence_item(w, ev, log_keys)
        for w, evs in sorted(found.items())
        for ev in evs
        if ev.origin == origin
    )
    proven = [e for e in evidence if e.verified]
    if problem is None and proven:
        e = proven[0]
        problem = Problem(
            ProblemKind.EVIDENCE,
            f"witness {e.witness} holds evidence that this log signed two checkpoints that cannot "
            f"both be true ({e.kind}: {e.detail})",
        )
    return AuditReport(
        city=city,
        origin=origin,
        checkpoint=checkpoint,
        cosignatures=cosigs,
        entries=len(entries),
        checked=checked,
        evidence=evidence,
        witness_errors=witness_errors,
        problem=problem,
    )


def _node_channel(city: City, endpoint: str, identity: Identity, trust: TrustStore) -> grpc.aio.Channel:
    return secure_channel(endpoint, identity, trust, node_server_name(city))


def _witness_stubs(
    channels: Mapping[City, grpc.aio.Channel], aggregator: grpc.aio.Channel | None, *, but: City | None = None
) -> dict[str, chain_pb2_grpc.WitnessServiceStub]:
    """Every witness by its name: the nodes (except `but`, the log audited) and the aggregator."""
    stubs = {c.value: chain_pb2_grpc.WitnessServiceStub(ch) for c, ch in channels.items() if c != but}
    if aggregator is not None:
        stubs[NATIONAL] = chain_pb2_grpc.WitnessServiceStub(aggregator)
    return stubs


def _aggregator_channel(
    endpoint: str | None, identity: Identity, trust: TrustStore
) -> grpc.aio.Channel | None:
    if endpoint is None:
        return None
    return secure_channel(endpoint, identity, trust, AGGREGATOR_SERVER_NAME)


async def _close(channels: Iterable[grpc.aio.Channel], extra: grpc.aio.Channel | None = None) -> None:
    closing = [ch.close() for ch in channels]
    if extra is not None:
        closing.append(extra.close())
    await asyncio.gather(*closing, return_exceptions=True)


async def audit(
    city: City,
    endpoints: Mapping[City, str],
    identity: Identity,
    trust: TrustStore,
    *,
    state: AuditState | None = None,
    aggregator: str | None = None,
    quorum: int = DEFAULT_QUORUM,
    progress: ProgressFn | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> AuditReport:
    """Connect to `city`'s node (and the others, as witnesses) and :func:`verify_log`.

    With a `state`, the checkpoints seen before are checked too, and the
    latest one is recorded when the log passes (the caller saves the state).
    The `aggregator`, a witness too, is asked only for its log-key certificate.
    """
    if city not in endpoints:
        raise AuditError(f"no endpoint for the {city.value} node")
    channels = {c: _node_channel(c, ep, identity, trust) for c, ep in endpoints.items()}
    agg_channel = _aggregator_channel(aggregator, identity, trust)
    try:
        stubs = {c: chain_pb2_grpc.ChainServiceStub(ch) for c, ch in channels.items()}
        origin = log_origin(city.value)
        national = (
            await pool_certificates({}, aggregator_pb2_grpc.AggregatorServiceStub(agg_channel), timeout)
            if agg_channel is not None
            else []
        )
        report = await verify_log(
            city,
            stubs[city],
            trust,
            seen=state.seen(origin) if state else (),
            witnesses={c.value: s for c, s in stubs.items() if c != city},
            evidence_from=_witness_stubs(channels, agg_channel, but=city),
            certificates=national,
            quorum=quorum,
            progress=progress,
            timeout=timeout,
        )
    finally:
        await _close(channels.values(), agg_channel)
    if state is not None and report.ok and report.checkpoint is not None:
        state.record(origin, report.checkpoint)
    return report


# --------------------------------------------------------------------------
# The whole chain at a glance


@dataclass(frozen=True, slots=True)
class NodeCheckpoint:
    """A node's latest published checkpoint, verified, or why there is none."""

    city: City
    size: int | None = None
    root: bytes | None = None
    cosignatures: tuple[WitnessCosignature, ...] = ()
    error: str = ""

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "city": self.city.value,
            "size": self.size,
            "root": base64.b64encode(self.root).decode() if self.root is not None else None,
            "cosignatures": [
                {**c.to_json(), "age_seconds": round((now - c.time).total_seconds(), 1)}
                for c in self.cosignatures
            ],
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class NetworkCheckpoint:
    """The aggregator's signed head of the credit chain."""

    sequence: int
    previous: bytes
    cities: Mapping[str, tuple[int, bytes]]
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "previous": base64.b64encode(self.previous).decode(),
            "cities": {
                c: {"size": s, "root": base64.b64encode(r).decode()} for c, (s, r) in self.cities.items()
            },
            "note": self.note,
        }


def verify_network_checkpoint(
    trust: TrustStore, note: str, certificates: Sequence[bytes]
) -> NetworkCheckpoint:
    """Check the aggregator's signature (log key ``creditnet://logkey/national``) and parse."""
    keys = known_keys(trust, certificates)
    national = keys.get(NATIONAL)
    if national is None:
        raise NetworkCheckpointError(
            f"no valid log-key certificate for {NATIONAL} (creditnet://logkey/{NATIONAL}) came with it"
        )
    key = VerifierKey(NETWORK_ORIGIN, ALG_ED25519, national.log.public_key)
    try:
        opened = open_note(note, [key])
    except NoteError as exc:
        raise NetworkCheckpointError(f"the network checkpoint does not verify: {exc}") from None
    lines = opened.text[:-1].split("\n")
    if len(lines) < 3 or lines[0] != NETWORK_ORIGIN:
        raise NetworkCheckpointError(
            f"a network checkpoint starts with {NETWORK_ORIGIN}, a sequence and a hash"
        )
    if not _DECIMAL.fullmatch(lines[1]):
        raise NetworkCheckpointError(f"sequence {lines[1]!r} is not a decimal number")
    previous = _b64_hash(lines[2], "previous note hash")
    cities: dict[str, tuple[int, bytes]] = {}
    for line in lines[3:]:
        parts = line.split(" ")
        if len(parts) != 3 or not _DECIMAL.fullmatch(parts[1]):
            raise NetworkCheckpointError(f"city line {line!r} is not '<city> <size> <base64 root>'")
        try:
            name = City(parts[0]).value
        except ValueError as exc:
            raise NetworkCheckpointError(f"unknown city in the network checkpoint: {exc}") from None
        if name in cities:
            raise NetworkCheckpointError(f"{name} appears twice in the network checkpoint")
        if cities and name < max(cities):
            raise NetworkCheckpointError("the network checkpoint's cities are not in ascending code order")
        cities[name] = (int(parts[1]), _b64_hash(parts[2], f"root of {name}"))
    return NetworkCheckpoint(int(lines[1]), previous, cities, note)


def _b64_hash(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise NetworkCheckpointError(f"{what} is not base64") from None
    if len(raw) != HASH_SIZE:
        raise NetworkCheckpointError(f"{what} must be {HASH_SIZE} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class ChainStatus:
    nodes: tuple[NodeCheckpoint, ...]
    network: NetworkCheckpoint | None
    network_error: str
    evidence: tuple[EvidenceItem, ...]
    evidence_errors: Mapping[str, str]
    checked_at: dt.datetime = field(default_factory=utcnow)

    @property
    def missing(self) -> list[City]:
        return [n.city for n in self.nodes if n.error]

    @property
    def healthy(self) -> bool:
        """No evidence, and every node and the aggregator published a valid checkpoint."""
        return not self.evidence and not self.missing and self.network is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checked_at": self.checked_at.isoformat(),
            "nodes": [n.to_json(self.checked_at) for n in self.nodes],
            "network": self.network.to_json() if self.network else None,
            "network_error": self.network_error,
            "evidence": [e.to_json() for e in self.evidence],
            "evidence_errors": dict(self.evidence_errors),
        }


def _node_checkpoint(
    city: City,
    resp: chain_pb2.GetCheckpointResponse | str,
    trust: TrustStore,
    pooled: Sequence[bytes],
    quorum: int,
) -> NodeCheckpoint:
    if isinstance(resp, str):
        return NodeCheckpoint(city, error=resp)
    try:
        cp = verify_checkpoint(trust, resp.checkpoint, [*pooled, *resp.key_certificates], city.value, quorum)
    except ReceiptError as exc:
        return NodeCheckpoint(city, error=str(exc))
    return NodeCheckpoint(
        city,
        size=cp.checkpoint.size,
        root=cp.checkpoint.root_hash,
        cosignatures=tuple(
            WitnessCosignature(c.name, dt.datetime.fromtimestamp(c.timestamp, dt.UTC))
            for c in cp.cosignatures
        ),
    )


async def survey(
    endpoints: Mapping[City, str],
    identity: Identity,
    trust: TrustStore,
    *,
    aggregator: str | None = None,
    quorum: int = DEFAULT_QUORUM,
    timeout: float = 10.0,
) -> ChainStatus:
    """Every node's latest checkpoint, the network checkpoint and every witness's evidence."""
    channels = {c: _node_channel(c, ep, identity, trust) for c, ep in endpoints.items()}
    agg_channel = _aggregator_channel(aggregator, identity, trust)
    cities = sorted(channels)

    async def checkpoint(stub: chain_pb2_grpc.ChainServiceStub) -> chain_pb2.GetCheckpointResponse | str:
        try:
            resp: chain_pb2.GetCheckpointResponse = await stub.GetCheckpoint(
                chain_pb2.GetCheckpointRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return resp

    async def network_head() -> aggregator_pb2.GetNetworkCheckpointResponse | str:
        if agg_channel is None:
            return "no aggregator endpoint given"
        stub = aggregator_pb2_grpc.AggregatorServiceStub(agg_channel)
        try:
            resp: aggregator_pb2.GetNetworkCheckpointResponse = await stub.GetNetworkCheckpoint(
                aggregator_pb2.GetNetworkCheckpointRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return resp

    try:
        stubs = {c: chain_pb2_grpc.ChainServiceStub(ch) for c, ch in channels.items()}
        checkpoints, (found, evidence_errors), head = await asyncio.gather(
            asyncio.gather(*(checkpoint(stubs[c]) for c in cities)),
            _list_evidence(_witness_stubs(channels, agg_channel), timeout),
            network_head(),
        )
    finally:
        await _close(channels.values(), agg_channel)
    pooled = [der for r in checkpoints if not isinstance(r, str) for der in r.key_certificates]
    network: NetworkCheckpoint | None = None
    if isinstance(head, str):
        network_error = head
    else:
        pooled.extend(head.key_certificates)
        # The whole response: the national signature and every city checkpoint
        # it was built from (chain.network builds on this module, hence here).
        from creditnet.chain.network import verify_network_response

        try:
            network = verify_network_response(trust, head, quorum).network
            network_error = ""
        except NetworkCheckpointError as exc:
            network_error = str(exc)
    nodes = tuple(
        _node_checkpoint(c, res, trust, pooled, quorum) for c, res in zip(cities, checkpoints, strict=True)
    )
    keys = known_keys(trust, pooled)
    evidence = tuple(evidence_item(w, ev, keys) for w, evs in sorted(found.items()) for ev in evs)
    return ChainStatus(
        nodes=nodes,
        network=network,
        network_error=network_error,
        evidence=evidence,
        evidence_errors=evidence_errors,
    )
