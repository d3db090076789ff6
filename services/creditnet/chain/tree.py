"""An append-only RFC 9162 Merkle tree over a store of perfect-subtree hashes.

The store keeps the hash of every *perfect* (complete) subtree, keyed
``(level, index)``: level 0 holds the leaf hashes and node ``(l, i)`` covers
leaves ``[i * 2**l, (i + 1) * 2**l)``. A tree of ``n`` leaves has fewer than
``2n`` such nodes, and once written a node never changes, which suits an
append-only table. Any root (current or past) and any inclusion or consistency
proof is then a fold of O(log n) stored hashes, fetched with one
:meth:`HashStore.get_many` call; no operation ever reads all the leaves.

:class:`MerkleTree` keeps the *right edge* of the tree in memory (the perfect
subtrees whose concatenation is the whole tree, one per set bit of the size),
so appending needs no reads: it hashes the new leaves, merges them with the
right edge level by level, and writes every newly completed node plus the new
size in a single :meth:`HashStore.put_batch`.

A store implementation (e.g. SQL-backed) must guarantee, see :class:`HashStore`:

* ``put_batch`` is atomic: either every item and the new size are durable, or
  none of them (a crash in between must not leave a size that claims nodes
  which are missing);
* read-your-writes: once ``put_batch`` returns, ``size``/``get``/``get_many``
  from any ``MerkleTree`` on that store see the new state;
* a single writer: ``put_batch`` must refuse, raising :class:`TreeConflictError`
  and storing nothing, when the stored size is not the size the batch extends
  (``new_size`` minus the number of level-0 items). A SQL store does this with
  ``UPDATE ... SET size = :new WHERE size = :old`` in the same transaction as
  the inserts; a writer that gets the error must reopen its tree.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from creditnet.chain.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    consistency_proof_ranges,
    fold_subtree,
    inclusion_path_ranges,
    subtree_nodes,
)
from creditnet.errors import Error

__all__ = [
    "HashStore",
    "MemoryHashStore",
    "MerkleTree",
    "NodeKey",
    "TreeConflictError",
    "TreeError",
]

#: ``(level, index)`` of a perfect subtree.
NodeKey = tuple[int, int]

_sha256 = hashlib.sha256


class TreeError(Error, ValueError):
    """A request the tree cannot answer (index or size out of range, bad store data)."""


class TreeConflictError(Error, RuntimeError):
    """The store was extended by someone else since this tree last read or wrote it."""


class HashStore(Protocol):
    """Persistent storage of perfect-subtree hashes and the tree size.

    Contract (what :class:`MerkleTree` relies on):

    * ``size()`` is the number of leaves committed by the last ``put_batch``
      (0 for a new store).
    * ``get(level, index)`` returns the 32-byte hash of node ``(level, index)``
      and raises ``KeyError`` if it was never stored.
    * ``get_many(keys)`` returns a dict with exactly the requested keys (any
      missing key raises ``KeyError``); it should be one round trip.
    * ``put_batch(items, new_size)`` stores every ``(level, index, hash)`` and
      sets the size to ``new_size`` atomically. ``items`` are the nodes that
      become complete when the size grows from ``old = new_size - (number of
      level-0 items)`` to ``new_size``, ordered by level then index. If the
      stored size is not ``old`` it raises :class:`TreeConflictError` and
      stores nothing. Stored nodes are immutable: a store may reject an item
      whose key already exists.
    * Read-your-writes: after ``put_batch`` returns, reads see its effect.
    """

    def size(self) -> int: ...

    def get(self, level: int, index: int) -> bytes: ...

    def get_many(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]: ...

    def put_batch(self, items: list[tuple[int, int, bytes]], new_size: int) -> None: ...


class MemoryHashStore:
    """A :class:`HashStore` in memory: one contiguous byte array per level.

    32 bytes per node and no per-node objects, so a million-leaf tree takes
    about 64 MB. Thread-safe.
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = []
        self._size = 0
        self._lock = threading.Lock()

    def size(self) -> int:
        return self._size

    def _read(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or level >= len(self._levels):
            raise KeyError((level, index))
        row = self._levels[level]
        start = index * HASH_SIZE
        if start + HASH_SIZE > len(row):
            raise KeyError((level, index))
        return bytes(row[start : start + HASH_SIZE])

    def get(self, level: int, index: int) -> bytes:
        with self._lock:
            return self._read(level, index)

    def get_many(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        with self._lock:
            return {(lv, ix): self._read(lv, ix) for lv, ix in keys}

    def put_batch(self, items: list[tuple[int, int, bytes]], new_size: int) -> None:
        with self._lock:
            old = new_size - sum(1 for lv, _, _ in items if lv == 0)
            if old != self._size:
                raise TreeConflictError(
                    f"batch extends a tree of size {old} but the store holds {self._size} leaves"
                )
            # Validate everything before touching the arrays, so a bad batch
            # changes nothing. Nodes of a level arrive in index order and must
            # continue that level exactly where it ends.
            next_index = [len(row) // HASH_SIZE for row in self._levels]
            runs: dict[int, list[bytes]] = {}
            for level, index, digest in items:
                if len(digest) != HASH_SIZE:
                    raise ValueError(f"node ({level}, {index}) hash must be {HASH_SIZE} bytes")
                if level < 0:
                    raise ValueError(f"node level {level} is negative")
                while level >= len(next_index):
                    next_index.append(0)
                if index != next_index[level]:
                    raise ValueError(
                        f"node ({level}, {index}) does not continue level {level}, "
                        f"which expects index {next_index[level]} next"
                    )
                if (index + 1) << level > new_size:
                    raise ValueError(f"node ({level}, {index}) is not complete in a tree of size {new_size}")
                next_index[level] += 1
                runs.setdefault(level, []).append(bytes(digest))
            for level, run in runs.items():
                while level >= len(self._levels):
                    self._levels.append(bytearray())
                self._levels[level] += b"".join(run)
            self._size = new_size


class MerkleTree:
    """The credit chain's append-only Merkle tree on top of a :class:`HashStore`.

    One ``MerkleTree`` per store writes; any number may read. Methods are
    thread-safe with respect to each other in one process.
    """

    def __init__(self, store: HashStore) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._size = 0
        self._edge: dict[int, bytes] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read the size and right edge from the store (after a restart or conflict)."""
        with self._lock:
            size = self._store.size()
            keys = _edge_keys(size)
            got = self._fetch(keys)
            self._size = size
            self._edge = {level: got[(level, index)] for level, index in keys}

    @property
    def size(self) -> int:
        return self._size

    @property
    def store(self) -> HashStore:
        return self._store

    def append(self, entry: bytes) -> int:
        """Append one entry; returns its leaf index."""
        return self.append_many([entry])

    def append_many(self, entries: Sequence[bytes]) -> int:
        """Append entries in order with one store write; returns the first one's index.

        Each entry costs one SHA-256 for its leaf hash; the interior nodes it
        completes cost one more on average. On any error nothing is stored.
        """
        leaves = [_sha256(b"\x00" + e).digest() for e in entries]
        with self._lock:
            first = self._size
            if not leaves:
                return first
            new_size = first + len(leaves)
            items: list[tuple[int, int, bytes]] = []
            new_edge: dict[int, bytes] = {}
            level, lo, hi, run = 0, first, new_size, leaves
            while hi > lo:
                items.extend(zip([level] * len(run), range(lo, hi), run, strict=True))
                if hi & 1:
                    new_edge[level] = run[-1]
                # Pair up this level's nodes into the parents they complete; an
                # odd start pairs with the left sibling already on the edge.
                pairs = [self._edge[level], *run] if lo & 1 else run
                run = [
                    _sha256(b"\x01" + pairs[i] + pairs[i + 1]).digest() for i in range(0, len(pairs) - 1, 2)
                ]
                level, lo, hi = level + 1, lo >> 1, hi >> 1
            for lv in range(level, new_size.bit_length()):
                if new_size >> lv & 1:
                    new_edge[lv] = self._edge[lv]
            self._store.put_batch(items, new_size)
            self._size = new_size
            self._edge = new_edge
            return first

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash of entry ``index``."""
        self._check_index(index, self._size)
        return self._fetch([(0, index)])[(0, index)]

    def root(self, size: int | None = None) -> bytes:
        """The root hash at the current size, or at any earlier ``size``."""
        size = self._resolve_size(size)
        if size == 0:
            return EMPTY_ROOT
        with self._lock:
            if size == self._size:
                return fold_subtree([self._edge[lv] for lv, _ in _edge_keys(size)])
        keys = _edge_keys(size)
        got = self._fetch(keys)
        return fold_subtree([got[k] for k in keys])

    def subtree_hash(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])`` for a subtree ``[start, end)`` within the current tree."""
        if end > self._size:
            raise TreeError(f"range [{start}, {end}) goes beyond tree size {self._size}")
        return self._resolve_ranges([(start, end)])[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree at ``size`` (default: now)."""
        size = self._resolve_size(size)
        self._check_index(index, size)
        return self._resolve_ranges(inclusion_path_ranges(index, size))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from ``size1`` to ``size2`` (default: now)."""
        size2 = self._resolve_size(size2)
        if not 0 <= size1 <= size2:
            raise TreeError(f"no consistency proof from size {size1} to size {size2}")
        return self._resolve_ranges(consistency_proof_ranges(size1, size2))

    # ---------------------------------------------------------------- helpers

    def _resolve_size(self, size: int | None) -> int:
        current = self._size
        if size is None:
            return current
        if not 0 <= size <= current:
            raise TreeError(f"tree size {size} is not between 0 and the current size {current}")
        return size

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise TreeError(f"leaf index {index} is not in a tree of size {size}")

    def _resolve_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        plan = [subtree_nodes(s, e) for s, e in ranges]
        got = self._fetch([k for nodes in plan for k in nodes])
        return [fold_subtree([got[k] for k in nodes]) for nodes in plan]

    def _fetch(self, keys: list[NodeKey]) -> dict[NodeKey, bytes]:
        if not keys:
            return {}
        try:
            got = self._store.get_many(keys)
        except KeyError as exc:
            raise TreeError(f"the hash store is missing node {exc.args[0]}") from exc
        for k in keys:
            h = got.get(k)
            if h is None:
                raise TreeError(f"the hash store is missing node {k}")
            if len(h) != HASH_SIZE:
                raise TreeError(f"the hash store returned {len(h)} bytes for node {k}")
        return got


def _edge_keys(size: int) -> list[NodeKey]:
    """The perfect subtrees making up a tree of ``size`` leaves, left to right."""
    return [
        (level, (size >> level) - 1) for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1
    ]
