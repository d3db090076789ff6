"""The credit chain's tables in the node's database, under the chain's names.

They are declared, created and migrated by the node's store, which owns the
database's whole schema (creditnet.store.models and its migrations); what
each table holds is described there.
"""

from __future__ import annotations

from creditnet.store.models import CHAIN_CHECKPOINTS as CHECKPOINTS
from creditnet.store.models import CHAIN_ENTRIES as ENTRIES
from creditnet.store.models import CHAIN_EVIDENCE as EVIDENCE
from creditnet.store.models import CHAIN_HASHES as HASHES
from creditnet.store.models import CHAIN_META as META
from creditnet.store.models import WITNESS_STATE as WITNESS

__all__ = [
    "CHECKPOINTS",
    "ENTRIES",
    "EVIDENCE",
    "HASHES",
    "META",
    "WITNESS",
    "pack_certificates",
    "unpack_certificates",
]


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
