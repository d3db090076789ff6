"""The CityNodeService: every check made here, trusting no forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from creditnet import __version__, provenance, records, sealing
from creditnet import query as query_mod
from creditnet import uscc as uscc_mod
from creditnet.batches import MAX_BATCH_RECORDS, Batch
from creditnet.consent import verify_revocation
from creditnet.dates import date_to_proto, ts_to_proto, utcnow
from creditnet.domain import Category, City
from creditnet.envelope import ANSWER_TYPE, EnvelopeVerifier, digest, sign
from creditnet.errors import AlreadyExists, CreditnetError, InvalidArgument, PermissionDenied, Unavailable
from creditnet.ledger.log import Appended, Ledger
from creditnet.ledger.sqlstore import KeptQueryAnswer
from creditnet.node.membership import MembershipPublisher
from creditnet.observability import NodeMetrics, bind_query_id
from creditnet.pki import Identity, Role, RoleKind, TrustStore
from creditnet.query import CLOCK_SKEW, AuthorizedQuery
from creditnet.rpc import PeerIdentities, refusals
from creditnet.store import AsyncStore, ClaimOutcome, ClaimRefused, Disclosure, QueryClaim
from creditnet.v2 import chain_pb2, envelope_pb2, node_pb2, node_pb2_grpc, query_pb2, records_pb2
from creditnet.witness.server import Witness

__all__ = [
    "RECEIPT_WAIT",
    "UNDECODABLE_RECORD",
    "ChainWriter",
    "CityNodeService",
]

log = logging.getLogger(__name__)

MAX_REJECTIONS_REPORTED = 100
UNDECODABLE_RECORD = "not a well-formed CreditRecord (e.g. a text field that is not UTF-8)"
# How long an answer may wait for witnesses when the caller set no deadline.
RECEIPT_WAIT = 5.0
# The longest a GetMembershipFilter long poll is held (its wait_ms is capped to this).
MAX_FILTER_WAIT_MS = 60_000


@dataclass(frozen=True, slots=True)
class _Settled:
    """A query's signed answer and the ledger entry that logged it (index None: no chain)."""

    answer: envelope_pb2.SignedEnvelope
    index: int | None
    entry: bytes


class ChainWriter(Protocol):
    """What answering a query needs of the credit chain.

    The node's :class:`Ledger`, or in a worker process of a node run with
    several (creditnet.node.worker) the leader process's ledger, asked over
    the node's internal socket: either way one writer commits.
    """

    async def append(
        self,
        entry: chain_pb2.LedgerEntry,
        uscc: str | None = None,
        *,
        answer: KeptQueryAnswer | None = None,
        claim: QueryClaim | None = None,
    ) -> Appended: ...

    async def receipt(self, index: int, entry: bytes, timeout: float) -> chain_pb2.Receipt: ...

    async def entry(self, index: int) -> bytes: ...


class CityNodeService(node_pb2_grpc.CityNodeServiceServicer):
    def __init__(
        self,
        *,
        city: City,
        identity: Identity,
        trust: TrustStore,
        store: AsyncStore,
        ledger: ChainWriter | None,
        metrics: NodeMetrics | None = None,
        witness: Witness | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if identity.role.kind is not RoleKind.NODE or identity.role.city != city:
            raise ValueError(f"the node of {city.value} needs a node certificate for {city.value}")
        self.city = city
        self.identity = identity
        self.trust = trust
        self.verifier = EnvelopeVerifier(trust)
        self.peers = PeerIdentities(trust)
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self.witness = witness
        self.clock = clock
        # The signed membership filter for routing (None: no routing key).
        self.membership: MembershipPublisher | None = None
        # Queries being claimed, answered and logged, by (query id, digest).
        self._settling: dict[tuple[str, bytes], asyncio.Task[_Settled]] = {}

    # -- queries -------------------------------------------------------------

    @refusals
    async def Query(
        self, request: node_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.QueryResponse:
        # Whoever forwards (the aggregator, or a bank calling directly), the
        # bank's own signature and the enterprise's consent decide.
        peer = self.peers.require(context, RoleKind.AGGREGATOR, RoleKind.BANK)
        now = self.clock()
        seen = query_mod.Seen()
        try:
            aq = query_mod.authorize(self.verifier, request.query, city=self.city, now=now, seen=seen)
            if peer.kind is RoleKind.BANK and peer.subject != aq.terms.bank_code:
                # A bank calling directly sends only its own queries.
                raise PermissionDenied(
                    "query.sender", "this query was signed by another bank; a bank sends only its own queries"
                )
        except CreditnetError as exc:
            # Refusals are accesses too: the enterprise sees them in its history.
            await self._log_refusal(seen, exc, now)
            raise
        # Only now, with the bank's signature checked, is the query id trusted
        # enough to label logs and spans.
        bind_query_id(aq.terms.query_id)
        settled = await self._settle(aq, now)
        # The signed answer leaves only sealed to the bank's key for this
        # query, bound to the query and this city (docs/protocol.md, "Sealed answers").
        sealed = await self._seal(aq, settled.answer)
        if settled.index is None:
            # Only the benchmark's baseline runs without a chain; banks
            # refuse answers that carry no receipt.
            return node_pb2.QueryResponse(sealed_answer=sealed)
        assert self.ledger is not None
        # The answer leaves only with a receipt that witnesses have cosigned.
        receipt = await self._receipt(self.ledger, settled.index, settled.entry, context)
        return node_pb2.QueryResponse(sealed_answer=sealed, receipt=receipt)

    async def _seal(self, aq: AuthorizedQuery, answer: envelope_pb2.SignedEnvelope) -> query_pb2.SealedAnswer:
        """Seal a signed answer to the query's key; a large one off the event loop."""
        if len(answer.payload) > sealing.OFF_LOOP_BYTES:
            return await asyncio.to_thread(_seal_answer, aq, answer, self.city)
        return _seal_answer(aq, answer, self.city)

    async def _settle(self, aq: AuthorizedQuery, now: dt.datetime) -> _Settled:
        """Claim, answer and log this query as one step that no caller can split.

        The step runs as its own task: a caller that gives up (its deadline
        passed, its connection dropped, the node was frozen meanwhile) stops
        waiting for it, but a claim once submitted is always followed by its
        answer and ledger entry, or by the refusal it earned. Callers sending
        this very query (same id and digest) while it runs wait for the same
        task, so one query is never settled twice at once.
        """
        key = (aq.terms.query_id, aq.digest)
        task = self._settling.get(key)
        if task is None:
            task = asyncio.create_task(self._claim_and_answer(aq, now))
            self._settling[key] = task
            task.add_done_callback(functools.partial(self._settled, key))
        return await asyncio.shield(task)

    def _settled(self, key: tuple[str, bytes], task: asyncio.Task[_Settled]) -> None:
        if self._settling.get(key) is task:
            del self._settling[key]
        failure = None if task.cancelled() else task.exception()
        if failure is not None and not isinstance(failure, CreditnetError):
            # Every caller may have given up: said here, or nowhere.
            log.error("answering a query failed", exc_info=failure)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the queries being settled, so
        that a clean stop leaves no claim without its entry."""
        if self._settling:
            await asyncio.wait(list(self._settling.values()), timeout=timeout)

    async def _claim_and_answer(self, aq: AuthorizedQuery, now: dt.datetime) -> _Settled:
        if self.ledger is None:
            return await self._claim_then_answer(aq, now)
        # The answer is built and signed first: the claim then commits in
        # one transaction with the entry and the kept answer, or none of them
        # does, and nothing is disclosed unless it did.
        found = await self._lookup(aq)
        try:
            return await self._disclose(aq, now, found, claim=_claim_of(aq))
        except ClaimRefused as exc:
            refusal = _claim_refusal(exc.outcome)
        if isinstance(refusal, AlreadyExists):
            return await self._settle_again(aq, now, refusal)
        await self._log_refusal(_seen(aq), refusal, now)
        raise refusal

    async def _claim_then_answer(self, aq: AuthorizedQuery, now: dt.datetime) -> _Settled:
        """Without a chain (the benchmark's baseline): the claim alone, then the answer."""
        # The lookup runs while the claim commits; nothing is disclosed
        # unless the claim succeeds.
        lookup = asyncio.ensure_future(self._lookup(aq))
        try:
            await self._claim(aq)
        except AlreadyExists as exc:
            lookup.cancel()
            return await self._settle_again(aq, now, exc)
        except CreditnetError as exc:
            lookup.cancel()
            await self._log_refusal(_seen(aq), exc, now)
            raise
        except BaseException:
            lookup.cancel()
            raise
        return await self._disclose(aq, now, await lookup)

    async def _disclose(
        self, aq: AuthorizedQuery, now: dt.datetime, found: Disclosure, *, claim: QueryClaim | None = None
    ) -> _Settled:
        """Answer from `found`; with `claim`, only if the claim commits with the entry (else ClaimRefused)."""
        answer, disclosed = self._answer(aq, now, found)
        if self.ledger is None:
            self._answered(disclosed)
            return _Settled(answer, None, b"")
        entry = _query_entry(aq, self.city, now, chain_pb2.ENTRY_KIND_QUERY_ANSWERED)
        entry.disclosed_digest = digest(answer.payload)
        entry.records_disclosed = disclosed
        # The entry and the kept answer are on disk, together (and with the
        # claim), before anything is disclosed.
        kept = KeptQueryAnswer(aq.terms.query_id, aq.digest, answer.SerializeToString(deterministic=True))
        appended = await self.ledger.append(entry, aq.terms.enterprise_uscc, answer=kept, claim=claim)
        self._answered(disclosed)
        return _Settled(answer, appended.index, appended.entry)

    async def _settle_again(self, aq: AuthorizedQuery, now: dt.datetime, replay: AlreadyExists) -> _Settled:
        """A query id claimed before: this very query again, or a replay.

        The very query (same id and signed payload) gets the answer kept for
        it, and nothing new is disclosed or logged. If its claim holds no
        answer (the node stopped, or its append failed, between the claim's
        commit and the entry's), the claim is completed now: answered and
        logged once, spending no second use. A consent revoked since is
        honoured all the same. Any other query under that id is a replay.
        """
        claimed = None if self.ledger is None else await self.store.claimed(aq.terms.query_id)
        if claimed is None or claimed.query_digest != aq.digest:
            await self._log_refusal(_seen(aq), replay, now)
            raise replay
        if await self.store.is_revoked(aq.consent.digest):
            revoked = PermissionDenied("consent.revoked", "the enterprise has revoked this consent")
            await self._log_refusal(_seen(aq), revoked, now)
            raise revoked
        if claimed.kept is None:
            log.warning("query claimed but never answered; answering it now")
            return await self._disclose(aq, now, await self._lookup(aq))
        assert self.ledger is not None
        index = claimed.kept.ledger_index
        entry = await self.ledger.entry(index)
        return _Settled(envelope_pb2.SignedEnvelope.FromString(claimed.kept.answer), index, entry)

    async def _receipt(
        self, ledger: ChainWriter, index: int, entry: bytes, context: grpc.aio.ServicerContext
    ) -> chain_pb2.Receipt:
        remaining = context.time_remaining()
        wait = RECEIPT_WAIT if remaining is None else max(0.0, min(RECEIPT_WAIT, remaining - 0.02))
        try:
            return await ledger.receipt(index, entry, wait)
        except TimeoutError:
            raise Unavailable(
                "chain.unpublished", "the access is logged but witnesses have not cosigned it yet; retry"
            ) from None

    def _answered(self, disclosed: int) -> None:
        if self.metrics is not None:
            self.metrics.query_answered(disclosed)

    async def _log(self, entry: chain_pb2.LedgerEntry, uscc: str | None = None) -> None:
        if self.ledger is not None:
            await self.ledger.append(entry, uscc)

    async def _log_refusal(self, seen: query_mod.Seen, exc: CreditnetError, now: dt.datetime) -> None:
        """Log a refused query on the credit chain, from what `authorize` established.

        Only a query a bank really signed is logged at all: anything else
        would let any peer write entries in a bank's name. It is logged
        against the enterprise (its commitment, so in the enterprise's
        history) only when its consent verified as that enterprise's grant to
        that bank; otherwise any bank could fill any enterprise's history by
        naming it, and the entry names no enterprise (auditors still see the
        bank's attempt).
        """
        if self.metrics is not None:
            self.metrics.query_refused(exc.rule)
        terms = seen.terms
        if terms is None:
            return
        entry = chain_pb2.LedgerEntry(
            kind=chain_pb2.ENTRY_KIND_QUERY_REFUSED,
            time=ts_to_proto(now),
            city=self.city.proto,
            query_id=terms.query_id,
            query_digest=seen.digest,
            bank_code=terms.bank_code[:64],
            purpose=terms.purpose.proto,
            categories=[c.proto for c in terms.categories],
            refusal=f"{exc.code.name} {exc.rule}",
        )
        if seen.consent is None:
            await self._log(entry)
            return
        entry.consent_id = seen.consent.terms.consent_id
        entry.consent_digest = seen.consent.digest
        await self._log(entry, terms.enterprise_uscc)

    async def _claim(self, aq: AuthorizedQuery) -> None:
        c = _claim_of(aq)
        outcome = await self.store.claim_query(
            c.query_id, c.consent_digest, c.max_uses, c.expires_at, query_digest=c.query_digest
        )
        if outcome is not ClaimOutcome.OK:
            raise _claim_refusal(outcome)

    async def _lookup(self, aq: AuthorizedQuery) -> Disclosure:
        uscc = aq.terms.enterprise_uscc
        # Only the home city of an enterprise holds (and discloses) its profile.
        home = uscc_mod.home_city(uscc) == self.city
        return await self.store.disclose(uscc, aq.categories, aq.data_from, aq.data_to, with_profile=home)

    def _answer(
        self, aq: AuthorizedQuery, now: dt.datetime, found: Disclosure
    ) -> tuple[envelope_pb2.SignedEnvelope, int]:
        uscc = aq.terms.enterprise_uscc
        answer = query_pb2.CityAnswer(
            query_id=aq.terms.query_id,
            query_digest=aq.digest,
            city=self.city.proto,
            enterprise_uscc=uscc,
            as_of=ts_to_proto(now),
            categories=[c.proto for c in aq.categories],
            data_from=date_to_proto(aq.data_from),
            data_to=date_to_proto(aq.data_to),
            withheld_unsigned=found.withheld,
        )
        # Each record as its provider signed it, with its proof, and each
        # batch manifest once (docs/protocol.md, "Records signed at their source").
        position: dict[int, int] = {}
        for rec in found.records:
            at = position.get(rec.batch)
            if at is None:
                at = position[rec.batch] = len(answer.batches)
                answer.batches.add().ParseFromString(found.batches[rec.batch])
            answer.proven_records.add(
                record=rec.payload,
                batch=at,
                leaf_index=rec.leaf_index,
                inclusion_path=provenance.split_path(rec.inclusion_path),
            )
        if found.profile is not None:
            answer.profile.CopyFrom(found.profile)
        payload = answer.SerializeToString(deterministic=True)
        return sign(ANSWER_TYPE, payload, self.identity), len(found.records)

    # -- data providers ------------------------------------------------------

    @refusals
    async def SubmitRecords(
        self,
        # Batches as `read_batch` reads them off the wire (see node.server).
        request_iterator: AsyncIterator[Batch | node_pb2.SubmitRecordsRequest],
        context: grpc.aio.ServicerContext,
    ) -> node_pb2.SubmitRecordsResponse:
        role = self.peers.require(context, RoleKind.PROVIDER)
        if role.city != self.city:
            raise PermissionDenied(
                "provider.city", f"this provider certificate is not for the {self.city.value} node"
            )
        provider_id = provenance.provider_id_of(role)
        # Initial metadata says "authorized, send on": a worker relaying the
        # stream (node.worker) waits for it, so that a refusal above never
        # meets a message still being written.
        await context.send_initial_metadata(())
        try:
            summary = await self._ingest(request_iterator, role, provider_id)
        except CreditnetError:
            # A refused batch ends ingestion; earlier batches were committed
            # and stay. The rest of the stream is read (and not looked at)
            # before the refusal goes out: a gRPC client still writing when
            # its call ends reports INTERNAL instead of the refusal.
            async for _ in request_iterator:
                pass
            raise
        log.info(
            "provider %s submitted %d records: %d new, %d duplicate, %d rejected",
            role.subject,
            summary.received,
            summary.accepted,
            summary.duplicates,
            summary.rejected,
        )
        return summary

    async def _ingest(
        self,
        request_iterator: AsyncIterator[Batch | node_pb2.SubmitRecordsRequest],
        role: Role,
        provider_id: str,
    ) -> node_pb2.SubmitRecordsResponse:
        summary = node_pb2.SubmitRecordsResponse()
        index = 0
        async for request in request_iterator:
            batch = Batch.of(request)
            if batch.oversized:
                # Refused before any record of it is looked at.
                raise InvalidArgument(
                    "provider.batch_size",
                    f"a batch holds at most {MAX_BATCH_RECORDS} records, this one {batch.count}; "
                    "send smaller batches",
                )
            # Verifying the provider's signature over the batch, decoding,
            # checking and hashing up to MAX_BATCH_RECORDS records takes
            # hundreds of milliseconds of CPU: off the event loop, so that
            # queries keep being answered meanwhile.
            screened = await asyncio.to_thread(self._screen_signed, batch, role, index)
            for at, record_id, reason in screened.rejections:
                self._reject(summary, at, record_id, reason)
            valid = screened.valid
            index += batch.count
            summary.received += batch.count
            accepted = duplicates = 0
            if valid:
                # The batch's enterprises enter the membership filter before
                # it commits, and a filter holding them is signed before the
                # provider hears of the commit (docs/protocol.md, "Routing").
                async with self._filter_turn({r.enterprise_uscc for r in valid}):
                    # Logged before it is stored: a crash in between leaves a
                    # logged batch the provider resends (records are idempotent),
                    # never stored records that no entry accounts for.
                    await self._log(
                        chain_pb2.LedgerEntry(
                            kind=chain_pb2.ENTRY_KIND_RECORDS_SUBMITTED,
                            time=ts_to_proto(self.clock()),
                            city=self.city.proto,
                            provider_id=provider_id,
                            batch_digest=screened.digest,
                            batch_records=len(valid),
                        )
                    )
                    result = await self.store.ingest(
                        valid, provider_id, signed=screened.signed, leaves=screened.leaves
                    )
                    if self.membership is not None:
                        self.membership.committed(result.accepted)
                if self.membership is not None:
                    await self.membership.publish()
                accepted, duplicates = result.accepted, result.duplicates
                summary.accepted += accepted
                summary.duplicates += duplicates
            summary.batches += 1
            if self.metrics is not None:
                self.metrics.ingest_batch(
                    accepted=accepted,
                    duplicates=duplicates,
                    rejected=batch.count - len(valid),
                )
        return summary

    def _screen_signed(self, batch: Batch, role: Role, first: int) -> _Screened:
        """The provider's signed manifest over exactly these bytes, then each record.

        A batch whose manifest is missing, does not verify, or does not
        cover exactly these records is refused whole before any record is
        decoded (docs/protocol.md, "Records signed at their source").
        """
        raw = batch.records_bytes()
        checked, signed = provenance.verify_batch(
            self.verifier, batch.manifest, raw, city=self.city, caller=role, at=self.clock()
        )
        return _screen(batch, set(role.categories), self.city, first, checked=checked, signed=signed)

    def _filter_turn(self, usccs: set[str]) -> contextlib.AbstractAsyncContextManager[None]:
        if self.membership is None:
            return contextlib.nullcontext()
        return self.membership.ingesting(usccs)

    @staticmethod
    def _reject(summary: node_pb2.SubmitRecordsResponse, index: int, record_id: str, reason: str) -> None:
        summary.rejected += 1
        if len(summary.rejections) < MAX_REJECTIONS_REPORTED:
            summary.rejections.add(index=index, record_id=record_id[:128], reason=reason)

    # -- revocations and info -------------------------------------------------

    @refusals
    async def RevokeConsent(
        self, request: node_pb2.RevokeConsentRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.RevokeConsentResponse:
        # Anyone in the network may deliver a revocation: it only counts if
        # the enterprise itself signed it.
        self.peers.role(context)
        rev = verify_revocation(self.verifier, request.revocation, request.consent, at=self.clock())
        newly = await self.store.revoke(
            rev.consent_digest,
            rev.consent_id,
            rev.enterprise_uscc,
            rev.revoked_at,
            request.revocation.SerializeToString(deterministic=True),
        )
        if newly:
            await self._log(
                chain_pb2.LedgerEntry(
                    kind=chain_pb2.ENTRY_KIND_CONSENT_REVOKED,
                    time=ts_to_proto(self.clock()),
                    city=self.city.proto,
                    consent_id=rev.consent_id[:64],
                    consent_digest=rev.consent_digest,
                ),
                rev.enterprise_uscc,
            )
        return node_pb2.RevokeConsentResponse(newly_revoked=newly)

    @refusals
    async def GetMembershipFilter(
        self, request: node_pb2.GetMembershipFilterRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.GetMembershipFilterResponse:
        # Only the aggregator routes: nobody else needs to know whom a node holds.
        self.peers.require(context, RoleKind.AGGREGATOR)
        current = None if self.membership is None else self.membership.current
        if self.membership is None or current is None:
            raise Unavailable("filter.unavailable", "this node publishes no membership filter")
        if request.known_version and request.known_version == self.membership.version and request.wait_ms:
            # A long poll: the aggregator learns of a new filter at once, and an idle
            # network costs a call per node per wait, not per second.
            wait = min(request.wait_ms, MAX_FILTER_WAIT_MS) / 1000
            await self.membership.signed_after(request.known_version, wait)
            current = self.membership.current
        if request.known_version and request.known_version == self.membership.version:
            return node_pb2.GetMembershipFilterResponse(unchanged=True)
        return node_pb2.GetMembershipFilterResponse(filter=current)

    @refusals
    async def GetNodeInfo(
        self, request: node_pb2.GetNodeInfoRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.GetNodeInfoResponse:
        self.peers.role(context)
        stats = await self.store.stats()
        info = node_pb2.GetNodeInfoResponse(
            city=self.city.proto,
            certificate=self.identity.chain_der[0],
            enterprises=stats.enterprises,
            records=stats.records,
            records_by_category={str(k): v for k, v in stats.records_by_category.items()},
            version=__version__,
        )
        if isinstance(self.ledger, Ledger):
            info.log_size = self.ledger.committed_size
            published = self.ledger.published
            info.published_size = published.size if published is not None else 0
        if self.witness is not None:
            evidence = await asyncio.to_thread(self.witness.evidence)
            info.evidence_against.extend(sorted({e.origin for e in evidence}))
        return info


def _seal_answer(
    aq: AuthorizedQuery, answer: envelope_pb2.SignedEnvelope, city: City
) -> query_pb2.SealedAnswer:
    shown = query_pb2.CityAnswer.FromString(answer.payload)
    discloses = bool(shown.proven_records) or shown.HasField("profile")
    return sealing.seal(aq.terms.answer_key, answer, aq.digest, city, discloses=discloses)


def _claim_of(aq: AuthorizedQuery) -> QueryClaim:
    """The claim answering `aq` makes: its id once, and one use of its consent, within the grant's limit."""
    return QueryClaim(
        aq.terms.query_id,
        aq.consent.digest,
        aq.grant.max_uses,
        aq.terms.expires_at + CLOCK_SKEW,
        aq.digest,
    )


def _claim_refusal(outcome: ClaimOutcome) -> CreditnetError:
    """The refusal a claim's outcome (any but OK) earns the query."""
    if outcome is ClaimOutcome.REPLAY:
        return AlreadyExists("query.replay", "this query id was already answered; sign a new query")
    if outcome is ClaimOutcome.REVOKED:
        return PermissionDenied("consent.revoked", "the enterprise has revoked this consent")
    if outcome is ClaimOutcome.LIMIT_EXCEEDED:
        return PermissionDenied("consent.uses_exhausted", "the consent's maximum number of uses is reached")
    raise ValueError(f"{outcome} is no refusal")


def _seen(aq: AuthorizedQuery) -> query_mod.Seen:
    """A query that passed every stateless rule: its refusal is logged against the enterprise."""
    return query_mod.Seen(terms=aq.terms, digest=aq.digest, consent=aq.consent)


def _query_entry(aq: AuthorizedQuery, city: City, now: dt.datetime, kind: int) -> chain_pb2.LedgerEntry:
    return chain_pb2.LedgerEntry(
        kind=kind,  # type: ignore[arg-type]
        time=ts_to_proto(now),
        city=city.proto,
        query_id=aq.terms.query_id,
        query_digest=aq.digest,
        bank_code=aq.terms.bank_code,
        purpose=aq.terms.purpose.proto,
        categories=[c.proto for c in aq.categories],
        consent_id=aq.consent.terms.consent_id,
        consent_digest=aq.consent.digest,
    )


@dataclass(frozen=True, slots=True)
class _Screened:
    valid: list[records_pb2.CreditRecord]
    # (index in the stream, record id, reason) of each record refused.
    rejections: list[tuple[int, str, str]]
    # SHA-256 over the valid records, each as a 4-byte length and its bytes.
    digest: bytes
    # The provider-signed batch and each valid record's position in it.
    signed: provenance.SignedBatch | None = None
    leaves: list[int] | None = None


def _screen(
    batch: Batch,
    allowed: set[Category],
    city: City,
    first: int,
    *,
    checked: provenance.VerifiedManifest,
    signed: provenance.SignedBatch,
) -> _Screened:
    """Decode and check a provider's signed batch; PermissionDenied refuses all of it."""
    valid: list[records_pb2.CreditRecord] = []
    leaves: list[int] = []
    rejections: list[tuple[int, str, str]] = []
    h = hashlib.sha256()
    provider_id = checked.manifest.provider_id
    signer_allows = set(checked.signer.categories)
    for leaf, rec in enumerate(batch.decode()):
        at = first + leaf
        if rec is None:
            rejections.append((at, "", UNDECODABLE_RECORD))
            continue
        try:
            category = records.validate_record(rec)
            if rec.provider_id != provider_id:
                # The provider signed this record as another's: the batch is
                # not its own to submit.
                raise PermissionDenied(
                    "batch.provider_id", "a record of the batch names another provider_id than its signer"
                )
            # A record outside the certificate's scope refuses the whole
            # batch (PermissionDenied); earlier batches were committed and stay.
            _check_provider_scope(rec, category, allowed, city)
            if category not in signer_allows:
                # The caller's certificate allows it, the one that signed does not.
                raise PermissionDenied(
                    "batch.category",
                    f"the certificate that signed the batch does not allow {category.value} records",
                )
        except PermissionDenied:
            raise
        except ValueError as exc:
            rejections.append((at, rec.record_id, str(exc)))
        else:
            valid.append(rec)
            leaves.append(leaf)
            data = rec.SerializeToString(deterministic=True)
            h.update(len(data).to_bytes(4, "big") + data)
    return _Screened(valid, rejections, h.digest(), signed, leaves)


def _check_provider_scope(
    rec: records_pb2.CreditRecord, category: Category, allowed: set[Category], city: City
) -> None:
    if category not in allowed:
        raise PermissionDenied(
            "provider.category",
            f"this provider certificate does not allow {category.value} records",
        )
    if rec.city != city.proto:
        raise PermissionDenied("provider.city", f"this node only stores records of {city.value}")
