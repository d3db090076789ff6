"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs.

The credit chain is an append-only log whose tree is the RFC 9162 §2.1 Merkle
Tree Hash with SHA-256:

* ``MTH({})        = SHA-256()``                       (the empty tree)
* ``MTH({d(0)})    = SHA-256(0x00 || d(0))``           (a leaf)
* ``MTH(D[n])      = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` where ``k`` is
  the largest power of two smaller than ``n``.

Every hash passed around here is the 32-byte digest; leaves enter the tree as
their *leaf hash*. Proof *verification* follows RFC 9162 §2.1.3.2 (inclusion)
and §2.1.4.2 (consistency) step by step and raises :class:`ProofError` with the
reason instead of returning ``False``. Proof *generation* follows §2.1.3.1
(``PATH``) and §2.1.4.1 (``PROOF``/``SUBPROOF``), but walks the recursion
iteratively and names each proof element as a leaf range ``[start, end)``; the
caller resolves ranges to hashes (see :func:`inclusion_path_ranges`,
:func:`consistency_proof_ranges` and :func:`subtree_nodes`). Every range such a
walk produces is a perfect subtree except at most one, which lies on the
right edge of the tree and is the fold of O(log n) perfect subtrees, so a store
holding the hash of every perfect subtree answers any proof with O(log n)
reads (see :mod:`creditnet.chain.tree`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from creditnet.errors import Error

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ProofError",
    "SubtreeHash",
    "consistency_proof",
    "consistency_proof_ranges",
    "fold_subtree",
    "inclusion_path_ranges",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaves",
    "subtree_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256

#: ``subtree_hash(start, end)`` returns ``MTH(D[start:end])``.
SubtreeHash = Callable[[int, int], bytes]


class ProofError(Error, ValueError):
    """A Merkle proof, or the arguments it was checked against, does not hold."""


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of a log entry as a tree leaf."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a whole list of leaf hashes, straight from the RFC definition.

    This is the reference the tree and the proofs are tested against; it reads
    every leaf, so production code uses :class:`creditnet.chain.tree.MerkleTree`.
    """

    def mth(start: int, end: int) -> bytes:
        n = end - start
        if n == 1:
            return leaf_hashes[start]
        k = _split(n)
        return node_hash(mth(start, start + k), mth(start + k, end))

    if not leaf_hashes:
        return EMPTY_ROOT
    return mth(0, len(leaf_hashes))


# --------------------------------------------------------------------------
# Subtree decomposition


def subtree_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees, left to right, whose fold is ``MTH(D[start:end])``.

    Returns ``(level, index)`` keys: node ``(l, i)`` covers leaves
    ``[i * 2**l, (i + 1) * 2**l)``. ``[start, end)`` must be a subtree of the RFC
    tree shape, i.e. ``start`` is a multiple of the smallest power of two that
    is at least ``end - start`` (every range produced by the proof walks is).
    """
    n = end - start
    if start < 0 or n <= 0:
        raise ValueError(f"[{start}, {end}) is not a non-empty range of leaf indices")
    if start % (1 << (n - 1).bit_length()) != 0:
        raise ValueError(f"[{start}, {end}) is not a subtree of the Merkle tree")
    nodes: list[tuple[int, int]] = []
    pos = start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            nodes.append((level, pos >> level))
            pos += 1 << level
    return nodes


def fold_subtree(hashes: Sequence[bytes]) -> bytes:
    """Combine the hashes of :func:`subtree_nodes` (same order) into the subtree hash.

    The RFC split puts the largest perfect subtree on the left and recurses on
    the right, so the fold runs from the right.
    """
    if not hashes:
        raise ValueError("a subtree needs at least one node hash")
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


# --------------------------------------------------------------------------
# Proof generation (RFC 9162 §2.1.3.1 and §2.1.4.1)


def inclusion_path_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """``PATH(index, D[size])`` as leaf ranges, in proof order (bottom to top)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    top_down: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _split(end - start)
        if index < mid:
            # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])
            top_down.append((mid, end))
            end = mid
        else:
            # PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])
            top_down.append((start, mid))
            start = mid
    top_down.reverse()
    return top_down


def consistency_proof_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """``PROOF(size1, D[size2])`` as leaf ranges, in proof order.

    Empty when ``size1 == 0`` or ``size1 == size2``: the RFC defines proofs for
    ``0 < size1 < size2``, and c2sp.org/tlog-witness requires an empty proof
    from size 0.
    """
    if not 0 <= size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    if size1 in (0, size2):
        return []
    top_down: list[tuple[int, int]] = []
    start, end, m, whole = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            # SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}
            if not whole:
                top_down.append((start, end))
            break
        mid = start + _split(n)
        if m <= mid - start:
            # SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            top_down.append((mid, end))
            end = mid
        else:
            # SUBPROOF(m, D[n], b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            top_down.append((start, mid))
            m -= mid - start
            start = mid
            whole = False
    top_down.reverse()
    return top_down


def inclusion_proof(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The RFC 9162 inclusion path for leaf ``index`` in the tree of ``size`` leaves."""
    return [subtree_hash(s, e) for s, e in inclusion_path_ranges(index, size)]


def consistency_proof(size1: int, size2: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The RFC 9162 consistency path from the tree of ``size1`` to that of ``size2``."""
    return [subtree_hash(s, e) for s, e in consistency_proof_ranges(size1, size2)]


# --------------------------------------------------------------------------
# Proof verification (RFC 9162 §2.1.3.2 and §2.1.4.2)


def _check_hash(what: str, value: object) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__
        raise ProofError(f"{what} must be a {HASH_SIZE}-byte SHA-256 hash, got {got}")


def _check_proof(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    Raises :class:`ProofError` saying what is wrong; returns ``None`` on success.
    """
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root hash", root)
    _check_proof(proof)
    if index < 0 or tree_size < 0:
        raise ProofError(f"leaf index {index} and tree size {tree_size} must not be negative")
    # Step 1.
    if index >= tree_size:
        raise ProofError(f"leaf index {index} is not below tree size {tree_size}")
    # The RFC loop rejects a wrong-length path too; this names the lengths.
    want = len(inclusion_path_ranges(index, tree_size))
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {tree_size} "
            f"must have {want} hashes, got {len(proof)}"
        )
    # Steps 2-3.
    fn, sn = index, tree_size - 1
    r = bytes(leaf_hash)
    # Step 4.
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    if not _same(r, root):
        raise ProofError(
            f"inclusion proof for leaf {index} leads to root {r.hex()}, "
            f"not the expected {bytes(root).hex()} of tree size {tree_size}"
        )


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends that of ``size1`` with ``root1``.

    Beyond the RFC's ``0 < size1 < size2`` case: equal sizes need an empty proof
    and equal roots; size 0 needs an empty proof and the empty-tree root.
    Raises :class:`ProofError` saying what is wrong; returns ``None`` on success.
    """
    _check_hash("first root hash", root1)
    _check_hash("second root hash", root2)
    _check_proof(proof)
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes {size1} and {size2} must not be negative")
    if size1 > size2:
        raise ProofError(f"tree size went down from {size1} to {size2}; a log only grows")
    if size1 == size2:
        if proof:
            raise ProofError(f"consistency proof between equal sizes {size1} must be empty")
        if not _same(root1, root2):
            raise ProofError(f"two different roots for the same tree size {size1}")
        return
    if size1 == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if not _same(root1, EMPTY_ROOT):
            raise ProofError("root of the empty tree must be SHA-256 of the empty string")
        return
    # The RFC loop rejects a wrong-length path too; this names the lengths.
    want = len(consistency_proof_ranges(size1, size2))
    if len(proof) != want:
        raise ProofError(
            f"consistency proof from size {size1} to {size2} must have {want} hashes, got {len(proof)}"
        )
    # Step 1 (unreachable after the length check, kept to follow the RFC).
    if not proof:
        raise ProofError("consistency proof is empty")
    # Step 2.
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, bytes(root1))
    # Step 3.
    fn, sn = size1 - 1, size2 - 1
    # Step 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    if not _same(fr, root1):
        raise ProofError(
            f"consistency proof does not lead to the first root at size {size1} "
            f"(computed {fr.hex()}, expected {bytes(root1).hex()})"
        )
    if not _same(sr, root2):
        raise ProofError(
            f"consistency proof does not lead to the second root at size {size2} "
            f"(computed {sr.hex()}, expected {bytes(root2).hex()})"
        )
