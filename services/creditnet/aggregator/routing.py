"""Routing: which cities of a query's scope the aggregator asks (docs/protocol.md, "Routing").

The aggregator keeps a watch on every member node's signed membership filter
(``GetMembershipFilter`` with the version it holds and a wait: the node
answers when it signs a newer one, or after the wait with a few bytes),
verifies each new one in a worker thread and keeps the last good one per
city. A query goes to the enterprise's registration city and to
every city whose filter, verified and fresh, holds the enterprise's tag. A
city whose filter is missing, stale, refused, or made with another key is
asked: routing never skips a city it cannot vouch for.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from creditnet import uscc as uscc_mod
from creditnet.aggregator.directory import NodeDirectory, NodeLink
from creditnet.dates import utcnow
from creditnet.domain import City
from creditnet.envelope import EnvelopeVerifier
from creditnet.errors import CreditnetError
from creditnet.routing import RoutingKey, VerifiedFilter, tag_hashes, verify_filter
from creditnet.v2 import aggregator_pb2, envelope_pb2, node_pb2

__all__ = [
    "Decision",
    "Router",
]

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
FETCH_TIMEOUT = 5.0
# How long a node may hold a filter fetch for a newer version (GetMembershipFilterRequest.wait_ms):
# longer than a node's re-signing (at least every 30 s, routing.RESIGN_INTERVAL), so that a watch
# is answered by the re-signed filter, one call per re-signing, not by an `unchanged` just before.
WATCH_MS = 45_000
# Filters verified at once (each may be megabytes).
FETCH_CONCURRENCY = 8
A = aggregator_pb2


@dataclass(frozen=True, slots=True)
class Decision:
    city: City
    asked: bool
    routing: int
    detail: str


class Router:
    def __init__(
        self,
        directory: NodeDirectory,
        verifier: EnvelopeVerifier,
        key: RoutingKey,
        *,
        poll_interval: float = POLL_INTERVAL,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.directory = directory
        self.verifier = verifier
        self.key = key
        self.poll_interval = poll_interval
        self.clock = clock
        self.held: dict[City, VerifiedFilter] = {}
        # Why the last fetch of a city's filter gave nothing usable ("" once one was taken).
        self.problems: dict[City, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._fetching = asyncio.Semaphore(FETCH_CONCURRENCY)
        # Fetches made by each poll, for the aggregator's metrics (None: not counted).
        self.on_round: Callable[[int], None] | None = None
        self._calls = 0
        # Each held filter's "does not hold" decision, made once per filter rather than per query.
        self._not_held: dict[City, tuple[VerifiedFilter, Decision]] = {}

    # -- routing ---------------------------------------------------------------

    def route(self, uscc: str, scope: Iterable[City], *, exhaustive: bool) -> list[Decision]:
        """For each city of `scope` (in order): ask it or not, and why."""
        home = uscc_mod.home_city(uscc)
        hashes = tag_hashes(self.key.tag(uscc))
        now = self.clock()
        links = self.directory.links
        out: list[Decision] = []
        for city in scope:
            held = self.held.get(city)
            # The last fetch must have succeeded too: a node serving a filter
            # that is refused (or not answering) is asked until one is taken.
            usable = held is not None and held.fresh(now) and city in links and not self.problems.get(city)
            if city == home:
                out.append(Decision(city, True, A.ROUTING_REGISTRATION, "the enterprise's registration city"))
            elif usable and held is not None and held.holds_hashes(hashes):
                detail = f"its filter (version {held.version}) holds it"
                out.append(Decision(city, True, A.ROUTING_HOLDS_RECORDS, detail))
            elif exhaustive:
                detail = "the bank asked for an exhaustive query"
                out.append(Decision(city, True, A.ROUTING_ASKED_FOR, detail))
            elif not usable:
                detail = f"no usable filter: {self.why_unusable(city)}"
                out.append(Decision(city, True, A.ROUTING_ASKED_FOR, detail))
            else:
                assert held is not None
                out.append(self._not_held_by(held))
        return out

    def _not_held_by(self, held: VerifiedFilter) -> Decision:
        cached = self._not_held.get(held.city)
        if cached is None or cached[0] is not held:
            detail = (
                f"its filter (version {held.version}, issued {held.issued_at:%Y-%m-%dT%H:%M:%SZ}) "
                "does not hold the enterprise"
            )
            cached = self._not_held[held.city] = (
                held,
                Decision(held.city, False, A.ROUTING_NOT_ASKED, detail),
            )
        return cached[1]

    def describe(self, city: City, out: aggregator_pb2.FilterStatus) -> None:
        """Fill `out` with the filter held of `city` and, if it cannot be used now, why."""
        held = self.held.get(city)
        if held is not None:
            out.version, out.entries, out.size_bytes = held.version, held.entries, held.bloom.bit_count // 8
            out.issued_at.FromDatetime(held.issued_at)
        usable = held is not None and held.fresh(self.clock()) and not self.problems.get(city)
        out.problem = "" if usable else self.why_unusable(city)

    def why_unusable(self, city: City) -> str:
        held = self.held.get(city)
        if city not in self.directory.links:
            return "the network has no member node for this city"
        if self.problems.get(city):
            return self.problems[city]
        if held is not None and not held.fresh(self.clock()):
            return f"filter.stale: the filter held (version {held.version}) is too old"
        return "no filter fetched yet"

    # -- fetching --------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        """Keep one watch per member node: a long poll that the node answers when it signs a new
        filter (or after WATCH_MS), so an idle network costs a call per node per WATCH_MS, not per
        second, and a new filter is fetched at once."""
        watches: dict[City, tuple[NodeLink, asyncio.Task[None]]] = {}
        try:
            while True:
                links = dict(self.directory.links)
                # A city removed, or reached by a new link (the directory moved it): a new watch.
                for city in [
                    c for c, (link, task) in watches.items() if links.get(c) is not link or task.done()
                ]:
                    watches.pop(city)[1].cancel()
                self._forget_removed(links)
                for city, link in links.items():
                    if city not in watches:
                        watches[city] = (link, asyncio.create_task(self._watch(link)))
                if self.on_round is not None:
                    self.on_round(self._calls)
                self._calls = 0
                await asyncio.sleep(self.poll_interval)
        finally:
            tasks = [task for _, task in watches.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, link: NodeLink) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._fetch(link, wait_ms=WATCH_MS)
            except Exception:
                log.exception("fetching the membership filter of %s failed; trying again", link.city.value)
            # A node that answers at once (no filter change to wait for, or one that does not
            # hold calls) is asked again no sooner than the poll interval.
            await asyncio.sleep(max(0.0, self.poll_interval - (loop.time() - started)))

    async def poll(self) -> None:
        """Fetch every member's filter once (those unchanged cost a few bytes)."""
        links = dict(self.directory.links)
        self._forget_removed(links)
        await asyncio.gather(*(self._fetch(link) for link in links.values()))

    def _forget_removed(self, links: dict[City, NodeLink]) -> None:
        """Drop what is held of cities no longer members: they are never routed to again."""
        for gone in set(self.held) - set(links):
            del self.held[gone]
        for gone in set(self.problems) - set(links):
            del self.problems[gone]
        for gone in set(self._not_held) - set(links):
            del self._not_held[gone]

    async def _fetch(self, link: NodeLink, wait_ms: int = 0) -> None:
        city = link.city
        held = self.held.get(city)
        self._calls += 1
        try:
            # Held by the node until its filter changes: outside the bound on transfers at once.
            resp = await link.stub.GetMembershipFilter(
                node_pb2.GetMembershipFilterRequest(
                    known_version=held.version if held else 0, wait_ms=wait_ms if held else 0
                ),
                timeout=FETCH_TIMEOUT + wait_ms / 1000,
            )
        except grpc.aio.AioRpcError as exc:
            self._problem(city, f"{exc.code().name}: {(exc.details() or '')[:200]}")
            return
        async with self._fetching:
            if resp.unchanged and held is not None:
                # The node stands by the filter held (still judged by its own
                # issued_at): whatever was refused since was not from it now.
                self.problems[city] = ""
                return
            try:
                # Up to megabytes to hash and parse: off the event loop.
                verified = await asyncio.to_thread(self.verify, city, resp.filter)
            except CreditnetError as exc:
                self._problem(city, exc.reason)
                return
            self.hold(verified)

    def verify(self, city: City, env: envelope_pb2.SignedEnvelope) -> VerifiedFilter:
        """Verify `env` as `city`'s filter against the one held (blocking); raises the refusing rule."""
        return verify_filter(
            self.verifier,
            env,
            city=city,
            members=frozenset(self.directory.links),
            key=self.key,
            now=self.clock(),
            held=self.held.get(city),
        )

    def hold(self, verified: VerifiedFilter) -> None:
        self.held[verified.city] = verified
        self.problems[verified.city] = ""

    async def offer(self, city: City, env: envelope_pb2.SignedEnvelope) -> VerifiedFilter:
        """Verify and hold `env` as `city`'s filter; raises the rule that refused it (the held one stays)."""
        try:
            verified = await asyncio.to_thread(self.verify, city, env)
        except CreditnetError as exc:
            self._problem(city, exc.reason)
            raise
        self.hold(verified)
        return verified

    def _problem(self, city: City, reason: str) -> None:
        if self.problems.get(city) != reason:
            log.warning("membership filter of %s not taken: %s", city.value, reason)
        self.problems[city] = reason
