"""Typed refusals, each carrying the gRPC status code it is answered with.

Every refusal names the rule that failed (a stable id such as
``consent.expired``) and says in plain words what the caller can do; it never
echoes credit data. docs/protocol.md lists every rule id with its code.
"""

from __future__ import annotations

import grpc

__all__ = [
    "RETRY_AFTER_KEY",
    "AlreadyExists",
    "CreditnetError",
    "Error",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]

# Trailing metadata of a RESOURCE_EXHAUSTED refusal: milliseconds (decimal)
# until the bank's next call would be admitted.
RETRY_AFTER_KEY = "creditnet-retry-after-ms"


class Error(Exception):
    """The root of every exception the network's code and the bank's SDK raise.

    `except creditnet.errors.Error` catches everything the project raises on
    purpose. Refusals a peer may be told (with a gRPC status) are
    `CreditnetError`s; the rest (a malformed proof, a bad setting) keep the
    builtin they always were (ValueError, LookupError…) as a second base, so
    the except clauses that caught them still do.
    """


class CreditnetError(Error):
    """A protocol refusal: the rule that failed, in words the caller can act on, and its status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message

    @property
    def reason(self) -> str:
        return f"{self.rule}: {self.message}"


class InvalidArgument(CreditnetError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(CreditnetError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CreditnetError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(CreditnetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(CreditnetError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(CreditnetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotFound(CreditnetError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(CreditnetError):
    code = grpc.StatusCode.UNAVAILABLE
