"""The auditor's checks on downloaded data: pure functions over an in-memory tree.

They need no network (proofs come from a :class:`ProofSource`: the audited
node, or a tree in memory), so every outcome is testable offline. They
report the first problem exactly: when the recomputed root at a cosigned size
differs, bisection with consistency proofs verified against the cosigned root
finds the first entry that is not the cosigned history.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from creditnet.auditor.state import SeenCheckpoint
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
from creditnet.chain.tree import MemoryHashStore, MerkleTree
from creditnet.domain import City
from creditnet.errors import Error
from creditnet.v2 import chain_pb2

__all__ = [
    "Problem",
    "ProblemKind",
    "ProofSource",
    "ProofUnavailable",
    "TreeProofs",
    "build_tree",
    "check_against_seen",
    "check_entries",
    "check_log",
    "distinct_sizes",
    "locate_change",
]


class ProofUnavailable(Error):
    """The node did not give a proof that was asked for."""


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


def distinct_sizes(checkpoints: Sequence[SeenCheckpoint]) -> list[SeenCheckpoint]:
    """One checkpoint per size (the first given), by ascending size."""
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
    chain = distinct_sizes(checkpoints)
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
