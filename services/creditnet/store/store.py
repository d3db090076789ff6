"""The city node's store: records, profiles, replay protection and revocations.

One :class:`Store` wraps one SQLAlchemy engine over SQLite or PostgreSQL.
Opening a store never creates or changes its schema unless asked to
(``migrate=True``); see :mod:`creditnet.store.schema`.

Thread safety: every method may be called from any thread at any time. Each
call takes its own pooled connection and runs in its own transaction; no
connection or mutable state is shared between calls. Once an
:class:`~creditnet.store.aio.AsyncStore` wraps the store, its writer thread is
the only one that writes: the write methods and :meth:`Store.run_write` hand
their work to it (and wait), and a write transaction opened on any other
thread is refused.

Atomicity and durability: every write method is one transaction. On SQLite,
write transactions start with ``BEGIN IMMEDIATE`` (they take the database's
write lock before reading, so check-then-write sequences such as
:meth:`Store.claim_query` cannot interleave, not even across processes) and the
database runs in WAL mode with ``synchronous=FULL`` (a commit that returned is
on disk). On PostgreSQL the same guarantees come from unique keys and
``INSERT ... ON CONFLICT``: a second transaction inserting the same key waits
for the first and then sees its outcome.

Bulk ingest takes each backend's fast path, always as one transaction that
readers see whole or not at all: on SQLite one ``executemany`` of a statement
compiled once; on PostgreSQL ``COPY`` into a temporary table, then one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (measured at about 1.5x
psycopg's pipelined executemany and 3x multi-row VALUES, with 5,000-row batches).
The same transaction adds the new rows to the per-provider, per-category counts
that :meth:`Store.stats` reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, Self, TypeVar, cast

import psycopg
from sqlalchemy import (
    URL,
    Connection,
    Date,
    Engine,
    Executable,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.pool import ConnectionPoolEntry

from creditnet.domain import Category, City
from creditnet.errors import Error
from creditnet.provenance import SignedBatch
from creditnet.store import schema
from creditnet.store.models import (
    CONSENT_USES,
    ENTERPRISES,
    MAX_QUERY_ID_LENGTH,
    QUERY_USES,
    RECORD_BATCHES,
    RECORD_COUNTS,
    RECORDS,
    REVOCATIONS,
)
from creditnet.store.schema import Migration, SchemaNotReady
from creditnet.v2 import records_pb2

__all__ = [
    "ClaimOutcome",
    "ClaimRefused",
    "ClaimedQuery",
    "DisclosedRecord",
    "Disclosure",
    "IngestResult",
    "InvalidRecord",
    "KeptAnswer",
    "QueryClaim",
    "Store",
    "StoreStats",
    "WriterThread",
]

UTC = dt.UTC

T = TypeVar("T")


class WriterThread(Protocol):
    """The one thread that writes a store's database (see :mod:`creditnet.store.aio`)."""

    def on_thread(self) -> bool: ...

    def run(self, fn: Callable[[], T]) -> T: ...

    def transact(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` inside a write transaction (its own savepoint of one the writer may share)."""
        ...


# How long a SQLite writer waits for another writer (another process, or the
# synchronous API used next to an AsyncStore) before giving up.
SQLITE_BUSY_TIMEOUT_S: Final = 30.0

# Execution option that marks a connection as about to write (SQLite then
# starts its transaction with BEGIN IMMEDIATE).
_WRITE: Final = schema.WRITE_OPTION

_RECORD_COLUMNS: Final = (
    "provider_id",
    "record_id",
    "uscc",
    "category",
    "city",
    "record_date",
    "source",
    "payload",
    "batch",
    "leaf_index",
    "inclusion_path",
)


_CATEGORY_BY_FIELD: Final = {
    field: Category.from_oneof_field(field).value
    for field in (f.name for f in records_pb2.CreditRecord.DESCRIPTOR.oneofs_by_name["detail"].fields)
}


def _written(method: Callable[..., T]) -> Callable[..., T]:
    """A write method of :class:`Store`: run on the store's writer thread when it has one."""

    @functools.wraps(method)
    def on_writer(self: Store, *args: Any, **kwargs: Any) -> T:
        return self._on_writer(functools.partial(method, self, *args, **kwargs))

    return on_writer


@functools.lru_cache(maxsize=1024)
def _city_code(code: str) -> str | None:
    """The code if it names a city, else None (the record is refused)."""
    try:
        return City(code).code
    except ValueError:
        return None


class InvalidRecord(Error, ValueError):
    """A record or profile the store cannot keep; nothing of its batch was stored."""


class ClaimOutcome(enum.Enum):
    """What :meth:`Store.claim_query` decided; only OK records anything."""

    OK = "ok"
    REPLAY = "replay"
    LIMIT_EXCEEDED = "limit_exceeded"
    REVOKED = "revoked"


class ClaimRefused(Error):
    """A claim made together with a write (its ledger entry) was refused:
    nothing of either was recorded."""

    def __init__(self, outcome: ClaimOutcome) -> None:
        super().__init__(f"claim refused: {outcome.value}")
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class DisclosedRecord:
    """A stored record as it is disclosed: the provider's exact bytes and its place in its signed batch."""

    payload: bytes
    # record_batches.id of its batch.
    batch: int
    leaf_index: int
    # The inclusion path, its 32-byte hashes concatenated.
    inclusion_path: bytes


@dataclass(frozen=True, slots=True)
class Disclosure:
    """What the node may disclose of one enterprise in a scope, read in one go."""

    records: list[DisclosedRecord]
    # The signed manifest (SignedEnvelope bytes) of each batch the records name.
    batches: dict[int, bytes]
    # Records in scope that no provider signature covers: never disclosed.
    withheld: int
    profile: records_pb2.EnterpriseProfile | None


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """A signed answer (SignedEnvelope bytes) and the index of the credit-chain entry that logged it."""

    answer: bytes
    ledger_index: int


@dataclass(frozen=True, slots=True)
class ClaimedQuery:
    """What a claimed query id holds: the digest of the signed query that
    claimed it and, once its credit-chain entry is written, the kept answer."""

    query_digest: bytes | None
    kept: KeptAnswer | None


@dataclass(frozen=True, slots=True)
class QueryClaim:
    """One query about to be answered under one consent."""

    query_id: str
    consent_digest: bytes
    # The limit the consent policy granted (`policy.Grant.max_uses`; 0: none):
    # the policy decides it, the claim counts the uses against it atomically.
    max_uses: int
    expires_at: dt.datetime
    # SHA-256 of the signed query's payload: recorded with the claim so that
    # a retry of this very query can be told from another under the same id
    # even when the answer was never written.
    query_digest: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 < len(self.query_id) <= MAX_QUERY_ID_LENGTH:
            raise ValueError(
                f"query_id must have 1 to {MAX_QUERY_ID_LENGTH} characters, not {len(self.query_id)}"
            )
        if not self.consent_digest:
            raise ValueError("consent_digest is empty")
        if self.max_uses < 0:
            raise ValueError(f"max_uses must be 0 (unlimited) or positive, not {self.max_uses}")
        _require_aware(self.expires_at, "expires_at")


@dataclass(frozen=True, slots=True)
class StoreStats:
    enterprises: int
    records: int
    records_by_category: dict[Category, int]
    records_by_provider: dict[str, int]
    answered_queries: int
    revocations: int
    # None where the size is not cheap to know.
    db_size_bytes: int | None


class Store:
    """Synchronous access to one node database. Open with :meth:`Store.open`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._backend = engine.dialect.name
        # SQLite has one writer at a time, and a connection that finds the
        # lock taken polls for it, sleeping up to tens of milliseconds between
        # tries. The node's writers (claims, the credit chain, checkpoints,
        # ingest) take turns on this lock instead, and the next one starts the
        # moment the last commits. Other processes still meet busy_timeout.
        self._write_turn: threading.RLock | None = threading.RLock() if self._backend == "sqlite" else None
        # Set by an AsyncStore: from then on every write of this process to
        # the database runs on its writer thread (see run_write).
        self._writer: WriterThread | None = None
        self._upsert_insert: Callable[[Table], Any]
        self._insert_records: Callable[[Connection, list[tuple[object, ...]]], dict[str, int]]
        if self._backend == "sqlite":
            self._upsert_insert = sqlite.insert
            # The text SQLAlchemy's Date type writes on SQLite, so that the
            # bulk path and Core filters agree.
            self._date_param: Callable[[dt.date], object] = dt.date.isoformat
            self._ingest_sql = self._compile_ingest()
            self._insert_records = self._insert_records_sqlite
        else:
            self._upsert_insert = postgresql.insert
            self._date_param = _identity_date
            self._insert_records = _insert_records_postgresql
        self._claim_sql = _ClaimStatements.build(self._upsert_insert)
        count = self._upsert_insert(RECORD_COUNTS)
        self._count_sql: Executable = count.on_conflict_do_update(
            index_elements=[RECORD_COUNTS.c.provider_id, RECORD_COUNTS.c.category],
            set_={"records": RECORD_COUNTS.c.records + count.excluded.records},
        )

    @classmethod
    def open(cls, url: str, *, migrate: bool = False) -> Store:
        """Open ``sqlite:///path.db`` or ``postgresql+psycopg://user@host/db``.

        The database must be at the schema revision this software needs, else
        :class:`SchemaNotReady` tells the operator to run ``creditnet node
        migrate`` (and nothing is created, not even an empty SQLite file). With
        ``migrate=True`` the schema is first created or upgraded to it: for
        ``node init``, provisioning and tests.
        """
        engine = _create_engine(url, create=migrate)
        try:
            if migrate:
                schema.migrate(engine)
            else:
                schema.require_head(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @staticmethod
    def migrate(url: str, target: str = "head") -> Migration:
        """Move the database at ``url`` to schema revision ``target`` (``head``,
        ``base`` or a revision id; downgrades too) and say from where to where."""
        engine = _create_engine(url, create=True)
        try:
            return schema.migrate(engine, target)
        finally:
            engine.dispose()

    @staticmethod
    def revision(url: str) -> str | None:
        """The schema revision of the database at ``url`` (None: no schema,
        or no SQLite file at all)."""
        try:
            engine = _create_engine(url, create=False)
        except SchemaNotReady:
            return None
        try:
            return schema.current_revision(engine)
        finally:
            engine.dispose()

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._backend

    @property
    def engine(self) -> Engine:
        return self._engine

    def attach_writer(self, writer: WriterThread | None) -> None:
        """Route every write through `writer` (an AsyncStore's writer thread), or stop doing so."""
        self._writer = writer

    def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction, on the store's writer thread if it has one.

        Called from another thread, this waits for the writer to run it (so
        never call it from the event loop): the node's database then has one
        writer, whatever part of the node writes. There it joins the writer's
        group commit: it runs in a savepoint of the transaction that holds
        whatever else was queued, so an exception rolls back ``fn``'s writes
        alone, and it returns once that transaction has committed.
        """
        writer = self._writer
        if writer is None or writer.on_thread():
            return self._in_write_transaction(fn)
        return writer.transact(fn)

    def _in_write_transaction(self, fn: Callable[[Connection], T]) -> T:
        with self._writing() as conn:
            return fn(conn)

    def _on_writer(self, fn: Callable[[], T]) -> T:
        writer = self._writer
        if writer is None or writer.on_thread():
            return fn()
        return writer.run(fn)

    # -- records ---------------------------------------------------------

    @_written
    def ingest(
        self,
        records: Sequence[records_pb2.CreditRecord],
        provider_id: str,
        *,
        signed: SignedBatch | None = None,
        leaves: Sequence[int] | None = None,
    ) -> IngestResult:
        """Store validated records from one provider, in one transaction.

        With `signed` (the provider-signed batch the records came in, checked
        by the caller) and `leaves` (each record's position in it), each
        record's payload is exactly the bytes its provider signed, kept with
        its batch and inclusion path: only such records are ever disclosed
        (:meth:`disclose`). The records must then carry ``provider_id``
        themselves. Without `signed` (stores filled before records were
        signed, store tests) the payload is the record with ``provider_id``
        set, and it is never disclosed.

        A record whose ``(provider_id, record_id)`` is already stored (or
        repeats earlier in the batch) is a duplicate and changes nothing: the
        first one stored wins; except that an unsigned stored record is
        replaced by the same record (same enterprise and category) arriving
        signed, so re-submitting old data signed makes it disclosable. On any
        error nothing of the batch is stored.
        """
        if not provider_id or "\0" in provider_id:
            raise ValueError("provider_id is empty or holds a NUL character")
        if not records:
            return IngestResult(accepted=0, duplicates=0)
        if signed is not None:
            if leaves is None or len(leaves) != len(records):
                raise ValueError("a signed batch needs each record's leaf index")
            if signed.provider_id != provider_id or any(r.provider_id != provider_id for r in records):
                raise InvalidRecord("a signed batch's records must name its provider")
        rows = self._record_rows(records, provider_id, signed=signed is not None)
        try:
            with self._writing() as conn:
                if signed is not None:
                    assert leaves is not None
                    batch = self._batch_id(conn, signed)
                    rows = [
                        (*row[:7], signed.raw[leaf], batch, leaf, signed.paths[leaf])
                        for row, leaf in zip(rows, leaves, strict=True)
                    ]
                new = self._insert_records(conn, rows)
                if new:
                    conn.execute(
                        self._count_sql,
                        [
                            {"provider_id": provider_id, "category": c, "records": n}
                            # One order for every writer: no two transactions
                            # wait on each other's count rows.
                            for c, n in sorted(new.items())
                        ],
                    )
        except (IntegrityError, DataError) as exc:
            raise InvalidRecord(
                f"the database refused the batch, nothing of it was stored: {exc.orig}"
            ) from exc
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            raise InvalidRecord(f"the database refused the batch, nothing of it was stored: {exc}") from exc
        accepted = sum(new.values())
        return IngestResult(accepted=accepted, duplicates=len(rows) - accepted)

    def _batch_id(self, conn: Connection, signed: SignedBatch) -> int:
        stmt = self._upsert_insert(RECORD_BATCHES).on_conflict_do_nothing(
            index_elements=[RECORD_BATCHES.c.digest]
        )
        conn.execute(
            stmt,
            {
                "digest": signed.digest,
                "provider_id": signed.provider_id,
                "batch_id": signed.batch_id,
                "root": signed.root,
                "size": signed.size,
                "envelope": signed.envelope,
            },
        )
        found = conn.execute(_BATCH_BY_DIGEST, {"digest": signed.digest}).scalar_one()
        return int(found)

    def disclose(
        self,
        uscc: str,
        categories: Collection[Category],
        date_from: dt.date,
        date_to: dt.date,
        *,
        with_profile: bool,
    ) -> Disclosure:
        """The signed records of one enterprise in scope (as :meth:`find_records` orders them),
        their batches' manifests, how many unsigned ones were withheld and, `with_profile`, its profile."""
        if date_from > date_to:
            raise ValueError(f"date_from {date_from} is after date_to {date_to}")
        names = sorted({Category(c).value for c in categories})
        params = {"uscc": uscc, "categories": names, "date_from": date_from, "date_to": date_to}
        found: list[DisclosedRecord] = []
        withheld = 0
        batches: dict[int, bytes] = {}
        profile = None
        with self._reading() as conn:
            if names:
                for payload, batch, leaf, path in conn.execute(_DISCLOSE_RECORDS, params):
                    if batch is None:
                        withheld += 1
                    else:
                        found.append(DisclosedRecord(bytes(payload), int(batch), int(leaf), bytes(path)))
            wanted = sorted({r.batch for r in found})
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                for bid, envelope in conn.execute(_BATCH_ENVELOPES, {"ids": chunk}):
                    batches[int(bid)] = bytes(envelope)
            if with_profile:
                profile = conn.execute(_GET_PROFILE, {"uscc": uscc}).scalar_one_or_none()
        if len(batches) != len(wanted):
            raise RuntimeError("a stored record names a batch the store does not hold")
        return Disclosure(
            records=found,
            batches=batches,
            withheld=withheld,
            profile=None if profile is None else records_pb2.EnterpriseProfile.FromString(profile),
        )

    def find_records(
        self,
        uscc: str,
        categories: Collection[Category],
        date_from: dt.date,
        date_to: dt.date,
    ) -> list[records_pb2.CreditRecord]:
        """Records of one enterprise in the given categories whose record_date
        lies in ``[date_from, date_to]``, ordered by category name, record_date
        and insertion order, signed or not (what a node discloses is :meth:`disclose`)."""
        if date_from > date_to:
            raise ValueError(f"date_from {date_from} is after date_to {date_to}")
        names = sorted({Category(c).value for c in categories})
        if not names:
            return []
        params = {"uscc": uscc, "categories": names, "date_from": date_from, "date_to": date_to}
        with self._reading() as conn:
            payloads = conn.execute(_FIND_RECORDS, params).scalars().all()
        return [records_pb2.CreditRecord.FromString(p) for p in payloads]

    # -- enterprise profiles -----------------------------------------------

    @_written
    def upsert_profiles(self, profiles: Sequence[records_pb2.EnterpriseProfile]) -> int:
        """Insert or replace profiles by USCC in one transaction (the last one
        given for a USCC wins); returns how many distinct enterprises were written."""
        rows: dict[str, dict[str, object]] = {}
        for i, profile in enumerate(profiles):
            if len(profile.uscc) != 18:
                raise InvalidRecord(f"profile {i}: uscc {profile.uscc!r} is not 18 characters")
            if not profile.name:
                raise InvalidRecord(f"profile {i} ({profile.uscc}): name is empty")
            if "\0" in profile.uscc or "\0" in profile.name:
                raise InvalidRecord(f"profile {i} ({profile.uscc!r}): a text field holds a NUL character")
            try:
                city = City.from_proto(profile.home_city)
            except ValueError as exc:
                raise InvalidRecord(f"profile {i} ({profile.uscc}): home_city: {exc}") from exc
            rows[profile.uscc] = {
                "uscc": profile.uscc,
                "name": profile.name,
                "home_city": city.value,
                "payload": profile.SerializeToString(deterministic=True),
            }
        if not rows:
            return 0
        stmt = self._upsert_insert(ENTERPRISES)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ENTERPRISES.c.uscc],
            set_={k: stmt.excluded[k] for k in ("name", "home_city", "payload")},
        )
        with self._writing() as conn:
            conn.execute(stmt, list(rows.values()))
        return len(rows)

    def get_profile(self, uscc: str) -> records_pb2.EnterpriseProfile | None:
        with self._reading() as conn:
            payload = conn.execute(_GET_PROFILE, {"uscc": uscc}).scalar_one_or_none()
        return None if payload is None else records_pb2.EnterpriseProfile.FromString(payload)

    # -- replay protection and consent use ----------------------------------

    def claim_query(
        self,
        query_id: str,
        consent_digest: bytes,
        max_uses: int,
        expires_at: dt.datetime,
        *,
        query_digest: bytes | None = None,
    ) -> ClaimOutcome:
        """Record that ``query_id`` is answered under the consent, atomically.

        The outcome is, in this order of precedence: REPLAY if the query id was
        claimed before; LIMIT_EXCEEDED if ``max_uses > 0`` and the consent has
        been used ``max_uses`` times; REVOKED if the consent is revoked; else
        OK, and the query id (with ``query_digest``, the signed query's) and
        one more use of the consent are recorded in the same transaction.
        Nothing is recorded unless the outcome is OK.
        """
        claim = QueryClaim(query_id, consent_digest, max_uses, expires_at, query_digest)
        outcome = self.claim_queries([claim])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @_written
    def claim_queries(self, claims: Sequence[QueryClaim]) -> list[ClaimOutcome | Exception]:
        """Several :meth:`claim_query` calls in one transaction and one commit.

        Each claim runs in its own savepoint, in order, so later claims see
        earlier ones (the same query id twice: OK then REPLAY). A claim that
        raises is rolled back alone and its exception is returned in its slot;
        the others still commit. An exception raised from here (the commit
        itself failed) means none of the claims was recorded.
        """
        now = dt.datetime.now(UTC)
        with self._writing() as conn:
            return [self.claim_in(conn, claim, now) for claim in claims]

    def claim_in(self, conn: Connection, claim: QueryClaim, now: dt.datetime) -> ClaimOutcome | Exception:
        """One claim inside the caller's write transaction, in its own savepoint:
        rolled back alone unless OK (an exception it raised is returned)."""
        savepoint = conn.begin_nested()
        try:
            outcome = self._claim(conn, claim, now)
        except Exception as exc:
            savepoint.rollback()
            return exc
        if outcome is ClaimOutcome.OK:
            savepoint.commit()
        else:
            savepoint.rollback()
        return outcome

    def consent_uses(self, consent_digest: bytes) -> int:
        stmt = select(CONSENT_USES.c.uses).where(CONSENT_USES.c.consent_digest == consent_digest)
        with self._reading() as conn:
            uses = conn.execute(stmt).scalar_one_or_none()
        return 0 if uses is None else int(uses)

    @_written
    def prune_queries(self, now: dt.datetime) -> int:
        """Forget query ids whose query expired before ``now``; returns how many.

        This cannot open a replay: an expired query is refused as expired
        before it is ever claimed, so its id is not needed any more. Callers
        pass an ``expires_at`` to :meth:`claim_query` that already includes the
        clock skew they tolerate.
        """
        _require_aware(now, "now")
        with self._writing() as conn:
            return conn.execute(delete(QUERY_USES).where(QUERY_USES.c.expires_at < now)).rowcount

    # -- revocations -----------------------------------------------------

    @_written
    def revoke(
        self,
        consent_digest: bytes,
        consent_id: str,
        uscc: str,
        revoked_at: dt.datetime,
        envelope: bytes,
    ) -> bool:
        """Record a verified revocation; False if the consent was already revoked."""
        if not consent_digest:
            raise ValueError("consent_digest is empty")
        if not envelope:
            raise ValueError("the signed revocation envelope is empty")
        _require_aware(revoked_at, "revoked_at")
        stmt = (
            self._upsert_insert(REVOCATIONS)
            .values(
                consent_digest=consent_digest,
                consent_id=consent_id,
                uscc=uscc,
                revoked_at=revoked_at,
                envelope=envelope,
            )
            .on_conflict_do_nothing(index_elements=[REVOCATIONS.c.consent_digest])
            .returning(REVOCATIONS.c.consent_digest)
        )
        with self._writing() as conn:
            return conn.execute(stmt).first() is not None

    def is_revoked(self, consent_digest: bytes) -> bool:
        with self._reading() as conn:
            return _is_revoked(conn, consent_digest)

    def kept_answer(self, query_id: str, query_digest: bytes) -> KeptAnswer | None:
        """The answer given to this very query (same id, same signed payload), if one was logged."""
        stmt = select(QUERY_USES.c.answer, QUERY_USES.c.ledger_index).where(
            QUERY_USES.c.query_id == query_id,
            QUERY_USES.c.query_digest == query_digest,
            QUERY_USES.c.answer.is_not(None),
        )
        with self._reading() as conn:
            row = conn.execute(stmt).first()
        if row is None or row.ledger_index is None:
            return None
        return KeptAnswer(answer=bytes(row.answer), ledger_index=int(row.ledger_index))

    def claimed(self, query_id: str) -> ClaimedQuery | None:
        """What the claim of ``query_id`` holds, if the id is claimed.

        A claim without a kept answer is a use spent with nothing disclosed
        or logged yet: its answer is being written, or the node stopped (or
        its append failed) between the claim's commit and the entry's.
        """
        stmt = select(QUERY_USES.c.query_digest, QUERY_USES.c.answer, QUERY_USES.c.ledger_index).where(
            QUERY_USES.c.query_id == query_id
        )
        with self._reading() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        kept = None
        if row.answer is not None and row.ledger_index is not None:
            kept = KeptAnswer(answer=bytes(row.answer), ledger_index=int(row.ledger_index))
        return ClaimedQuery(None if row.query_digest is None else bytes(row.query_digest), kept)

    # -- routing ---------------------------------------------------------

    def record_total(self) -> int:
        """How many records the node holds, from the kept counts (a few rows, not a scan)."""
        with self._reading() as conn:
            return sum(int(n) for _, _, n in conn.execute(_RECORD_COUNTS))

    def scan_record_usccs(self, consume: Callable[[str], None], *, chunk: int = 10_000) -> int:
        """Call `consume` with the USCC of every enterprise the node holds records of
        (each once, in code order); returns the record total read *before* the scan.

        A batch committed during the scan may be in it or not, but is never
        counted in the total without being in it: a caller that compares the
        total later sees the change and scans again.
        """
        total = self.record_total()
        last = ""
        while True:
            with self._reading() as conn:
                rows = conn.execute(_RECORD_USCCS, {"after": last, "limit": chunk}).scalars().all()
            for uscc in rows:
                consume(str(uscc))
            if len(rows) < chunk:
                return total
            last = str(rows[-1])

    # -- statistics ------------------------------------------------------

    def stats(self) -> StoreStats:
        """Counts of what the node holds, read in one transaction. Records are
        counted from the kept counts, not by scanning them."""
        count = func.count()
        by_category: dict[Category, int] = {}
        by_provider: dict[str, int] = {}
        with self._engine.connect() as conn:
            enterprises = conn.execute(select(count).select_from(ENTERPRISES)).scalar_one()
            for provider, category, n in conn.execute(_RECORD_COUNTS):
                if n:
                    by_category[Category(category)] = by_category.get(Category(category), 0) + int(n)
                    by_provider[str(provider)] = by_provider.get(str(provider), 0) + int(n)
            answered = conn.execute(select(count).select_from(QUERY_USES)).scalar_one()
            revocations = conn.execute(select(count).select_from(REVOCATIONS)).scalar_one()
            size = self._db_size(conn)
        return StoreStats(
            enterprises=int(enterprises),
            records=sum(by_category.values()),
            records_by_category=by_category,
            records_by_provider=by_provider,
            answered_queries=int(answered),
            revocations=int(revocations),
            db_size_bytes=size,
        )

    def write_transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction on this store's database (BEGIN IMMEDIATE on SQLite),
        for other parts of the node that keep tables here, on the writer
        thread itself (elsewhere, use :meth:`run_write`)."""
        return self._writing()

    # -- internals -------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        # A single-statement read needs no transaction: on PostgreSQL,
        # autocommit saves the BEGIN and ROLLBACK round trips around it.
        with self._engine.connect() as conn:
            if self._backend == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        if self._writer is not None and not self._writer.on_thread():
            # Fail closed: a second writer thread is what this store rules out.
            raise RuntimeError("this store's database is written by its writer thread only; use run_write")
        with self._write_turn or contextlib.nullcontext(), self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def _compile_ingest(self) -> str:
        # Compiled once from the table definition, then run with plain tuples
        # through the driver's executemany: per-row work stays in C, which is
        # what makes bulk ingest as fast as hand-written sqlite3 code.
        insert = self._upsert_insert(RECORDS).inline()
        stmt = insert.on_conflict_do_update(
            index_elements=[RECORDS.c.provider_id, RECORDS.c.record_id],
            set_={c: insert.excluded[c] for c in _ADOPTED_COLUMNS},
            where=_adoptable(insert.excluded),
        )
        dialect = self._engine.dialect
        if not dialect.positional:
            dialect = cast("type[DefaultDialect]", type(dialect))(paramstyle="qmark")
        compiled = stmt.compile(dialect=dialect, column_keys=list(_RECORD_COLUMNS))
        if tuple(compiled.positiontup or ()) != _RECORD_COLUMNS:
            raise RuntimeError(f"unexpected ingest parameter order {compiled.positiontup}")
        return str(compiled)

    def _insert_records_sqlite(self, conn: Connection, rows: list[tuple[object, ...]]) -> dict[str, int]:
        # Under BEGIN IMMEDIATE no one else writes, and a new rowid is always
        # above the largest one: the rows above the old maximum are exactly
        # the ones this batch added (duplicates were skipped).
        before = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM records").scalar_one()
        conn.exec_driver_sql(self._ingest_sql, rows)
        added = conn.exec_driver_sql(
            "SELECT category, count(*) FROM records WHERE id > ? GROUP BY category", (before,)
        )
        return {str(category): int(n) for category, n in added}

    def _record_rows(
        self, records: Sequence[records_pb2.CreditRecord], provider_id: str, *, signed: bool = False
    ) -> list[tuple[object, ...]]:
        # The hot loop of ingest: dictionary look-ups instead of enum
        # conversions, and each distinct date converted once.
        rows: list[tuple[object, ...]] = []
        append = rows.append
        category_of = _CATEGORY_BY_FIELD.get
        city_of = _city_code
        date_param = self._date_param
        dates: dict[tuple[int, int, int], object] = {}
        new_record = records_pb2.CreditRecord
        for index, rec in enumerate(records):
            category = category_of(rec.WhichOneof("detail") or "")
            city = city_of(rec.city)
            d = rec.record_date
            key = (d.year, d.month, d.day)
            day = dates.get(key)
            if category is None or city is None or day is None:
                if category is None:
                    raise InvalidRecord(
                        f"record {index} ({rec.record_id!r}) has no detail; set one category field"
                    )
                if city is None:
                    raise InvalidRecord(f"record {index} ({rec.record_id!r}): unknown city {rec.city}")
                try:
                    day = dates[key] = date_param(dt.date(*key))
                except ValueError as exc:
                    raise InvalidRecord(
                        f"record {index} ({rec.record_id!r}): record_date {key} is not a date: {exc}"
                    ) from exc
            if "\0" in rec.record_id or "\0" in rec.enterprise_uscc or "\0" in rec.source:
                # PostgreSQL text cannot hold NUL; refused on SQLite too, so
                # that a node's data can always move between the two.
                raise InvalidRecord(f"record {index} ({rec.record_id!r}): a text field holds a NUL character")
            payload = b""  # a signed record's payload is its provider's bytes, set by the caller
            if not signed:
                stored = new_record()
                stored.CopyFrom(rec)
                stored.provider_id = provider_id
                payload = stored.SerializeToString()
            append(
                (
                    provider_id,
                    rec.record_id,
                    rec.enterprise_uscc,
                    category,
                    city,
                    day,
                    rec.source,
                    payload,
                    None,
                    None,
                    None,
                )
            )
        return rows

    def _claim(self, conn: Connection, claim: QueryClaim, now: dt.datetime) -> ClaimOutcome:
        # The query id goes in first: its unique key is what serialises two
        # claims of one id (the second waits, then finds it).
        inserted = conn.execute(
            self._claim_sql.record_query,
            {
                "query_id": claim.query_id,
                "consent_digest": claim.consent_digest,
                "query_digest": claim.query_digest,
                "used_at": now,
                "expires_at": claim.expires_at,
            },
        ).first()
        if inserted is None:
            return ClaimOutcome.REPLAY
        if claim.max_uses > 0:
            use = conn.execute(
                self._claim_sql.count_limited_use,
                {"consent_digest": claim.consent_digest, "max_uses": claim.max_uses},
            )
        else:
            use = conn.execute(self._claim_sql.count_use, {"consent_digest": claim.consent_digest})
        if use.first() is None:
            return ClaimOutcome.LIMIT_EXCEEDED
        if _is_revoked(conn, claim.consent_digest):
            return ClaimOutcome.REVOKED
        return ClaimOutcome.OK

    def _db_size(self, conn: Connection) -> int | None:
        if self._backend == "sqlite":
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            page_size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
            return int(pages) * int(page_size)
        return int(conn.execute(select(func.pg_database_size(func.current_database()))).scalar_one())


# PostgreSQL's bulk path. The staging table lives as long as the pooled
# connection and is emptied at every commit; ``ord`` keeps the batch's order
# (the first of two rows with one key wins, and ids follow the batch).
_PG_STAGE: Final = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS creditnet_ingest (ord integer NOT NULL, provider_id text,"
    " record_id text, uscc text, category text, city text, record_date date, source text, payload bytea,"
    " batch bigint, leaf_index bigint, inclusion_path bytea)"
    " ON COMMIT DELETE ROWS"
)
_PG_COPY: Final = (
    "COPY creditnet_ingest (ord, provider_id, record_id, uscc, category, city, record_date, source, payload,"
    " batch, leaf_index, inclusion_path) FROM STDIN"
)
# Inserts the staged rows and says how many of each category were new.
_PG_ADDED: Final = (
    "WITH added AS ("
    " INSERT INTO records (provider_id, record_id, uscc, category, city, record_date, source, payload,"
    " batch, leaf_index, inclusion_path)"
    " SELECT provider_id, record_id, uscc, category, city, record_date, source, payload,"
    " batch, leaf_index, inclusion_path"
    # A key twice in one batch: the first wins (DO UPDATE may touch a row once).
    " FROM (SELECT DISTINCT ON (provider_id, record_id) * FROM creditnet_ingest"
    " ORDER BY provider_id, record_id, ord) AS first ORDER BY ord"
    " ON CONFLICT (provider_id, record_id) DO UPDATE SET"
    " record_date = excluded.record_date, source = excluded.source, payload = excluded.payload,"
    " batch = excluded.batch, leaf_index = excluded.leaf_index, inclusion_path = excluded.inclusion_path"
    " WHERE records.batch IS NULL AND excluded.batch IS NOT NULL"
    " AND records.uscc = excluded.uscc AND records.category = excluded.category"
    # xmax is 0 only for a row this statement inserted: an adopted row is not new.
    " RETURNING category, (xmax = 0) AS inserted"
    ") SELECT category, count(*) FROM added WHERE inserted GROUP BY category"
)


def _insert_records_postgresql(conn: Connection, rows: list[tuple[object, ...]]) -> dict[str, int]:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    with raw.cursor() as cur:
        cur.execute(_PG_STAGE)
        with cur.copy(_PG_COPY) as copy:
            for index, row in enumerate(rows):
                copy.write_row((index, *row))
        cur.execute(_PG_ADDED)
        return {str(category): int(n) for category, n in cur.fetchall()}


# A stored record without a batch (stored before records were signed) is
# replaced by the same record (same enterprise and category, so the kept
# counts stay right) arriving in a signed batch; nothing else is ever replaced.
_ADOPTED_COLUMNS: Final = ("record_date", "source", "payload", "batch", "leaf_index", "inclusion_path")


def _adoptable(excluded: Any) -> Any:
    return (
        RECORDS.c.batch.is_(None)
        & excluded.batch.is_not(None)
        & (RECORDS.c.uscc == excluded.uscc)
        & (RECORDS.c.category == excluded.category)
    )


_BATCH_BY_DIGEST: Final = select(RECORD_BATCHES.c.id).where(RECORD_BATCHES.c.digest == bindparam("digest"))
_BATCH_ENVELOPES: Final = select(RECORD_BATCHES.c.id, RECORD_BATCHES.c.envelope).where(
    RECORD_BATCHES.c.id.in_(bindparam("ids", expanding=True))
)

# The read hot path (every answered query), built once.
_FIND_RECORDS: Final = (
    select(RECORDS.c.payload)
    .where(
        RECORDS.c.uscc == bindparam("uscc"),
        RECORDS.c.category.in_(bindparam("categories", expanding=True)),
        RECORDS.c.record_date >= bindparam("date_from", type_=Date),
        RECORDS.c.record_date <= bindparam("date_to", type_=Date),
    )
    .order_by(RECORDS.c.category, RECORDS.c.record_date, RECORDS.c.id)
)
_DISCLOSE_RECORDS: Final = _FIND_RECORDS.with_only_columns(
    RECORDS.c.payload, RECORDS.c.batch, RECORDS.c.leaf_index, RECORDS.c.inclusion_path
)
_RECORD_COUNTS: Final = select(RECORD_COUNTS.c.provider_id, RECORD_COUNTS.c.category, RECORD_COUNTS.c.records)
_RECORD_USCCS: Final = (
    select(RECORDS.c.uscc)
    .where(RECORDS.c.uscc > bindparam("after"))
    .group_by(RECORDS.c.uscc)
    .order_by(RECORDS.c.uscc)
    .limit(bindparam("limit"))
)
_GET_PROFILE: Final = select(ENTERPRISES.c.payload).where(ENTERPRISES.c.uscc == bindparam("uscc"))
_IS_REVOKED: Final = select(REVOCATIONS.c.consent_digest).where(
    REVOCATIONS.c.consent_digest == bindparam("consent_digest")
)


def _is_revoked(conn: Connection, consent_digest: bytes) -> bool:
    return conn.execute(_IS_REVOKED, {"consent_digest": consent_digest}).first() is not None


@dataclass(frozen=True, slots=True)
class _ClaimStatements:
    """The claim path's statements, built once per dialect (claims are the
    node's hot write path; building statements per call costs more than
    running them)."""

    record_query: Executable
    count_use: Executable
    count_limited_use: Executable

    @classmethod
    def build(cls, upsert_insert: Callable[[Table], Any]) -> _ClaimStatements:
        record_query = (
            upsert_insert(QUERY_USES)
            .values(
                query_id=bindparam("query_id"),
                consent_digest=bindparam("consent_digest"),
                query_digest=bindparam("query_digest"),
                used_at=bindparam("used_at"),
                expires_at=bindparam("expires_at"),
            )
            .on_conflict_do_nothing(index_elements=[QUERY_USES.c.query_id])
            .returning(QUERY_USES.c.query_id)
        )

        # Counting and checking the limit in one statement: the row lock of
        # the upsert makes concurrent uses of one consent count one by one.
        def count(limited: bool) -> Executable:
            stmt = upsert_insert(CONSENT_USES).values(consent_digest=bindparam("consent_digest"), uses=1)
            return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
                index_elements=[CONSENT_USES.c.consent_digest],
                set_={"uses": CONSENT_USES.c.uses + 1},
                where=(CONSENT_USES.c.uses < bindparam("max_uses")) if limited else None,
            ).returning(CONSENT_USES.c.uses)

        return cls(record_query=record_query, count_use=count(False), count_limited_use=count(True))


def _identity_date(value: dt.date) -> dt.date:
    return value


def _require_aware(value: dt.datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} is a naive datetime; pass an aware one (e.g. in UTC)")


def _create_engine(url: str, *, create: bool) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValueError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, create=create)
    if backend in ("postgresql", "postgres"):
        if parsed.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise ValueError(
                f"PostgreSQL is used through psycopg 3, not {parsed.drivername!r}; use postgresql+psycopg://"
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise ValueError(f"unsupported database {backend!r}; use sqlite:///path.db or postgresql+psycopg://...")


def _sqlite_engine(url: URL, *, create: bool) -> Engine:
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        raise ValueError("an in-memory SQLite database is not supported; use sqlite:///path.db")
    if create:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    elif not Path(database).is_file():
        raise SchemaNotReady(
            f"the SQLite database {database} does not exist; create it with"
            " `creditnet node migrate --config node.json`"
        )
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=8,
        max_overflow=8,
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
    # The sqlite3 module's own transaction handling starts transactions late
    # and never as IMMEDIATE; switch it off and begin explicitly (below).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        _sqlite_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_wal(cursor: sqlite3.Cursor) -> None:
    # Turning a new database to WAL needs it to itself for a moment, and
    # SQLite does not wait for that as it waits for other locks: when two
    # processes open a new database at once, one is told "locked" at once.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.005)


def _sqlite_on_begin(conn: Connection) -> None:
    writing = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")
