"""RFC 9162 hashing, proof generation and proof verification.

The fixed vectors in vectors/rfc6962_merkle.json come from transparency-dev/merkle
(proof/verify_test.go) and google/certificate-transparency
(python/ct/crypto/merkle_test.py); the corruption probes mirror verify_test.go's
corruptInclusionProof / corruptConsistencyProof.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditnet.chain.merkle import (
    EMPTY_ROOT,
    ProofError,
    consistency_proof,
    consistency_proof_ranges,
    fold_subtree,
    inclusion_path_ranges,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaves,
    subtree_nodes,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "rfc6962_merkle.json").read_text())
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots"]]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def hexes(xs: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in xs]


def flip(h: bytes, bit: int) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# Independent reference: the RFC 9162 recursive definitions over lists.


def rfc_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rfc_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = rfc_split(n)
    if m < k:
        return [*rfc_path(m, d[:k]), root_from_leaves(d[k:])]
    return [*rfc_path(m - k, d[k:]), root_from_leaves(d[:k])]


def rfc_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [root_from_leaves(d)]
    k = rfc_split(n)
    if m <= k:
        return [*rfc_subproof(m, d[:k], b), root_from_leaves(d[k:])]
    return [*rfc_subproof(m - k, d[k:], False), root_from_leaves(d[:k])]


def ref_subtree(d: Sequence[bytes]) -> Callable[[int, int], bytes]:
    return lambda s, e: root_from_leaves(d[s:e])


ALL_LEAVES = tuple(leaf_hash(i.to_bytes(4, "big")) for i in range(4096))


def many_leaves(n: int) -> tuple[bytes, ...]:
    assert n <= len(ALL_LEAVES)
    return ALL_LEAVES[:n]


# --------------------------------------------------------------- hashing


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT == bytes.fromhex(VECTORS["empty_root"]) == hashlib.sha256(b"").digest()
    assert root_from_leaves([]) == EMPTY_ROOT


@pytest.mark.parametrize("case", VECTORS["hash_leaf"])
def test_leaf_hash_vectors(case: dict[str, str]) -> None:
    assert leaf_hash(bytes.fromhex(case["data"])).hex() == case["hash"]


@pytest.mark.parametrize("case", VECTORS["hash_children"])
def test_node_hash_vectors(case: dict[str, str]) -> None:
    got = node_hash(bytes.fromhex(case["left"]), bytes.fromhex(case["right"]))
    assert got.hex() == case["hash"]


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int) -> None:
    assert root_from_leaves(LEAVES[:size]) == ROOTS[size - 1]


# --------------------------------------------------------------- inclusion


def inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    probes = [
        ("index - 1", index - 1, size, proof, root, leaf),
        ("index + 1", index + 1, size, proof, root, leaf),
        ("index ^ 2", index ^ 2, size, proof, root, leaf),
        ("size * 2", index, size * 2, proof, root, leaf),
        ("size // 2", index, size // 2, proof, root, leaf),
        ("wrong leaf", index, size, proof, root, b"WrongLeaf"),
        ("empty root", index, size, proof, EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing garbage", index, size, [*proof, b""], root, leaf),
        ("trailing root", index, size, [*proof, root], root, leaf),
        ("preceding garbage", index, size, [b"", *proof], root, leaf),
        ("preceding root", index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 3)
        probes.append((f"flipped proof[{i}]", index, size, bad, root, leaf))
    if proof:
        probes.append(("removed component", index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        probes.append(("inserted component", index, size, [proof[0], SOME_HASH, *proof[1:]], root, leaf))
    return probes


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['leaf']}-of-{c['size']}")
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    index, size, proof = case["leaf"] - 1, case["size"], hexes(case["proof"])
    root, leaf = ROOTS[size - 1], LEAVES[index]
    assert inclusion_proof(index, size, ref_subtree(LEAVES)) == proof
    verify_inclusion(leaf, index, size, proof, root)
    for desc, i, s, p, r, lf in inclusion_probes(index, size, proof, root, leaf):
        with pytest.raises(ProofError):
            verify_inclusion(lf, i, s, p, r)
            pytest.fail(f"probe {desc!r} verified")


def test_inclusion_vector_from_a_real_log() -> None:
    case = VECTORS["real_log_inclusion"]
    leaf, root, proof = bytes.fromhex(case["leaf_hash"]), bytes.fromhex(case["root"]), hexes(case["proof"])
    verify_inclusion(leaf, case["index"], case["size"], proof, root)
    assert len(inclusion_path_ranges(case["index"], case["size"])) == len(proof)
    for desc, i, s, p, r, lf in inclusion_probes(case["index"], case["size"], proof, root, leaf):
        with pytest.raises(ProofError):
            verify_inclusion(lf, i, s, p, r)
            pytest.fail(f"probe {desc!r} verified")


def test_single_leaf_tree_has_empty_proof() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(h, 0, 1, [], b"")
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(b"", 0, 1, [], h)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (1, 1), (-1, 4), (0, -1)])
def test_inclusion_rejects_impossible_positions(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


def test_inclusion_error_names_the_expected_length() -> None:
    with pytest.raises(ProofError, match="must have 3 hashes, got 2"):
        verify_inclusion(LEAVES[0], 0, 8, hexes(VECTORS["inclusion"][1]["proof"])[:2], ROOTS[7])
    with pytest.raises(ProofError, match="not below tree size"):
        verify_inclusion(LEAVES[0], 8, 8, [], ROOTS[7])


def test_inclusion_root_mismatch_message() -> None:
    with pytest.raises(ProofError, match="leads to root"):
        verify_inclusion(LEAVES[0], 0, 1, [], SOME_HASH)


# --------------------------------------------------------------- consistency


def consistency_probes(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    probes = [
        ("size1 - 1", size1 - 1, size2, proof, root1, root2),
        ("size1 + 1", size1 + 1, size2, proof, root1, root2),
        ("size1 ^ 2", size1 ^ 2, size2, proof, root1, root2),
        ("size2 * 2", size1, size2 * 2, proof, root1, root2),
        ("size2 // 2", size1, size2 // 2, proof, root1, root2),
        ("wrong root1", size1, size2, proof, SOME_HASH, root2),
        ("wrong root2", size1, size2, proof, root1, SOME_HASH),
        ("swapped roots", size1, size2, proof, root2, root1),
        ("empty proof", size1, size2, [], root1, root2),
        ("trailing garbage", size1, size2, [*proof, b""], root1, root2),
        ("trailing root1", size1, size2, [*proof, root1], root1, root2),
        ("trailing root2", size1, size2, [*proof, root2], root1, root2),
        ("preceding garbage", size1, size2, [b"", *proof], root1, root2),
        ("preceding root1", size1, size2, [root1, *proof], root1, root2),
        ("preceding root2", size1, size2, [root2, *proof], root1, root2),
        ("preceding proof[0]", size1, size2, [proof[0], *proof], root1, root2),
        ("truncated proof", size1, size2, proof[:-1], root1, root2),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 4)
        probes.append((f"flipped proof[{i}]", size1, size2, bad, root1, root2))
    return probes


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['size1']}-to-{c['size2']}")
def test_consistency_vectors(case: dict[str, Any]) -> None:
    size1, size2, proof = case["size1"], case["size2"], hexes(case["proof"])
    root1, root2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    assert consistency_proof(size1, size2, ref_subtree(LEAVES)) == proof
    verify_consistency(size1, size2, proof, root1, root2)
    if not proof:
        return
    for desc, s1, s2, p, r1, r2 in consistency_probes(size1, size2, proof, root1, root2):
        with pytest.raises(ProofError):
            verify_consistency(s1, s2, p, r1, r2)
            pytest.fail(f"probe {desc!r} verified")


def test_consistency_edge_cases() -> None:
    # Equal sizes: empty proof and equal roots.
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(3, 3, [], ROOTS[2], ROOTS[2])
    with pytest.raises(ProofError, match="two different roots"):
        verify_consistency(3, 3, [], ROOTS[2], ROOTS[3])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(1, 1, [EMPTY_ROOT], ROOTS[0], ROOTS[0])
    # From the empty tree: empty proof, and the empty tree's root.
    verify_consistency(0, 5, [], EMPTY_ROOT, ROOTS[4])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(0, 1, [EMPTY_ROOT], EMPTY_ROOT, ROOTS[0])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 1, [], ROOTS[0], ROOTS[0])
    # Time travel.
    with pytest.raises(ProofError, match="only grows"):
        verify_consistency(5, 2, hexes(VECTORS["consistency"][3]["proof"]), ROOTS[4], ROOTS[1])
    with pytest.raises(ProofError, match="negative"):
        verify_consistency(-1, 2, [], ROOTS[0], ROOTS[1])
    # Empty proof between different sizes.
    with pytest.raises(ProofError, match="must have 1 hashes, got 0"):
        verify_consistency(1, 2, [], ROOTS[0], ROOTS[1])


def test_consistency_errors_say_which_root_failed() -> None:
    case = VECTORS["consistency"][2]
    proof = hexes(case["proof"])
    with pytest.raises(ProofError, match="first root at size 6"):
        verify_consistency(6, 8, proof, flip(ROOTS[5], 0), ROOTS[7])
    with pytest.raises(ProofError, match="second root at size 8"):
        verify_consistency(6, 8, proof, ROOTS[5], flip(ROOTS[7], 0))


# --------------------------------------------------------------- subtrees


def test_subtree_nodes_decompose_ranges() -> None:
    assert subtree_nodes(0, 8) == [(3, 0)]
    assert subtree_nodes(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert subtree_nodes(8, 13) == [(2, 2), (0, 12)]
    for bad in [(3, 5), (4, 9), (0, 0), (-2, 2), (5, 4)]:
        with pytest.raises(ValueError):
            subtree_nodes(*bad)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10).flatmap(lambda lv: st.tuples(st.just(lv), st.integers(1, 2**lv))))
def test_fold_of_subtree_nodes_is_the_subtree_hash(level_len: tuple[int, int]) -> None:
    level, length = level_len
    leaves = many_leaves(3 * 2**level)
    start = 2 * 2**level if level % 2 else 2**level
    nodes = subtree_nodes(start, start + length)
    hashes = [root_from_leaves(leaves[i << lv : (i + 1) << lv]) for lv, i in nodes]
    assert fold_subtree(hashes) == root_from_leaves(leaves[start : start + length])


# --------------------------------------------------------------- properties

sizes = st.integers(1, 3000)


@settings(max_examples=150, deadline=None)
@given(sizes.flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), st.data())
def test_generated_inclusion_proofs_verify_and_resist_tampering(
    size_index: tuple[int, int], data: st.DataObject
) -> None:
    size, index = size_index
    leaves = many_leaves(size)
    root = root_from_leaves(leaves)
    ranges = inclusion_path_ranges(index, size)
    proof = [root_from_leaves(leaves[s:e]) for s, e in ranges]
    assert proof == rfc_path(index, leaves)
    verify_inclusion(leaves[index], index, size, proof, root)

    if proof:
        pos = data.draw(st.integers(0, len(proof) - 1), label="tampered element")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = list(proof)
        bad[pos] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(bad[pos]))
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, bad, root)
    other = data.draw(st.integers(0, size).filter(lambda i: i != index), label="wrong index")
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], other, size, proof, root)
    # A proof binds the size through the root: any other size, with that
    # size's own root, must fail.
    wrong_size = data.draw(st.integers(index + 1, 4096).filter(lambda s: s != size), label="size")
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, wrong_size, proof, root_from_leaves(many_leaves(wrong_size)))
    with pytest.raises(ProofError):
        verify_inclusion(flip(leaves[index], 0), index, size, proof, root)


@settings(max_examples=150, deadline=None)
@given(sizes.flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))), st.data())
def test_generated_consistency_proofs_verify_and_resist_tampering(
    sizes12: tuple[int, int], data: st.DataObject
) -> None:
    size1, size2 = sizes12
    leaves = many_leaves(size2)
    root1, root2 = root_from_leaves(leaves[:size1]), root_from_leaves(leaves)
    proof = consistency_proof(size1, size2, ref_subtree(leaves))
    assert proof == (rfc_subproof(size1, leaves, True) if size1 < size2 else [])
    verify_consistency(size1, size2, proof, root1, root2)
    if size1 == size2:
        return

    pos = data.draw(st.integers(0, len(proof) - 1), label="tampered element")
    bad = list(proof)
    bad[pos] = flip(bad[pos], data.draw(st.integers(0, 7), label="bit"))
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, bad, root1, root2)
    # Other sizes, each with its own root, must fail.
    all_leaves = ALL_LEAVES
    wrong1 = data.draw(st.integers(1, size2).filter(lambda s: s != size1), label="wrong size1")
    with pytest.raises(ProofError):
        verify_consistency(wrong1, size2, proof, root_from_leaves(all_leaves[:wrong1]), root2)
    wrong2 = data.draw(st.integers(size1, 4096).filter(lambda s: s != size2), label="wrong size2")
    with pytest.raises(ProofError):
        verify_consistency(size1, wrong2, proof, root1, root_from_leaves(all_leaves[:wrong2]))
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, flip(root1, 1), root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, root1, flip(root2, 1))


def test_proof_generation_rejects_bad_arguments() -> None:
    for index, size in [(0, 0), (3, 3), (-1, 2)]:
        with pytest.raises(ValueError):
            inclusion_path_ranges(index, size)
    for size1, size2 in [(3, 2), (-1, 2)]:
        with pytest.raises(ValueError):
            consistency_proof_ranges(size1, size2)
    assert consistency_proof_ranges(0, 9) == []
    assert consistency_proof_ranges(9, 9) == []
