"""The aggregator's shared state: one database that every replica reads through.

The network-checkpoint head, the chain of network checkpoints and the
revocation outbox live here (the witness state too, in the chain's tables),
so that two aggregator processes on one PostgreSQL database act as one:

- a network checkpoint of sequence n+1 is signed only inside the transaction
  that holds the head row locked (``SELECT ... FOR UPDATE`` on PostgreSQL,
  ``BEGIN IMMEDIATE`` on SQLite) and chains to the checkpoint n committed
  there; the sequence is also the chain table's primary key;
- a revocation is read from the database on every query (a primary-key
  lookup), so one accepted by any replica is enforced by all at once;
- a database that cannot be reached is a refusal (``aggregator.database``,
  UNAVAILABLE), never an answer from what this process last saw.

A single aggregator uses a SQLite file in its state directory; replicas are
given one PostgreSQL URL (docs/deployment.md, "Aggregator replicas").
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from creditnet.aggregator.models import CHECKPOINTS, DELIVERIES, HEAD, REVOCATIONS
from creditnet.dates import utcnow
from creditnet.domain import City
from creditnet.errors import Unavailable
from creditnet.store import Store
from creditnet.v2 import node_pb2

__all__ = [
    "DATABASE_RULE",
    "AggregatorState",
    "NetworkHead",
    "PendingRevocation",
    "reachable",
    "sqlite_url",
]

log = logging.getLogger(__name__)

DATABASE_RULE = "aggregator.database"
HEAD_ID = 1


def sqlite_url(state_dir: Path) -> str:
    """The default database: one SQLite file in the state directory (a single aggregator).

    Named as before revision 0006, when it held only the witness state: an
    upgraded aggregator keeps what it cosigned.
    """
    return f"sqlite:///{state_dir / 'witness.db'}"


@dataclass
class NetworkHead:
    sequence: int = 0
    note: str = ""
    city_notes: dict[str, str] = field(default_factory=dict)
    cities: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # The log-key certificates each city's checkpoint came with (its own and
    # its witnesses'), so that GetNetworkCheckpoint is verifiable on its own.
    city_certificates: dict[str, list[bytes]] = field(default_factory=dict)

    def cities_json(self) -> str:
        return json.dumps(
            {
                code: {
                    "size": size,
                    "root": base64.b64encode(root).decode(),
                    "note": self.city_notes.get(code, ""),
                    "certificates": [
                        base64.b64encode(c).decode() for c in self.city_certificates.get(code, [])
                    ],
                }
                for code, (size, root) in sorted(self.cities.items())
            },
            sort_keys=True,
        )

    @classmethod
    def from_row(cls, sequence: int, note: str, cities: str) -> NetworkHead:
        data: dict[str, dict[str, Any]] = json.loads(cities)
        head = cls(sequence=sequence, note=note)
        for code, c in data.items():
            head.cities[code] = (int(c["size"]), base64.b64decode(c["root"]))
            if c.get("note"):
                head.city_notes[code] = str(c["note"])
            head.city_certificates[code] = [base64.b64decode(x) for x in c.get("certificates", [])]
        return head


@dataclass(frozen=True, slots=True)
class PendingRevocation:
    digest: bytes
    request: node_pb2.RevokeConsentRequest
    cities: frozenset[City]


class AggregatorState:
    """The aggregator's tables on its store; every method blocks (call it in a thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._insert: Callable[..., Any] = (
            postgresql.insert if store.backend == "postgresql" else sqlite.insert
        )

    @classmethod
    def open(cls, url: str) -> AggregatorState:
        """Open (creating or upgrading the schema: replicas starting together migrate once)."""
        return cls(Store.open(url, migrate=True))

    def close(self) -> None:
        self.store.close()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with reachable(), self.store.engine.connect() as conn:
            yield conn

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with reachable(), self.store.write_transaction() as conn:
            yield conn

    # -- the network checkpoint chain -------------------------------------------

    def head(self) -> NetworkHead:
        """The newest committed network checkpoint (sequence 0, no note: none yet)."""
        with self._reading() as conn:
            row = conn.execute(
                select(CHECKPOINTS.c.sequence, CHECKPOINTS.c.note, CHECKPOINTS.c.cities)
                .order_by(CHECKPOINTS.c.sequence.desc())
                .limit(1)
            ).first()
        return NetworkHead() if row is None else NetworkHead.from_row(int(row[0]), str(row[1]), str(row[2]))

    def chain(self) -> list[tuple[int, str]]:
        """Every network checkpoint, (sequence, note), oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                select(CHECKPOINTS.c.sequence, CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.sequence)
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def advance(self, build: Callable[[NetworkHead], NetworkHead | None]) -> NetworkHead:
        """Hold the head locked, give `build` the committed head, and commit what it returns.

        `build` signs the next checkpoint (its sequence must be the committed
        one's plus one) or returns None when nothing changed. While it runs no
        other replica can commit, nor hold the lock: the checkpoint it signs
        chains to the head every replica sees, and no other of its sequence
        is ever signed.
        """
        with self._writing() as conn:
            conn.execute(self._insert(HEAD).values(id=HEAD_ID, sequence=0).on_conflict_do_nothing())
            sequence = conn.execute(
                select(HEAD.c.sequence).where(HEAD.c.id == HEAD_ID).with_for_update()
            ).scalar_one()
            committed = NetworkHead()
            if sequence:
                row = conn.execute(
                    select(CHECKPOINTS.c.note, CHECKPOINTS.c.cities).where(CHECKPOINTS.c.sequence == sequence)
                ).one()
                committed = NetworkHead.from_row(int(sequence), str(row[0]), str(row[1]))
            new = build(committed)
            if new is None:
                return committed
            if new.sequence != committed.sequence + 1:
                raise ValueError(f"network checkpoint {new.sequence} does not follow {committed.sequence}")
            conn.execute(
                insert(CHECKPOINTS).values(
                    sequence=new.sequence, note=new.note, cities=new.cities_json(), signed_at=utcnow()
                )
            )
            conn.execute(update(HEAD).where(HEAD.c.id == HEAD_ID).values(sequence=new.sequence))
        return new

    # -- revocations --------------------------------------------------------------

    def is_revoked(self, consent_digest: bytes) -> bool:
        with self._reading() as conn:
            found = conn.execute(
                select(REVOCATIONS.c.consent_digest).where(REVOCATIONS.c.consent_digest == consent_digest)
            ).first()
        return found is not None

    def add_revocation(self, consent_digest: bytes, request: node_pb2.RevokeConsentRequest) -> None:
        """Keep a revocation (the first one kept for a consent stays: any revokes it)."""
        with self._writing() as conn:
            conn.execute(
                self._insert(REVOCATIONS)
                .values(
                    consent_digest=consent_digest, request=request.SerializeToString(), published_at=utcnow()
                )
                .on_conflict_do_nothing()
            )

    def revocation(self, consent_digest: bytes) -> node_pb2.RevokeConsentRequest | None:
        with self._reading() as conn:
            data = conn.execute(
                select(REVOCATIONS.c.request).where(REVOCATIONS.c.consent_digest == consent_digest)
            ).scalar_one_or_none()
        return None if data is None else node_pb2.RevokeConsentRequest.FromString(data)

    def mark_delivered(self, consent_digest: bytes, city: City) -> None:
        with self._writing() as conn:
            conn.execute(
                self._insert(DELIVERIES)
                .values(consent_digest=consent_digest, city=city.value, delivered_at=utcnow())
                .on_conflict_do_nothing()
            )

    def pending(self, members: Iterable[City]) -> list[PendingRevocation]:
        """Every revocation some member node has not acknowledged, with those nodes."""
        wanted = frozenset(members)
        with self._reading() as conn:
            revocations = conn.execute(
                select(REVOCATIONS.c.consent_digest, REVOCATIONS.c.request).order_by(
                    REVOCATIONS.c.published_at
                )
            ).all()
            delivered: dict[bytes, set[str]] = {}
            for digest, city in conn.execute(select(DELIVERIES.c.consent_digest, DELIVERIES.c.city)).all():
                delivered.setdefault(bytes(digest), set()).add(str(city))
        out = []
        for digest, data in revocations:
            missing = frozenset(c for c in wanted if c.value not in delivered.get(bytes(digest), set()))
            if missing:
                out.append(
                    PendingRevocation(bytes(digest), node_pb2.RevokeConsentRequest.FromString(data), missing)
                )
        return out

    # -- adopting a single aggregator's files -----------------------------------------

    def adopt_files(self, state_dir: Path) -> None:
        """Take the head and outbox an aggregator kept as files before revision 0006, once.

        Without this an upgraded aggregator would start a new chain at
        sequence 1 and forget revocations not yet delivered. The files are
        renamed ``*.adopted`` afterwards, so they are read only once.
        """
        head_file = state_dir / "network-head.json"
        if head_file.is_file():
            data = json.loads(head_file.read_text())
            old = NetworkHead(
                sequence=int(data["sequence"]),
                note=str(data["note"]),
                city_notes=dict(data["city_notes"]),
                cities={k: (int(v[0]), base64.b64decode(v[1])) for k, v in data["cities"].items()},
                city_certificates={
                    k: [base64.b64decode(c) for c in v] for k, v in data.get("city_certificates", {}).items()
                },
            )
            with self._writing() as conn:
                if conn.execute(select(CHECKPOINTS.c.sequence).limit(1)).first() is None and old.note:
                    conn.execute(
                        insert(CHECKPOINTS).values(
                            sequence=old.sequence, note=old.note, cities=old.cities_json(), signed_at=utcnow()
                        )
                    )
                    conn.execute(self._insert(HEAD).values(id=HEAD_ID, sequence=0).on_conflict_do_nothing())
                    conn.execute(update(HEAD).where(HEAD.c.id == HEAD_ID).values(sequence=old.sequence))
            head_file.rename(head_file.with_suffix(".json.adopted"))
        outbox = state_dir / "revocations"
        for f in sorted(outbox.glob("*.revocation")) if outbox.is_dir() else []:
            try:
                digest = bytes.fromhex(f.stem)
                request = node_pb2.RevokeConsentRequest.FromString(f.read_bytes())
            except ValueError:
                log.warning("not adopting unreadable revocation file %s", f.name)
                continue
            self.add_revocation(digest, request)
            marks = f.with_suffix(".delivered")
            for code in marks.read_text().split() if marks.is_file() else []:
                self.mark_delivered(digest, City.parse(code))
            f.rename(f.with_suffix(".revocation.adopted"))


@contextmanager
def reachable() -> Iterator[None]:
    """Turn a database failure into the refusal a caller can act on (ask another replica)."""
    try:
        yield
    except SQLAlchemyError as exc:
        log.warning("the aggregator's database failed: %s", type(exc).__name__)
        raise Unavailable(
            DATABASE_RULE, "this aggregator cannot reach its database; ask another replica"
        ) from exc
