"""The bank's copy of the signed network directory (protocol v2, docs/directory.md).

A bank holds the directory as servers do: pinned by the SHA-256 of the
first trusted directory's payload (the anchor), kept in a local state file
(`DirectoryHolder`: re-verified on open, replaced atomically), refreshed
from the aggregator's `DirectoryService` every `policy.refresh_interval` of
the directory held (at the next use after it elapsed) or on demand, and
verified like any holder does (threshold signatures, rotation, rollback,
max age). The aggregator is not trusted for it: the governance signatures
are what count, and a refused directory leaves the last good one.

The client uses it to refuse material whose signer certificate it revokes
(a node's answer, a log key's checkpoint, the aggregator's TLS certificate:
`revocation_check`, set on the client's trust store) and to know which
cities the network has (`member_cities`). It fails closed: with only an
expired directory (or none), no query is sent and no answer is accepted
(``directory.expired`` / ``directory.missing``).

Verification and fsync run in a worker thread, never on the event loop.
Several processes may share one state file (the CLI run twice at once): every
change is made under an advisory lock on ``<state>.lock``, after taking
whatever newer directory another process wrote meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from creditnet.directory.errors import refuse
from creditnet.directory.model import Directory
from creditnet.directory.sign import load
from creditnet.directory.verify import DirectoryHolder, VerifiedDirectory
from creditnet.domain import City, sorted_cities
from creditnet.errors import CreditnetError
from creditnet.pki import RevocationCheck, TrustStore
from creditnet.v2 import envelope_pb2

__all__ = [
    "BankDirectory",
    "DirectorySettings",
]

log = logging.getLogger(__name__)

# After a refresh that failed (aggregator down, directory refused), try again no sooner than this,
# unless the held directory is expired or missing (then every use tries).
RETRY_AFTER_FAILURE = 5.0

Fetch = Callable[[], Awaitable[envelope_pb2.SignedEnvelope]]


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    """Where the bank keeps its directory and how it trusts the first one.

    `anchor`: SHA-256 (hex) of the first trusted directory's payload, given
    out of band (a network's configuration carries it next to the CA).
    `state`: the holder's file. `bootstrap`: the first signed directory, if
    at hand; without it the first one is fetched from the aggregator and
    must match the anchor all the same.
    """

    anchor: str
    state: Path
    bootstrap: Path | None = None

    def __post_init__(self) -> None:
        try:
            raw = bytes.fromhex(self.anchor)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValueError("the directory anchor must be a SHA-256 in hex (64 characters)")


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    state.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(state.with_name(state.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class BankDirectory:
    """The directory a bank client holds; every method that may block runs in a worker thread."""

    def __init__(self, settings: DirectorySettings, trust: TrustStore) -> None:
        self.settings = settings
        self.anchor = bytes.fromhex(settings.anchor)
        # The holder checks governance signers against the directories
        # themselves (V6), with a trust store of its own, as servers do.
        self._holder_trust = TrustStore(trust.ca_cert)
        self._holder: DirectoryHolder | None = None
        self._seen: tuple[int, int, int] | None = None
        self._next_refresh = 0.0
        self._lock: asyncio.Lock | None = None

    # -- what the client asks ------------------------------------------------

    @property
    def current(self) -> VerifiedDirectory | None:
        return self._holder.current if self._holder is not None else None

    def require_fresh(self) -> Directory:
        """The held directory; UNAVAILABLE directory.missing / directory.expired when there is none fit."""
        if self._holder is None:
            raise refuse(
                "directory.missing",
                "the bank client has not opened its network directory yet (await ready_directory() first)",
            )
        return self._holder.require_fresh()

    def revocation_check(self) -> RevocationCheck:
        """For the trust store: is a certificate (serial, SPKI SHA-256) revoked by the directory held."""

        def revoked(serial: int, spki: bytes) -> bool:
            held = self.current
            return held is not None and held.directory.is_revoked(serial=serial, spki=spki)

        return revoked

    def member_cities(self, directory: Directory) -> tuple[City, ...]:
        """The cities the directory lists, by code."""
        return sorted_cities(City.from_proto(c.code) for c in directory.cities)

    # -- keeping it ------------------------------------------------------------

    def _open_blocking(self) -> None:
        with _locked(self.settings.state):
            holder = DirectoryHolder(self.settings.state, self._holder_trust)
            if holder.current is None and self.settings.bootstrap is not None:
                env = load(self.settings.bootstrap)
                if hashlib.sha256(env.payload).digest() != self.anchor:
                    raise refuse(
                        "directory.anchor", f"{self.settings.bootstrap} is not the directory the anchor pins"
                    )
                holder.bootstrap(env, self.anchor)
            self._holder, self._seen = holder, _stat(self.settings.state)

    def _take_blocking(self, envelope: envelope_pb2.SignedEnvelope) -> bool:
        """Verify and keep `envelope` (first directory: pinned by the anchor); True if it changed."""
        with _locked(self.settings.state):
            self._reload_locked()
            holder = self._holder
            assert holder is not None
            before = holder.current
            if before is None:
                holder.bootstrap(envelope, self.anchor)
            else:
                holder.offer(envelope)
            self._seen = _stat(self.settings.state)
            return holder.current is not before

    def _reload_locked(self) -> None:
        """Take what another process wrote to the state file since we read it, if it is newer."""
        seen = _stat(self.settings.state)
        if self._holder is not None and seen == self._seen:
            return
        other = DirectoryHolder(self.settings.state, self._holder_trust)
        mine = self.current
        theirs = other.current
        if self._holder is None or mine is None or (theirs is not None and theirs.version >= mine.version):
            self._holder = other
        self._seen = seen

    async def open(self) -> None:
        if self._holder is None:
            await asyncio.to_thread(self._open_blocking)

    async def offer(self, envelope: envelope_pb2.SignedEnvelope) -> bool:
        """Take a directory received some other way; raises the rule that refuses it."""
        await self.open()
        return await asyncio.to_thread(self._take_blocking, envelope)

    async def refresh(self, fetch: Fetch) -> int:
        """Ask the aggregator now and take what it serves; the version held afterwards.

        Raises the refusal (``directory.rollback``, ``directory.threshold``,
        …) or the call's AioRpcError; the last good directory is kept either way.
        """
        await self.open()
        lock = self._lock or asyncio.Lock()
        self._lock = lock
        async with lock:
            self._next_refresh = time.monotonic() + RETRY_AFTER_FAILURE
            envelope = await fetch()
            held = self.current
            if held is None or envelope.payload != held.envelope.payload:
                changed = await self.offer(envelope)
                if changed:
                    log.info("took network directory version %d from the aggregator", self.require().version)
            current = self.require()
            interval = current.directory.policy.refresh_interval.total_seconds()
            self._next_refresh = time.monotonic() + interval
            return current.version

    def require(self) -> VerifiedDirectory:
        held = self.current
        if held is None:
            raise refuse("directory.missing", "the bank client holds no network directory")
        return held

    async def ready(self, fetch: Fetch) -> Directory:
        """The directory to act by: refreshed first when due, expired or missing; fails closed."""
        await self.open()
        due = time.monotonic() >= self._next_refresh
        why = ""
        if due or self._holder is None or self._holder.is_expired():
            try:
                await self.refresh(fetch)
            except CreditnetError as exc:
                # A refused directory (older than ours, forged, below threshold) changes nothing.
                why = exc.rule
                log.warning("refused the directory the aggregator serves (%s); keeping the held one", why)
            except grpc.aio.AioRpcError as exc:
                why = f"{exc.code().name} from the aggregator"
                log.warning("could not refresh the network directory (%s); keeping the held one", why)
        if self.current is None:
            raise refuse(
                "directory.missing",
                f"the bank client holds no network directory{f' (refresh: {why})' if why else ''}",
            )
        return self.require_fresh()
