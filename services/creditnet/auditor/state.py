"""What an auditor checked before: the cosigned checkpoints it verified, per log, in a state file.

A later run checks the log against every one of them, so a log that goes
back or shows another root for a size it showed before is caught.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from creditnet.chain.checkpoint import Checkpoint, CheckpointError
from creditnet.chain.merkle import (
    HASH_SIZE,
)
from creditnet.chain.note import Note, NoteError
from creditnet.errors import Error

__all__ = [
    "STATE_VERSION",
    "AuditError",
    "AuditState",
    "SeenCheckpoint",
]

STATE_VERSION = 1


class AuditError(Error, ValueError):
    """Bad input to the auditor: a malformed state file or argument."""


@dataclass(frozen=True, slots=True)
class SeenCheckpoint:
    """A checkpoint that was verified (log signature and witness quorum) when seen."""

    size: int
    root: bytes
    note: str

    def __post_init__(self) -> None:
        if self.size < 0:
            raise AuditError(f"checkpoint size {self.size} is negative")
        if len(self.root) != HASH_SIZE:
            raise AuditError(f"checkpoint root must be {HASH_SIZE} bytes, got {len(self.root)}")

    @classmethod
    def from_note(cls, note: str, origin: str) -> SeenCheckpoint:
        """Size and root read from a signed note of `origin` (signatures are not checked here)."""
        try:
            cp = Checkpoint.parse(Note.parse(note).text)
        except (NoteError, CheckpointError) as exc:
            raise AuditError(f"not a checkpoint note: {exc}") from None
        if cp.origin != origin:
            raise AuditError(f"the checkpoint is for {cp.origin!r}, not {origin!r}")
        return cls(cp.size, cp.root_hash, note)

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "root": base64.b64encode(self.root).decode(), "note": self.note}


class AuditState:
    """The checkpoints an auditor has verified before, per log origin, in a JSON file.

    ``{"version": 1, "logs": {"<origin>": [{"size", "root" (base64), "note"}, ...]}}``
    """

    def __init__(self, logs: Mapping[str, Sequence[SeenCheckpoint]] | None = None) -> None:
        self._logs: dict[str, list[SeenCheckpoint]] = {}
        for origin, cps in (logs or {}).items():
            for cp in cps:
                self.record(origin, cp)

    @classmethod
    def load(cls, path: Path) -> AuditState:
        """Read a state file; a missing file is an empty state."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise AuditError(f"cannot read the audit state {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AuditError(f"the audit state {path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise AuditError(f"the audit state {path} is not a version {STATE_VERSION} creditnet audit state")
        logs = data.get("logs")
        if not isinstance(logs, dict):
            raise AuditError(f"the audit state {path} has no 'logs' object")
        state = cls()
        for origin, items in logs.items():
            if not isinstance(items, list):
                raise AuditError(f"the audit state {path}: {origin!r} must hold a list of checkpoints")
            for i, item in enumerate(items):
                try:
                    state.record(origin, _seen_from_json(item, origin))
                except AuditError as exc:
                    raise AuditError(f"the audit state {path}: {origin!r} checkpoint {i}: {exc}") from None
        return state

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old file or the new one."""
        data = {
            "version": STATE_VERSION,
            "logs": {o: [cp.to_json() for cp in cps] for o, cps in sorted(self._logs.items())},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def seen(self, origin: str) -> list[SeenCheckpoint]:
        """The checkpoints seen of `origin`, by size."""
        return list(self._logs.get(origin, ()))

    def record(self, origin: str, cp: SeenCheckpoint) -> None:
        cps = self._logs.setdefault(origin, [])
        for old in cps:
            if old.size == cp.size:
                if old.root != cp.root:
                    raise AuditError(
                        f"two checkpoints of {origin} at size {cp.size} with different roots; "
                        "the log showed a split view"
                    )
                return
        cps.append(cp)
        cps.sort(key=lambda c: c.size)


def _seen_from_json(item: object, origin: str) -> SeenCheckpoint:
    if not isinstance(item, dict):
        raise AuditError("must be an object with size, root and note")
    size, root, note = item.get("size"), item.get("root"), item.get("note")
    if not isinstance(size, int) or not isinstance(root, str) or not isinstance(note, str):
        raise AuditError("needs an integer size, a base64 root and a note")
    try:
        raw = base64.b64decode(root, validate=True)
    except binascii.Error:
        raise AuditError("root is not base64") from None
    cp = SeenCheckpoint.from_note(note, origin)
    if (cp.size, cp.root) != (size, raw):
        raise AuditError("size and root do not match its note")
    return cp
