"""Offline verification of credit-chain receipts, against the network CA only."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from creditnet.chain.checkpoint import CosignedCheckpoint, verify_cosigned
from creditnet.chain.keys import known_keys, log_origin
from creditnet.chain.merkle import leaf_hash, verify_inclusion
from creditnet.chain.note import NoteError
from creditnet.errors import Error
from creditnet.pki import TrustStore
from creditnet.v2 import chain_pb2

__all__ = [
    "COMMITMENT_CONTEXT",
    "DEFAULT_QUORUM",
    "ReceiptError",
    "VerifiedReceipt",
    "check_commitment",
    "enterprise_commitment",
    "verify_checkpoint",
    "verify_receipt",
]

# The cosignatures a checkpoint needs unless the directory assigns a log its witnesses.
DEFAULT_QUORUM = 3
COMMITMENT_CONTEXT = b"creditnet/enterprise/v1\x00"


def enterprise_commitment(uscc: str, salt: bytes) -> bytes:
    """The salted hash an entry names its enterprise by, so the public log never shows a USCC."""
    return hashlib.sha256(COMMITMENT_CONTEXT + uscc.encode("ascii") + salt).digest()


class ReceiptError(Error, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    entry: chain_pb2.LedgerEntry
    index: int
    checkpoint: CosignedCheckpoint


def verify_checkpoint(
    trust: TrustStore,
    note: str,
    certificates: list[bytes],
    name: str,
    quorum: int = DEFAULT_QUORUM,
    *,
    assigned: Collection[str] | None = None,
) -> CosignedCheckpoint:
    """The log `name`'s signature and `quorum` cosignatures by other witnesses.

    With `assigned` (the witnesses the network directory assigns to the log)
    only their cosignatures count: any other log key's is ignored.
    """
    keys = known_keys(trust, certificates)
    own = keys.get(name)
    if own is None:
        raise ReceiptError(f"no valid log-key certificate for {name}")
    witnesses = [k.witness for n, k in keys.items() if n != name and (assigned is None or n in assigned)]
    if len(witnesses) < quorum:
        raise ReceiptError(f"{len(witnesses)} witness key certificates, {quorum} cosignatures needed")
    try:
        return verify_cosigned(note, [own.log], witnesses, quorum, origin=log_origin(name))
    except (NoteError, ValueError) as exc:
        raise ReceiptError(f"checkpoint does not verify: {exc}") from None


def verify_receipt(
    trust: TrustStore,
    receipt: chain_pb2.Receipt,
    name: str,
    quorum: int = DEFAULT_QUORUM,
    *,
    assigned: Collection[str] | None = None,
) -> VerifiedReceipt:
    cp = verify_checkpoint(
        trust, receipt.checkpoint, list(receipt.key_certificates), name, quorum, assigned=assigned
    )
    if receipt.tree_size != cp.checkpoint.size:
        raise ReceiptError("the proof is for another tree size than the checkpoint")
    try:
        verify_inclusion(
            leaf_hash(receipt.entry),
            receipt.index,
            receipt.tree_size,
            list(receipt.inclusion_proof),
            cp.checkpoint.root_hash,
        )
    except ValueError as exc:
        raise ReceiptError(f"the entry is not in the checkpoint: {exc}") from None
    entry = chain_pb2.LedgerEntry()
    try:
        entry.ParseFromString(receipt.entry)
    except DecodeError:
        raise ReceiptError("the entry is not a LedgerEntry") from None
    return VerifiedReceipt(entry=entry, index=receipt.index, checkpoint=cp)


def check_commitment(entry: chain_pb2.LedgerEntry, uscc: str, salt: bytes) -> bool:
    return entry.enterprise_commitment == enterprise_commitment(uscc, salt)
