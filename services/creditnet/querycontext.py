"""The query a call is about, for logs and spans, carried between tasks and servers.

A query id lives inside the signed envelope, which only the service parses
and verifies. Parsing it again for every log line would cost a protobuf
decode per call, so the id also travels as gRPC metadata
(``creditnet-query-id``): the bank's SDK sends it, the server interceptor
binds it as *claimed*, and the service binds the id it verified once the
query is authorised. Logs say which of the two they carry, so a claimed id
that turns out not to match (or a refused query) is never mistaken for an
established one. Outgoing calls (the aggregator's fan-out) carry on
whichever id is bound.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "QUERY_ID_METADATA",
    "QueryRef",
    "bind_query_id",
    "current_query",
    "enter_call",
    "leave_call",
    "parse_query_id",
    "query_scope",
]

QUERY_ID_METADATA = "creditnet-query-id"


@dataclass(frozen=True, slots=True)
class QueryRef:
    """A query id and whether this process verified it (False: only the caller says so)."""

    query_id: str
    verified: bool


_current: contextvars.ContextVar[QueryRef | None] = contextvars.ContextVar("creditnet_query", default=None)


def parse_query_id(value: str | bytes | None) -> str | None:
    """The canonical form of a UUID query id, or None for anything else.

    Metadata comes from the peer: only a well-formed UUID is ever bound, so a
    caller cannot put arbitrary text into the logs through it.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) > 64:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def current_query() -> QueryRef | None:
    return _current.get()


def bind_query_id(query_id: str, *, verified: bool = True) -> None:
    """Name the query the current call is about, for the rest of this call.

    The server interceptor scopes every call, so a binding made inside a
    handler ends with the call. A verified id is never replaced by a claim.
    """
    canonical = parse_query_id(query_id)
    if canonical is None:
        raise ValueError(f"a query id is a UUID, got {query_id!r}")
    bound = _current.get()
    if bound is not None and bound.verified and not verified:
        return
    _current.set(QueryRef(canonical, verified))


@contextmanager
def query_scope(query_id: str | None, *, verified: bool = True) -> Iterator[None]:
    """Bind `query_id` (None: no query) inside the block, and restore what was bound after it.

    A bank uses this around the call that sends a query it signed itself,
    so its client interceptor forwards the id.
    """
    ref = None
    if query_id is not None:
        canonical = parse_query_id(query_id)
        if canonical is None:
            raise ValueError(f"a query id is a UUID, got {query_id!r}")
        ref = QueryRef(canonical, verified)
    token = _current.set(ref)
    try:
        yield
    finally:
        _current.reset(token)


def enter_call(ref: QueryRef | None) -> contextvars.Token[QueryRef | None]:
    """Start a call's own binding (for the server interceptor); end it with `leave_call`."""
    return _current.set(ref)


def leave_call(token: contextvars.Token[QueryRef | None]) -> None:
    # Ended from another context (a stream finished by another task): that
    # context's binding dies with it.
    with contextlib.suppress(ValueError):
        _current.reset(token)
