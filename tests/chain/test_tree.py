"""The append-only tree over a hash store: roots, proofs, restarts, store contract."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditnet.chain.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from creditnet.chain.tree import (
    MemoryHashStore,
    MerkleTree,
    NodeKey,
    TreeConflictError,
    TreeError,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc6962_merkle.json").read_text())
ENTRIES = [i.to_bytes(4, "big") + b"credit-access" for i in range(6000)]
LEAVES = [leaf_hash(e) for e in ENTRIES]


class CountingStore(MemoryHashStore):
    """A memory store that records how many node keys each read asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def get_many(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        keys = list(keys)
        self.reads.append(len(keys))
        return super().get_many(keys)


def build(n: int, batch: int = 997) -> MerkleTree:
    tree = MerkleTree(MemoryHashStore())
    for start in range(0, n, batch):
        tree.append_many(ENTRIES[start : min(n, start + batch)])
    return tree


def ref(start: int, end: int) -> bytes:
    return root_from_leaves(LEAVES[start:end])


def test_rfc_vector_roots_at_every_size() -> None:
    tree = MerkleTree(MemoryHashStore())
    assert tree.size == 0
    assert tree.root() == EMPTY_ROOT
    for i, leaf in enumerate(VECTORS["leaves"]):
        assert tree.append(bytes.fromhex(leaf)) == i
        assert tree.root().hex() == VECTORS["roots"][i]
    for size in range(1, 9):
        assert tree.root(size).hex() == VECTORS["roots"][size - 1]
    assert tree.root(0) == EMPTY_ROOT
    case = VECTORS["consistency"][2]
    assert [p.hex() for p in tree.consistency_proof(6, 8)] == case["proof"]
    case = VECTORS["inclusion"][2]
    assert [p.hex() for p in tree.inclusion_proof(5, 8)] == case["proof"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12), st.data())
def test_tree_matches_reference_for_any_batching(batches: list[int], data: st.DataObject) -> None:
    store = MemoryHashStore()
    tree = MerkleTree(store)
    sizes = [0]
    for n in batches:
        first = tree.append_many(ENTRIES[tree.size : tree.size + n])
        assert first == sizes[-1]
        sizes.append(tree.size)
        assert tree.root() == ref(0, tree.size)
    size = tree.size
    assert store.size() == size
    for past in sizes:
        assert tree.root(past) == ref(0, past)

    # Every perfect subtree is stored, and nothing else.
    for level in range(size.bit_length()):
        count = size >> level
        for index in range(count):
            assert store.get(level, index) == ref(index << level, (index + 1) << level)
        with pytest.raises(KeyError):
            store.get(level, count)

    if size:
        index = data.draw(st.integers(0, size - 1), label="index")
        at = data.draw(st.integers(index + 1, size), label="proof size")
        proof = tree.inclusion_proof(index, at)
        assert proof == inclusion_proof(index, at, ref)
        verify_inclusion(LEAVES[index], index, at, proof, tree.root(at))
        assert tree.leaf_hash(index) == LEAVES[index]
    size1 = data.draw(st.integers(0, size), label="size1")
    size2 = data.draw(st.integers(size1, size), label="size2")
    proof = tree.consistency_proof(size1, size2)
    assert proof == consistency_proof(size1, size2, ref)
    verify_consistency(size1, size2, proof, tree.root(size1), tree.root(size2))


def test_reopened_tree_gives_identical_roots_and_proofs() -> None:
    store = MemoryHashStore()
    first = MerkleTree(store)
    first.append_many(ENTRIES[:1234])
    first.append_many(ENTRIES[1234:3001])

    reopened = MerkleTree(store)  # a restart: only the store survives
    assert reopened.size == 3001
    assert reopened.root() == first.root() == ref(0, 3001)
    for index, size in [(0, 1), (17, 3001), (3000, 3001), (2047, 2048), (1500, 2500)]:
        assert reopened.inclusion_proof(index, size) == first.inclusion_proof(index, size)
    for size1, size2 in [(1, 3001), (1024, 3001), (1234, 3000), (3001, 3001)]:
        assert reopened.consistency_proof(size1, size2) == first.consistency_proof(size1, size2)

    # Appending after the restart continues the same tree.
    reopened.append_many(ENTRIES[3001:4100])
    assert reopened.root() == ref(0, 4100)
    assert MerkleTree(store).root() == build(4100).root()


def test_appends_after_restart_need_no_reads_and_proofs_need_one() -> None:
    store = CountingStore()
    MerkleTree(store).append_many(ENTRIES[:5000])
    store.reads.clear()
    tree = MerkleTree(store)
    assert store.reads == [bin(5000).count("1")]  # the right edge, once

    store.reads.clear()
    tree.append_many(ENTRIES[5000:5003])
    tree.append(ENTRIES[5003])
    assert tree.root() == ref(0, 5004)
    assert store.reads == []

    # Proofs and past roots: one read of O(log n) nodes.
    tree.inclusion_proof(1234, 5004)
    tree.consistency_proof(3333, 5004)
    tree.root(4097)
    assert len(store.reads) == 3
    assert max(store.reads) <= 2 * (5004).bit_length()


def test_two_writers_on_one_store_conflict_and_change_nothing() -> None:
    store = MemoryHashStore()
    a = MerkleTree(store)
    a.append_many(ENTRIES[:10])
    b = MerkleTree(store)
    b.append_many(ENTRIES[10:12])
    with pytest.raises(TreeConflictError, match="size 10 but the store holds 12"):
        a.append_many([b"stale writer"])
    assert store.size() == 12
    assert a.size == 10  # a's view is unchanged until it reloads
    a.reload()
    assert a.size == 12
    a.append(ENTRIES[12])
    assert a.root() == ref(0, 13)


def test_failed_store_write_leaves_the_tree_unchanged() -> None:
    class FullDisk(MemoryHashStore):
        fail = False

        def put_batch(self, items: list[tuple[int, int, bytes]], new_size: int) -> None:
            if self.fail:
                raise OSError("no space left on device")
            super().put_batch(items, new_size)

    store = FullDisk()
    tree = MerkleTree(store)
    tree.append_many(ENTRIES[:7])
    store.fail = True
    with pytest.raises(OSError):
        tree.append_many(ENTRIES[7:20])
    assert tree.size == 7
    assert tree.root() == ref(0, 7)
    store.fail = False
    tree.append_many(ENTRIES[7:20])
    assert tree.root() == ref(0, 20)


def test_empty_append_writes_nothing() -> None:
    store = CountingStore()
    tree = MerkleTree(store)
    tree.append_many(ENTRIES[:3])
    assert tree.append_many([]) == 3
    assert store.size() == 3


def test_out_of_range_requests_are_refused() -> None:
    tree = build(10)
    with pytest.raises(TreeError, match="not in a tree of size 10"):
        tree.inclusion_proof(10)
    with pytest.raises(TreeError, match="not in a tree of size 5"):
        tree.inclusion_proof(5, 5)
    with pytest.raises(TreeError, match="between 0 and the current size 10"):
        tree.root(11)
    with pytest.raises(TreeError, match="between 0 and the current size"):
        tree.inclusion_proof(0, -1)
    with pytest.raises(TreeError, match="no consistency proof"):
        tree.consistency_proof(6, 5)
    with pytest.raises(TreeError, match="beyond tree size"):
        tree.subtree_hash(8, 12)
    with pytest.raises(TreeError):
        tree.leaf_hash(-1)
    assert tree.subtree_hash(8, 10) == ref(8, 10)
    assert tree.consistency_proof(0) == []


def test_missing_store_node_is_reported() -> None:
    class Forgetful(MemoryHashStore):
        def get_many(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
            return {}

    store = Forgetful()
    assert MerkleTree(store).root() == EMPTY_ROOT  # an empty store needs no reads
    store.put_batch([(0, 0, LEAVES[0])], 1)
    with pytest.raises(TreeError, match=r"missing node \(0, 0\)"):
        MerkleTree(store)


def test_memory_store_rejects_bad_batches_without_changing() -> None:
    store = MemoryHashStore()
    good = [(0, 0, LEAVES[0]), (0, 1, LEAVES[1]), (1, 0, ref(0, 2))]
    bad_batches: list[tuple[list[tuple[int, int, bytes]], int, str]] = [
        ([(0, 0, b"short")], 1, "must be 32 bytes"),
        ([(0, 1, LEAVES[0])], 1, "does not continue level 0"),
        ([(0, 0, LEAVES[0]), (1, 0, ref(0, 2))], 1, "not complete"),
        ([(0, 0, LEAVES[0]), (-1, 0, LEAVES[0])], 1, "negative"),
        ([*good, (0, 2, LEAVES[2])], 2, "holds 0"),
    ]
    for items, new_size, message in bad_batches:
        with pytest.raises((ValueError, TreeConflictError), match=message):
            store.put_batch(items, new_size)
        assert store.size() == 0
        with pytest.raises(KeyError):
            store.get(0, 0)
    store.put_batch(good, 2)
    assert store.get_many([(1, 0), (0, 1)]) == {(1, 0): ref(0, 2), (0, 1): LEAVES[1]}
    with pytest.raises(KeyError):
        store.get_many([(1, 0), (2, 0)])
