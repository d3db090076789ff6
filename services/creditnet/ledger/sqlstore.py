"""The log's durable state in SQL: entries, perfect-subtree hashes, size.

`SqlLog` implements tree.HashStore. An append writes the new entries, every
newly completed subtree hash and the new size in ONE transaction whose size
update is conditional on the size it extends, so two writers can never
interleave and a crash leaves either the whole batch or none of it.

In a node that transaction is the store writer's (store.aio): the claims of
the queries the entries log commit in it too (:meth:`SqlLog.write`).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, or_, select, update

from creditnet.chain.tree import MerkleTree, NodeKey, TreeConflictError
from creditnet.errors import Error
from creditnet.store import Store
from creditnet.store.models import CHAIN_ENTRIES, CHAIN_HASHES, CHAIN_META, QUERY_USES

__all__ = [
    "CacheMiss",
    "KeptQueryAnswer",
    "PendingEntry",
    "SqlLog",
    "pack_certificates",
    "unpack_certificates",
]

# EntryKind.ENTRY_KIND_QUERY_REFUSED (chain.proto); the log stores kinds as numbers.
REFUSED_KIND = 2

# Subtree hashes never change once written. Proofs for recent entries (every
# receipt) need recent leaves and interior nodes of every level, so appends
# keep what they write in memory; the bounds keep memory flat as the log grows.
LEAF_CACHE = 65_536
INTERIOR_CACHE = 262_144


_CACHE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("chain_cache_only", default=False)


class CacheMiss(Error, LookupError):
    """A subtree hash is not in memory (only raised in cache-only mode)."""


@dataclass(frozen=True, slots=True)
class PendingEntry:
    entry: bytes
    kind: int
    uscc: str | None = None
    salt: bytes | None = None
    # An answered query's signed answer, kept in the same transaction as its
    # entry so that a retry of the identical query gets it again.
    answer: KeptQueryAnswer | None = None


@dataclass(frozen=True, slots=True)
class KeptQueryAnswer:
    query_id: str
    query_digest: bytes
    answer: bytes


class SqlLog:
    """A HashStore over the node's database that also stores the entries."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine: Engine = store.engine
        store.run_write(_create_meta)
        self._pending: list[PendingEntry] = []
        # The writer's open transaction while an append runs in it (see write).
        self._conn: Connection | None = None
        # Subtree hashes written in that transaction: cached only once it commits.
        self._uncommitted: list[tuple[int, int, bytes]] = []
        self._leaves: dict[NodeKey, bytes] = {}
        self._interior: dict[NodeKey, bytes] = {}
        self._lock = threading.Lock()
        self.tree = MerkleTree(self)

    # -- HashStore ---------------------------------------------------------

    def size(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(CHAIN_META.c.size).where(CHAIN_META.c.id == 1)).scalar_one())

    def get(self, level: int, index: int) -> bytes:
        return self.get_many([(level, index)])[(level, index)]

    def get_many(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        wanted = list(dict.fromkeys(keys))
        out: dict[NodeKey, bytes] = {}
        missing: list[NodeKey] = []
        for k in wanted:
            h = (self._interior if k[0] else self._leaves).get(k)
            if h is None:
                missing.append(k)
            else:
                out[k] = h
        if missing and _CACHE_ONLY.get():
            raise CacheMiss(missing[0])
        if missing:
            # One primary-key lookup per node (an OR of equalities uses the
            # index; a row-value IN list does not on SQLite).
            cond = or_(*(and_(CHAIN_HASHES.c.level == lv, CHAIN_HASHES.c.idx == ix) for lv, ix in missing))
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(CHAIN_HASHES.c.level, CHAIN_HASHES.c.idx, CHAIN_HASHES.c.hash).where(cond)
                ).all()
            found = {(int(r.level), int(r.idx)): bytes(r.hash) for r in rows}
            absent = [k for k in missing if k not in found]
            if absent:
                raise KeyError(f"subtree hashes missing from the log: {absent[:3]}")
            self._remember(found.items())
            out.update(found)
        return out

    def _remember(self, items: Iterable[tuple[NodeKey, bytes]]) -> None:
        with self._lock:
            for k, h in items:
                cache = self._interior if k[0] else self._leaves
                if len(cache) >= (INTERIOR_CACHE if k[0] else LEAF_CACHE):
                    # Drop the oldest half: recent nodes are the ones receipts need.
                    for old in list(cache)[: len(cache) // 2]:
                        del cache[old]
                cache[k] = h

    def put_batch(self, items: list[tuple[int, int, bytes]], new_size: int) -> None:
        pending, self._pending = self._pending, []
        if self._conn is not None:
            self._put(self._conn, pending, items, new_size)
            self._uncommitted.extend(items)
            return
        self._store.run_write(lambda conn: self._put(conn, pending, items, new_size))
        self._remember(((lv, ix), h) for lv, ix, h in items)

    @staticmethod
    def _put(
        conn: Connection, pending: list[PendingEntry], items: list[tuple[int, int, bytes]], new_size: int
    ) -> None:
        old_size = new_size - sum(1 for level, _, _ in items if level == 0)
        moved = conn.execute(_MOVE_SIZE, {"old": old_size, "new": new_size}).rowcount
        if moved != 1:
            raise TreeConflictError(f"the log is no longer at size {old_size}; another writer appended")
        if pending:
            conn.execute(
                _INSERT_ENTRY,
                [
                    {"idx": old_size + i, "entry": p.entry, "kind": p.kind, "uscc": p.uscc, "salt": p.salt}
                    for i, p in enumerate(pending)
                ],
            )
        if items:
            conn.execute(_INSERT_HASH, [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in items])
        answered = [
            {
                "qid": p.answer.query_id,
                "qd": p.answer.query_digest,
                "ans": p.answer.answer,
                "ix": old_size + i,
            }
            for i, p in enumerate(pending)
            if p.answer is not None
        ]
        if answered:
            conn.execute(_KEEP_ANSWER, answered)

    def cached_inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """An inclusion proof from memory only; raises CacheMiss if a node must be read."""
        token = _CACHE_ONLY.set(True)
        try:
            return self.tree.inclusion_proof(index, size)
        finally:
            _CACHE_ONLY.reset(token)

    # -- entries -----------------------------------------------------------

    def append(self, entries: Sequence[PendingEntry]) -> int:
        """Durably append in a transaction of its own; returns the index of the first.

        On the store's writer thread (where a node's appends run, see
        :meth:`write`) or, for tools and tests, in a process of its own.
        """
        self._pending = list(entries)
        try:
            return self.tree.append_many([p.entry for p in entries])
        except BaseException:
            self._pending = []
            # The in-memory right edge may be ahead of what was stored.
            self.tree.reload()
            raise

    # store.aio.AppendLog: appends inside the store writer's group transaction.

    def write(self, conn: Connection, entries: Sequence[PendingEntry]) -> int:
        """Append inside the writer's open transaction; :meth:`committed` or
        :meth:`abandoned` must follow, on the same thread, before the next write."""
        self._pending = list(entries)
        self._conn = conn
        try:
            return self.tree.append_many([p.entry for p in entries])
        finally:
            self._pending = []
            self._conn = None

    def committed(self) -> tuple[int, bytes]:
        # Right after the commit, on the writer thread: the hashes it stored
        # become cacheable, and the root of the new size comes from the
        # tree's in-memory right edge, with no reads.
        items, self._uncommitted = self._uncommitted, []
        self._remember(((lv, ix), h) for lv, ix, h in items)
        return self.tree.size, self.tree.root()

    def abandoned(self) -> None:
        # Never cached: those keys will hold other hashes once appended again.
        self._uncommitted = []
        # The in-memory right edge is ahead of what was stored.
        self.tree.reload()

    def entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(CHAIN_ENTRIES.c.idx, CHAIN_ENTRIES.c.entry)
                .where(CHAIN_ENTRIES.c.idx >= start, CHAIN_ENTRIES.c.idx < end)
                .order_by(CHAIN_ENTRIES.c.idx)
            ).all()
        return [(int(r.idx), bytes(r.entry)) for r in rows]

    def last_index_of(self, uscc: str) -> int | None:
        """The index of the newest entry naming `uscc`, or None."""
        with self._engine.connect() as conn:
            idx = conn.execute(
                select(CHAIN_ENTRIES.c.idx)
                .where(CHAIN_ENTRIES.c.uscc == uscc)
                .order_by(CHAIN_ENTRIES.c.idx.desc())
                .limit(1)
            ).scalar()
        return None if idx is None else int(idx)

    def history_page(
        self,
        uscc: str,
        *,
        size: int,
        kinds: Sequence[int],
        newest_first: bool,
        after: int | None,
        limit: int,
    ) -> list[tuple[int, bytes, bytes]]:
        """Up to `limit` entries naming `uscc` below `size`, of `kinds`, continuing past index `after`.

        Pages by index (keyset), so a history of any length is read in
        bounded steps whichever end it starts from.
        """
        where = [
            CHAIN_ENTRIES.c.uscc == uscc,
            CHAIN_ENTRIES.c.idx < size,
            CHAIN_ENTRIES.c.kind.in_(list(kinds)),
        ]
        if after is not None:
            where.append(CHAIN_ENTRIES.c.idx < after if newest_first else CHAIN_ENTRIES.c.idx > after)
        order = CHAIN_ENTRIES.c.idx.desc() if newest_first else CHAIN_ENTRIES.c.idx
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(CHAIN_ENTRIES.c.idx, CHAIN_ENTRIES.c.entry, CHAIN_ENTRIES.c.salt)
                .where(and_(*where))
                .order_by(order)
                .limit(limit)
            ).all()
        return [(int(r.idx), bytes(r.entry), bytes(r.salt or b"")) for r in rows]

    def history_counts(self, uscc: str, size: int) -> tuple[dict[int, int], list[bytes]]:
        """Entries naming `uscc` below `size`: the count of each kind, and the refused ones' bytes."""
        with self._engine.connect() as conn:
            counts = conn.execute(
                select(CHAIN_ENTRIES.c.kind, func.count())
                .where(CHAIN_ENTRIES.c.uscc == uscc, CHAIN_ENTRIES.c.idx < size)
                .group_by(CHAIN_ENTRIES.c.kind)
            ).all()
            refused = conn.execute(
                select(CHAIN_ENTRIES.c.entry)
                .where(
                    CHAIN_ENTRIES.c.uscc == uscc,
                    CHAIN_ENTRIES.c.idx < size,
                    CHAIN_ENTRIES.c.kind == REFUSED_KIND,
                )
                .order_by(CHAIN_ENTRIES.c.idx)
            ).scalars()
            refused_entries = [bytes(e) for e in refused]
        return {int(k): int(n) for k, n in counts}, refused_entries


def _create_meta(conn: Connection) -> None:
    if conn.execute(select(CHAIN_META.c.size).where(CHAIN_META.c.id == 1)).scalar_one_or_none() is None:
        conn.execute(insert(CHAIN_META).values(id=1, size=0))


# The append path's statements (every answered query runs them), built once.
_MOVE_SIZE = (
    update(CHAIN_META)
    .where(CHAIN_META.c.id == 1, CHAIN_META.c.size == bindparam("old"))
    .values(size=bindparam("new"))
)
_INSERT_ENTRY = insert(CHAIN_ENTRIES)
_INSERT_HASH = insert(CHAIN_HASHES)
_KEEP_ANSWER = (
    update(QUERY_USES)
    .where(QUERY_USES.c.query_id == bindparam("qid"))
    .values(query_digest=bindparam("qd"), answer=bindparam("ans"), ledger_index=bindparam("ix"))
)


def pack_certificates(certs: list[bytes]) -> bytes:
    """A checkpoint's key certificates as stored: each prefixed by its length (4 bytes, big-endian)."""
    return b"".join(len(c).to_bytes(4, "big") + c for c in certs)


def unpack_certificates(data: bytes | None) -> list[bytes]:
    out: list[bytes] = []
    view = memoryview(data or b"")
    while len(view) >= 4:
        n = int.from_bytes(view[:4], "big")
        if n > len(view) - 4:
            raise ValueError("truncated certificate list")
        out.append(bytes(view[4 : 4 + n]))
        view = view[4 + n :]
    if len(view):
        raise ValueError("trailing bytes after the certificate list")
    return out
