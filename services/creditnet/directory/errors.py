"""The directory's refusals: one stable rule id each, with the gRPC status it is answered with.

docs/directory.md explains every rule; docs/protocol.md lists them with the others.
"""

from __future__ import annotations

from typing import Final

from creditnet.errors import (
    CreditnetError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "RULES",
    "refuse",
]

# rule id -> (error class, what it means)
RULES: Final[dict[str, tuple[type[CreditnetError], str]]] = {
    "directory.malformed": (
        InvalidArgument,
        "not a signed directory: bad envelope, payload or unknown fields",
    ),
    "directory.type": (InvalidArgument, "the envelope's payload type is not the directory type"),
    "directory.network": (InvalidArgument, "the network name is missing or not the trusted network's"),
    "directory.version": (InvalidArgument, "version 0, or issued_at missing"),
    "directory.city": (InvalidArgument, "a city code that is unknown or not prefecture-level/municipality"),
    "directory.member": (InvalidArgument, "a member entry is incomplete or its log-key certificate is wrong"),
    "directory.duplicate": (InvalidArgument, "a member, endpoint or TLS server name appears twice"),
    "directory.witness": (InvalidArgument, "a witness assignment names non-members, itself, or a bad quorum"),
    "directory.policy": (InvalidArgument, "the network policy is missing or out of bounds"),
    "directory.revocation": (InvalidArgument, "a revocation entry is malformed"),
    "directory.governance": (InvalidArgument, "no governance key, a bad key entry, or k = 0 or k > n"),
    "directory.signer": (InvalidArgument, "a signer that is not a governance key, or one signing twice"),
    "directory.anchor": (Unauthenticated, "the first directory does not match the pinned trust anchor"),
    "directory.threshold": (Unauthenticated, "fewer than k distinct valid governance signatures"),
    "directory.rotation": (
        Unauthenticated,
        "changes the governance keys or threshold without k_old signatures of the trusted keys",
    ),
    "directory.rollback": (FailedPrecondition, "a version (or issue time) older than the trusted one"),
    "directory.fork": (FailedPrecondition, "the trusted version number with different contents"),
    "directory.future": (FailedPrecondition, "issued further in the future than the clock skew allows"),
    "directory.expired": (Unavailable, "older than the policy's maximum age"),
    "directory.missing": (Unavailable, "no trusted directory is held"),
    "directory.not_member": (
        PermissionDenied,
        "a node whose city is not a member of the held directory (never admitted, or removed)",
    ),
}


def refuse(rule: str, message: str) -> CreditnetError:
    """The error for `rule`; raising it is the caller's business."""
    cls, _ = RULES[rule]
    return cls(rule, message)
