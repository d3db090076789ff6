"""Servers holding the signed network directory: serve it, take newer ones, refresh, fail closed.

Every node and the aggregator that is configured with a directory
(`creditnet.config.DirectoryConfig`):

- serves `creditnet.v2.DirectoryService` (`DirectoryServicer`): GetDirectory
  answers the envelope it holds; OfferDirectory verifies a candidate (the
  governance signatures are what count, not who offers) and keeps it if good;
- refreshes every `policy.refresh_interval` of the directory it holds by
  asking the members that directory lists (`DirectoryRefresher`; its
  configured peers only when none of them answers), keeping its last good
  directory whatever a peer answers;
- refuses every other creditnet call with UNAVAILABLE ``directory.expired``
  while the newest directory it holds is past `policy.max_age`
  (`DirectoryGate`), until a fresh one arrives;
- refuses every call (health and reflection aside) of a node whose city the
  held directory does not list, with PERMISSION_DENIED ``directory.not_member``
  (`DirectoryGate`): a removed city's node is no longer accepted;
- refuses certificates the held directory revokes (`revocation_check`, set
  on the server's trust store): a TLS peer's every call with UNAUTHENTICATED
  ``cert.revoked`` (`DirectoryGate`), a signed object's signer with
  ``<what>.cert.revoked`` (the envelope verifiers ask the trust store at
  every use, cached verifications included).

`DirectoryHolder.offer` verifies signatures and fsyncs a file: it always runs
in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from creditnet.channels import secure_channel
from creditnet.config import DirectoryConfig
from creditnet.directory.errors import refuse
from creditnet.directory.model import Directory
from creditnet.directory.sign import load
from creditnet.directory.verify import DirectoryHolder
from creditnet.errors import CreditnetError
from creditnet.handlers import Finish, wrap_handler
from creditnet.pki import Identity, RevocationCheck, RoleKind, TrustStore
from creditnet.rpc import PeerIdentities, refusals
from creditnet.v2 import directory_service_pb2 as pb
from creditnet.v2 import directory_service_pb2_grpc as pb_grpc

__all__ = [
    "SERVICE_NAME",
    "DirectoryGate",
    "DirectoryRefresher",
    "DirectoryServicer",
    "Peer",
    "ServedDirectory",
    "directory_peers",
    "follow_file",
    "open_holder",
    "revocation_check",
    "serve_directory",
]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DirectoryService"].full_name
# Calls a server answers even with an expired directory: how it recovers, and
# how orchestrators see it (health reports SERVING; the calls say why not).
UNGATED_PREFIXES: tuple[str, ...] = (
    f"/{SERVICE_NAME}/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
)
# Calls a revoked peer may still make: health and reflection disclose nothing.
PROBE_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# One peer's answer may not hold up a refresh round for longer than this.
PEER_TIMEOUT = 5.0
# Bounds on the wait between rounds, whatever the directory's policy says:
# a short interval must not turn into a busy loop.
MIN_INTERVAL = 0.2
# Member cities asked per refresh round in a large network (DirectoryRefresher.refresh_once).
REFRESH_FANOUT = 8


def open_holder(config: DirectoryConfig, trust: TrustStore) -> DirectoryHolder:
    """The server's holder: its state file, or else the bootstrap file pinned by the anchor.

    Blocking (reads, verifies, fsyncs): call it in a worker thread.
    """
    holder = DirectoryHolder(config.state, trust)
    if holder.current is None:
        env = load(config.bootstrap)
        digest = hashlib.sha256(env.payload).digest()
        if not hmac.compare_digest(digest, bytes.fromhex(config.anchor)):
            raise refuse("directory.anchor", f"{config.bootstrap} is not the directory the anchor pins")
        holder.bootstrap(env, digest)
    return holder


class DirectoryServicer(pb_grpc.DirectoryServiceServicer):
    def __init__(self, holder: DirectoryHolder, trust: TrustStore, changed: asyncio.Event) -> None:
        self.holder = holder
        self.peers = PeerIdentities(trust)
        # Set when an offer changed the directory, so the refresher re-reads the policy now.
        self.changed = changed

    @refusals
    async def GetDirectory(
        self, request: pb.GetDirectoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDirectoryResponse:
        self.peers.role(context)
        return pb.GetDirectoryResponse(directory=self.holder.require().envelope)

    @refusals
    async def OfferDirectory(
        self, request: pb.OfferDirectoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.OfferDirectoryResponse:
        self.peers.role(context)
        if not request.HasField("directory"):
            raise refuse("directory.malformed", "the offer carries no directory")
        changed = await asyncio.to_thread(self.holder.offer, request.directory)
        held = self.holder.require()
        if changed:
            log.info("took network directory version %d (offered)", held.version)
            self.changed.set()
        return pb.OfferDirectoryResponse(version=held.version, changed=changed)


def revocation_check(holder: DirectoryHolder) -> RevocationCheck:
    """Whether the directory held now lists a certificate as revoked (by serial or SPKI SHA-256)."""

    def revoked(serial: int, spki: bytes) -> bool:
        held = holder.current
        return held is not None and held.directory.is_revoked(serial=serial, spki=spki)

    return revoked


class DirectoryGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call of a revoked TLS peer: UNAUTHENTICATED cert.revoked; every call of a node whose
    city the held directory does not list: PERMISSION_DENIED directory.not_member; every creditnet
    call while the held directory is too old: UNAVAILABLE directory.expired."""

    def __init__(self, holder: DirectoryHolder, trust: TrustStore) -> None:
        self.holder = holder
        self.peers = PeerIdentities(trust)

    def _refused_peer(self, context: grpc.aio.ServicerContext) -> CreditnetError | None:
        try:
            role = self.peers.role(context)
        except CreditnetError as exc:
            # Other certificate problems are each service's to answer.
            return exc if exc.rule == "cert.revoked" else None
        except ValueError:
            return None
        if role.kind is RoleKind.NODE and role.city is not None:
            held = self.holder.current
            # Fail closed: with no directory held, no node is known to be a member.
            if held is None or held.directory.city(role.city.value) is None:
                version = "no directory" if held is None else f"directory version {held.version}"
                return refuse(
                    "directory.not_member",
                    f"the node of {role.city.value} is not a member of the network ({version})",
                )
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        probe = method.startswith(PROBE_PREFIXES)
        gated = not method.startswith(UNGATED_PREFIXES)

        async def around(context: grpc.aio.ServicerContext) -> Finish:
            # Decided per call, not per handler or connection: a new
            # directory takes effect at the next call.
            refused = None if probe else self._refused_peer(context)
            if refused is not None:
                await context.abort(refused.code, refused.reason)
            if gated:
                try:
                    self.holder.require_fresh()
                except CreditnetError as exc:
                    await context.abort(exc.code, exc.reason)
            return lambda _exc: None

        return wrap_handler(handler, around)


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    endpoint: str
    server_name: str


def directory_peers(directory: Directory, member: str | None) -> tuple[tuple[Peer, ...], ...]:
    """Whom a holder of `directory` asks: every member city and aggregator but `member` (itself).

    One group per member, its endpoints in the directory's order (the first
    that answers is enough).
    """
    groups: list[tuple[Peer, ...]] = []
    for c in directory.cities:
        if c.code != member:
            name = c.tls_server_name
            groups.append(tuple(Peer(c.code, ep, name) for ep in c.endpoints))
    for a in directory.aggregators:
        if a.name != member:
            groups.append(tuple(Peer(a.name, ep, a.tls_server_name) for ep in a.endpoints))
    return tuple(groups)


@dataclass
class DirectoryRefresher:
    """Every refresh interval, asks each peer for its directory and offers it to the holder.

    The peers are the members the held directory lists (every city's node and
    every aggregator, but `member`, this server's own name there), re-read at
    each round: a member the governance admits is asked from the next round,
    one it removes no longer. `peers`, from the server's configuration, are
    the fallback, asked only in a round where no member the directory lists
    (other than itself) answered.
    """

    holder: DirectoryHolder
    identity: Identity
    trust: TrustStore
    peers: tuple[Peer, ...]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    member: str | None = None
    _channels: dict[tuple[str, str], grpc.aio.Channel] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _asked: tuple[str, ...] = ()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    def interval(self) -> float:
        held = self.holder.current
        if held is None:
            return MIN_INTERVAL
        return max(held.directory.policy.refresh_interval.total_seconds(), MIN_INTERVAL)

    def member_peers(self) -> tuple[tuple[Peer, ...], ...]:
        """The peers the held directory lists now, grouped by member (none while none is held)."""
        held = self.holder.current
        return () if held is None else directory_peers(held.directory, self.member)

    async def _run(self) -> None:
        # A round first: a server that was down catches up as it starts,
        # not one interval later.
        while True:
            self.changed.clear()
            try:
                await self.refresh_once()
            except Exception:
                log.exception("refreshing the network directory failed; keeping the held one")
            # An offer that changes the policy (e.g. a shorter interval) ends the wait early.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.interval())

    async def refresh_once(self) -> int:
        """Ask the peers once; the number of peers whose directory changed the held one.

        In a network of more than REFRESH_FANOUT cities, a round asks every
        aggregator and REFRESH_FANOUT cities drawn at random, not every member:
        asking all would cost each server a call (and a connection) per member,
        N² across the network. A version spreads by gossip all the same (every
        server that holds it serves it), in O(log N) rounds, and the
        governance publishes each new version to every server directly.
        """
        groups = self.member_peers()
        asked = tuple(g[0].name for g in groups)
        if asked != self._asked:
            log.info("asking %s for newer directories", ", ".join(asked) or "no member")
            self._asked = asked
        groups = _sample(groups)
        results = list(await asyncio.gather(*(self._from_member(g) for g in groups)))
        if not any(r is not None for r in results) and self.peers:
            # Nobody the directory lists answered (or it lists nobody else): the configured peers.
            results += await asyncio.gather(*(self._from_member((p,)) for p in self.peers))
            groups = (*groups, *((p,) for p in self.peers))
        await self._close_unused({(p.endpoint, p.server_name) for g in groups for p in g})
        return sum(1 for r in results if r)

    def _channel(self, peer: Peer) -> grpc.aio.Channel:
        key = (peer.endpoint, peer.server_name)
        if key not in self._channels:
            self._channels[key] = secure_channel(peer.endpoint, self.identity, self.trust, peer.server_name)
        return self._channels[key]

    async def _close_unused(self, used: set[tuple[str, str]]) -> None:
        for key in [k for k in self._channels if k not in used]:
            await self._channels.pop(key).close()

    async def _from_member(self, endpoints: tuple[Peer, ...]) -> bool | None:
        """The member's answer from the first of its endpoints that answers; None if none did."""
        for peer in endpoints:
            result = await self._from(peer)
            if result is not None:
                return result
        return None

    async def _from(self, peer: Peer) -> bool | None:
        """Whether `peer`'s directory changed the held one; None when it did not answer."""
        stub = pb_grpc.DirectoryServiceStub(self._channel(peer))
        try:
            answer = await stub.GetDirectory(pb.GetDirectoryRequest(), timeout=PEER_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            log.debug("no directory from %s at %s: %s", peer.name, peer.endpoint, exc.code().name)
            return None
        held = self.holder.current
        if held is not None and answer.directory.payload == held.envelope.payload:
            return False
        try:
            changed = await asyncio.to_thread(self.holder.offer, answer.directory)
        except CreditnetError as exc:
            # A peer behind us is normal (it catches up from us); anything else is worth a look.
            level = logging.DEBUG if exc.rule == "directory.rollback" else logging.WARNING
            log.log(level, "refused the directory %s serves (%s); keeping the held one", peer.name, exc.rule)
            return False
        if changed:
            log.info("took network directory version %d from %s", self.holder.require().version, peer.name)
        return changed


def _sample(groups: tuple[tuple[Peer, ...], ...]) -> tuple[tuple[Peer, ...], ...]:
    """Every aggregator and at most REFRESH_FANOUT member cities, drawn at random."""
    cities = [g for g in groups if g and g[0].name.isdigit()]
    if len(cities) <= REFRESH_FANOUT:
        return groups
    chosen = set(map(id, random.sample(cities, REFRESH_FANOUT)))
    return tuple(g for g in groups if not (g and g[0].name.isdigit()) or id(g) in chosen)


@dataclass
class ServedDirectory:
    """What a server runs for its directory: the holder, the service, the gate and the refresher."""

    holder: DirectoryHolder
    servicer: DirectoryServicer
    gate: DirectoryGate
    refresher: DirectoryRefresher

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_DirectoryServiceServicer_to_server(self.servicer, server)

    async def stop(self) -> None:
        await self.refresher.stop()


async def serve_directory(
    config: DirectoryConfig,
    identity: Identity,
    trust: TrustStore,
    peers: Mapping[str, tuple[str, str]],
    member: str | None = None,
) -> ServedDirectory:
    """Open the holder (off the event loop) and build what serves it.

    The refresher asks the members the held directory lists, but `member`
    (this server's name there: its city's code or its aggregator name);
    `peers` (name -> (endpoint, TLS server name), from the configuration) only
    when none of them answers.
    """
    # The holder checks governance signers against the directories themselves
    # (V6), with a trust store of its own: the server's store asks the holder.
    holder = await asyncio.to_thread(open_holder, config, TrustStore(trust.ca_cert))
    trust.revocation = revocation_check(holder)
    changed = asyncio.Event()
    refresher = DirectoryRefresher(
        holder,
        identity,
        trust,
        tuple(Peer(n, ep, sn) for n, (ep, sn) in sorted(peers.items())),
        changed=changed,
        member=member,
    )
    return ServedDirectory(
        holder, DirectoryServicer(holder, trust, changed), DirectoryGate(holder, trust), refresher
    )


async def follow_file(
    source: Path, holder: DirectoryHolder, stop: asyncio.Event, interval: float = 1.0
) -> None:
    """Offer `holder` the directory in `source` whenever another process replaced that file, until `stop`.

    For the processes of one server that share a directory: a node's workers
    follow their leader's file, an aggregator's workers each other's. The
    holder verifies what it is offered as any offer (signatures, a version no
    older than its own); the file is looked at once at the start too, so a
    change made before the first look is not missed.
    """
    seen: int | None = None
    while not stop.is_set():
        now = await asyncio.to_thread(_mtime, source)
        if now is not None and now != seen:
            try:
                data = await asyncio.to_thread(source.read_bytes)
                if await asyncio.to_thread(holder.offer, data):
                    log.info("took directory version %d from %s", holder.require().version, source)
            except Exception:
                # A file caught mid-replace, or a directory this holder refuses
                # (older than its own): the next change decides.
                log.warning("the directory in %s gave no newer directory", source, exc_info=True)
            seen = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
