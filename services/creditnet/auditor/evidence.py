"""Misbehaviour a witness kept about a log, and whether the log's own signatures prove it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from creditnet.chain.checkpoint import open_checkpoint
from creditnet.chain.keys import KnownKey, log_origin
from creditnet.chain.note import NoteError, VerifierKey
from creditnet.dates import ts_from_proto
from creditnet.v2 import chain_pb2

__all__ = [
    "EvidenceItem",
    "evidence_item",
]


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
