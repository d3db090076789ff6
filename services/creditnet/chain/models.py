"""The credit chain's tables, kept in the node's own database.

``chain_hash`` holds every perfect-subtree hash of the log (see tree.py), so
roots and proofs after a restart read O(log n) rows. ``chain_entry`` keeps
the exact entry bytes, plus — privately, never served to the public — the
USCC and salt behind each entry's enterprise commitment, so the node can
answer an enterprise's own history. ``witness_state`` is what this node, as a
witness, last cosigned for every other log; ``chain_evidence`` keeps proof
of misbehaviour it has seen.

The tables are created and changed by the node database's migrations
(creditnet/store/migrations), like the node's own; these classes must match them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from creditnet.store.models import UtcDateTime

__all__ = [
    "CHAIN_METADATA",
    "CHECKPOINTS",
    "ENTRIES",
    "EVIDENCE",
    "HASHES",
    "META",
    "WITNESS",
    "ChainCheckpointRow",
    "ChainEntryRow",
    "ChainHashRow",
    "ChainMetaRow",
    "ChainModel",
    "EvidenceRow",
    "WitnessStateRow",
    "pack_certificates",
    "unpack_certificates",
]


class ChainModel(SQLModel, registry=registry()):
    pass


class ChainEntryRow(ChainModel, table=True):
    __tablename__ = "chain_entry"

    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    entry: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    kind: int = Field(sa_column=Column(Integer, nullable=False))
    uscc: str | None = Field(default=None, sa_column=Column(String(18), nullable=True))
    salt: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))

    __table_args__ = (Index("ix_chain_entry_uscc", "uscc", "idx"),)


class ChainHashRow(ChainModel, table=True):
    __tablename__ = "chain_hash"

    level: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ChainMetaRow(ChainModel, table=True):
    __tablename__ = "chain_meta"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))


class ChainCheckpointRow(ChainModel, table=True):
    """Every checkpoint this node signed, with the cosignatures it gathered."""

    __tablename__ = "chain_checkpoint"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    cosignatures: int = Field(sa_column=Column(Integer, nullable=False))
    signed_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    # DER certificates of the log key and the cosigning witnesses, each
    # prefixed by its length (4 bytes, big-endian); see pack_certificates.
    key_certificates: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class WitnessStateRow(ChainModel, table=True):
    __tablename__ = "witness_state"

    origin: str = Field(sa_column=Column(String(200), primary_key=True))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class EvidenceRow(ChainModel, table=True):
    __tablename__ = "chain_evidence"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    origin: str = Field(sa_column=Column(String(200), nullable=False))
    kind: str = Field(sa_column=Column(String(40), nullable=False))
    first: str = Field(sa_column=Column(Text, nullable=False))
    second: str = Field(sa_column=Column(Text, nullable=False))
    detail: str = Field(sa_column=Column(Text, nullable=False))
    found_at: dt.datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


CHAIN_METADATA = ChainModel.metadata
ENTRIES = CHAIN_METADATA.tables[ChainEntryRow.__tablename__]
HASHES = CHAIN_METADATA.tables[ChainHashRow.__tablename__]
META = CHAIN_METADATA.tables[ChainMetaRow.__tablename__]
CHECKPOINTS = CHAIN_METADATA.tables[ChainCheckpointRow.__tablename__]
WITNESS = CHAIN_METADATA.tables[WitnessStateRow.__tablename__]
EVIDENCE = CHAIN_METADATA.tables[EvidenceRow.__tablename__]


def pack_certificates(certs: list[bytes]) -> bytes:
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
