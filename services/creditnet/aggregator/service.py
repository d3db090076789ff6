"""AggregatorService: check once, fan out in parallel, never wait past the deadline."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import grpc

from creditnet import query as query_mod
from creditnet import uscc as uscc_mod
from creditnet.aggregator.directory import NodeDirectory, NodeLink
from creditnet.aggregator.head import NetworkCheckpointer
from creditnet.aggregator.revocations import RevocationOutbox
from creditnet.aggregator.routing import Decision, Router
from creditnet.aggregator.state import AggregatorState
from creditnet.chain.keys import log_origin
from creditnet.consent import verify_revocation
from creditnet.dates import ts_to_proto, utcnow
from creditnet.deadlines import CallerBudget
from creditnet.domain import City
from creditnet.envelope import EnvelopeVerifier
from creditnet.errors import FailedPrecondition, PermissionDenied
from creditnet.observability import AggregatorMetrics, bind_query_id, client_span
from creditnet.pki import Identity, RoleKind, TrustStore, node_server_name
from creditnet.rpc import PeerIdentities, refusals, taken
from creditnet.v2 import aggregator_pb2, aggregator_pb2_grpc, envelope_pb2, node_pb2

__all__ = [
    "AggregatorService",
]

log = logging.getLogger(__name__)

NODE_QUERY = "/creditnet.v2.CityNodeService/Query"
# How every refusal of a creditnet server begins: its rule id, then the reason.
_NODE_RULE = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+: ")
# Time kept back from the caller's budget (its deadline less gRPC's rounding
# of it, or the budget it stated) to assemble and send the answer.
DEADLINE_MARGIN = 0.05
S = aggregator_pb2
NO_KEY = "this aggregator has no routing key"


class AggregatorService(aggregator_pb2_grpc.AggregatorServiceServicer):
    def __init__(
        self,
        *,
        identity: Identity,
        trust: TrustStore,
        directory: NodeDirectory,
        state: AggregatorState,
        default_timeout: float = 10.0,
        metrics: AggregatorMetrics | None = None,
    ) -> None:
        self.identity = identity
        self.verifier = EnvelopeVerifier(trust)
        self.peers = PeerIdentities(trust)
        self.directory = directory
        self.default_timeout = default_timeout
        self.state = state
        self.outbox = RevocationOutbox(state, directory)
        self.head: NetworkCheckpointer | None = None
        self.metrics = metrics
        # Routing by the nodes' membership filters (None: no routing key, every city is asked).
        self.router: Router | None = None

    @refusals
    async def FederatedQuery(
        self, request: S.FederatedQueryRequest, context: grpc.aio.ServicerContext
    ) -> S.FederatedQueryResponse:
        peer = self.peers.require(context, RoleKind.BANK)
        await taken(context)
        # Read first, so that checking the query counts against the caller's time.
        caller = CallerBudget.of(context)
        # The same rules every node applies: refuse garbage here once
        # rather than five times, but the nodes still decide for themselves.
        aq = query_mod.authorize(self.verifier, request.query, city=None, now=utcnow())
        if peer.subject != aq.terms.bank_code:
            # A bank may only send its own queries: one that replays another
            # bank's signed query would spend that bank's consent uses.
            raise PermissionDenied(
                "query.sender", "this query was signed by another bank; a bank sends only its own queries"
            )
        bind_query_id(aq.terms.query_id)
        # Read through to the database every replica writes: a revocation
        # accepted by another replica a moment ago counts (aggregator.database
        # when the database cannot say, rather than answering without it).
        if await self.outbox.is_revoked(aq.consent.digest):
            raise PermissionDenied("consent.revoked", "the enterprise has revoked this consent")
        remaining = caller.remaining()
        budget = self.default_timeout if remaining is None else max(0.0, remaining - DEADLINE_MARGIN)
        # The cities the consent grants the query: those it names, else the consent's, else every member.
        scope = aq.grant.scope(self.directory.members())
        decisions = self._route(aq.terms.enterprise_uscc, scope, exhaustive=request.exhaustive)
        asked = [d for d in decisions if d.asked]
        answers = await asyncio.gather(*(self._ask(d.city, request.query, budget) for d in asked))
        if self.head is not None:
            for d in asked:
                # Its log may have grown by this query's entry: the next network checkpoint reads it.
                self.head.hint(d.city)
        by_city = {d.city: section for d, section in zip(asked, answers, strict=True)}
        out = S.FederatedQueryResponse(query_id=aq.terms.query_id)
        for d in decisions:
            section = by_city.get(d.city)
            if section is None:
                # Made in place: a national query leaves hundreds of cities out.
                out.sections.add(
                    city=d.city.proto,
                    status=S.SECTION_STATUS_NOT_ASKED,
                    reason=d.detail,
                    asked=False,
                    routing=d.routing,
                    routing_detail=d.detail,
                )
                if self.metrics is not None:
                    self.metrics.not_asked(d.city)
                continue
            section.asked, section.routing, section.routing_detail = d.asked, d.routing, d.detail  # type: ignore[assignment]
            out.sections.append(section)
        return out

    def _route(self, uscc: str, scope: tuple[City, ...], *, exhaustive: bool) -> list[Decision]:
        if self.router is not None:
            return self.router.route(uscc, scope, exhaustive=exhaustive)
        home = uscc_mod.home_city(uscc)
        return [
            Decision(c, True, S.ROUTING_REGISTRATION, "the enterprise's registration city")
            if c == home
            else Decision(c, True, S.ROUTING_ASKED_FOR, f"no usable filter: {NO_KEY}")
            for c in scope
        ]

    async def _ask(self, city: City, query: envelope_pb2.SignedEnvelope, budget: float) -> S.CitySection:
        link = self.directory.get(city)
        if link is None:
            return S.CitySection(
                city=city.proto,
                status=S.SECTION_STATUS_UNAVAILABLE,
                reason="the network has no member node for this city",
            )
        start = time.perf_counter()
        section = await self._call(link, query, budget)
        section.latency_ms = int((time.perf_counter() - start) * 1000)
        if self.metrics is not None:
            self.metrics.observe_section(section)
        return section

    async def _call(self, link: NodeLink, query: envelope_pb2.SignedEnvelope, budget: float) -> S.CitySection:
        city = link.city.proto
        if budget <= 0:
            return S.CitySection(
                city=city, status=S.SECTION_STATUS_TIMEOUT, reason="no time left in the deadline"
            )
        if not link.try_acquire():
            return S.CitySection(
                city=city, status=S.SECTION_STATUS_UNAVAILABLE, reason=link.saturation_reason()
            )
        try:
            with client_span(NODE_QUERY, node_server_name(link.city)) as metadata:
                # The gRPC deadline bounds the call; wait_for bounds everything
                # else (a connection attempt to a frozen node included).
                call = link.query_stub().Query(
                    node_pb2.QueryRequest(query=query), timeout=budget, metadata=metadata
                )
                resp = await asyncio.wait_for(call, timeout=budget + DEADLINE_MARGIN / 2)
        except TimeoutError:
            return S.CitySection(
                city=city, status=S.SECTION_STATUS_TIMEOUT, reason="the node did not answer in time"
            )
        except grpc.aio.AioRpcError as exc:
            return _section_for_error(city, exc)
        finally:
            link.release()
        # The answer is sealed to the bank: the aggregator relays it unread,
        # reporting the node's unsigned word on whether it discloses anything
        # (the bank takes the status from the answer it opens).
        if not resp.HasField("sealed_answer") or not resp.sealed_answer.ciphertext:
            return S.CitySection(
                city=city, status=S.SECTION_STATUS_INVALID, reason="the node sent no sealed answer"
            )
        return S.CitySection(
            city=city,
            status=S.SECTION_STATUS_OK if resp.sealed_answer.discloses else S.SECTION_STATUS_NO_RECORDS,
            sealed_answer=resp.sealed_answer,
            receipt=resp.receipt,
        )

    @refusals
    async def BroadcastRevocation(
        self, request: S.BroadcastRevocationRequest, context: grpc.aio.ServicerContext
    ) -> S.BroadcastRevocationResponse:
        self.peers.role(context)
        await taken(context)
        rev = verify_revocation(self.verifier, request.revocation, request.consent, at=utcnow())
        deliveries = await self.outbox.publish(rev, request.consent)
        return S.BroadcastRevocationResponse(deliveries=deliveries)

    @refusals
    async def ListNodes(
        self, request: S.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> S.ListNodesResponse:
        self.peers.role(context)
        await taken(context)
        links = await self.directory.check_all()
        against: dict[str, int] = {}
        if self.head is not None:
            for e in await asyncio.to_thread(self.head.witness.evidence):
                against[e.origin] = against.get(e.origin, 0) + 1
        health = {
            "serving": S.NODE_HEALTH_SERVING,
            "not_serving": S.NODE_HEALTH_NOT_SERVING,
            "unreachable": S.NODE_HEALTH_UNREACHABLE,
        }
        out = S.ListNodesResponse()
        for link in sorted(links, key=lambda lk: lk.city.proto):
            status = out.nodes.add(
                city=link.city.proto,
                endpoint=link.endpoint,
                health=health.get(link.last_status, S.NODE_HEALTH_UNSPECIFIED),
                latency_ms=link.last_latency_ms,
                last_error=link.last_error,
                evidence=against.get(log_origin(link.city.value), 0),
            )
            if link.last_checked:
                status.last_checked.CopyFrom(ts_to_proto(link.last_checked))
            if self.router is not None:
                self.router.describe(link.city, status.filter)
        return out

    @refusals
    async def GetNetworkCheckpoint(
        self, request: S.GetNetworkCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> S.GetNetworkCheckpointResponse:
        self.peers.role(context)
        if self.head is None:
            raise FailedPrecondition("chain.unpublished", "no network checkpoint has been made yet")
        # The committed head, whichever replica signed it.
        head = await asyncio.to_thread(self.state.head)
        if not head.note:
            raise FailedPrecondition("chain.unpublished", "no network checkpoint has been made yet")
        cities = sorted(head.city_notes)
        # Everything a verifier needs besides the CA certificate: the national
        # key, and each city's log key and witnesses (docs/chain.md).
        certificates = [self.head.log_key.certificate_der]
        for city in cities:
            certificates += head.city_certificates.get(city, [])
        return S.GetNetworkCheckpointResponse(
            checkpoint=head.note,
            city_checkpoints=[head.city_notes[c] for c in cities],
            key_certificates=list(dict.fromkeys(certificates)),
        )


def _section_for_error(city: str, exc: grpc.aio.AioRpcError) -> S.CitySection:
    code = exc.code()
    details = (exc.details() or "")[:300]
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return S.CitySection(
            city=city, status=S.SECTION_STATUS_TIMEOUT, reason="the node did not answer in time"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        # The node's own word (e.g. chain.unpublished: retry) names its rule;
        # anything else is gRPC saying the node could not be reached.
        own = _NODE_RULE.match(details) is not None
        return S.CitySection(
            city=city,
            status=S.SECTION_STATUS_UNAVAILABLE,
            reason=details if own else f"the node is unreachable: {details}",
            code=code.name,
        )
    return S.CitySection(city=city, status=S.SECTION_STATUS_DENIED, reason=details, code=code.name)
