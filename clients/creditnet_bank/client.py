"""The bank's async SDK: sign a query, ask the aggregator, verify every city."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from google.protobuf.message import DecodeError

from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.deadlines import answer_reserve, budget_metadata
from creditnet.directory.model import Directory
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import EnvelopeVerifier, load_envelope
from creditnet.errors import RETRY_AFTER_KEY, CreditnetError, Error
from creditnet.pki import AGGREGATOR_SERVER_NAME, Identity, RoleKind, TrustStore, node_server_name
from creditnet.querycontext import parse_query_id, query_scope
from creditnet.sealing import DEFAULT_SUITE, AnswerKeyPair, AnswerSuite
from creditnet.tracecontext import client_span
from creditnet.v2 import (
    aggregator_pb2,
    directory_service_pb2,
    envelope_pb2,
    node_pb2,
    node_pb2_grpc,
    query_pb2,
)
from creditnet.v2 import envelope_pb2 as v2_envelope_pb2
from creditnet_bank.directory import BankDirectory, DirectorySettings
from creditnet_bank.replicas import FEDERATED_QUERY, GET_DIRECTORY, LIST_NODES, Replicas
from creditnet_bank.report import Report, merge
from creditnet_bank.scope import account
from creditnet_bank.verify import Section, scope_cities, verify_section

__all__ = [
    "DEFAULT_TIMEOUT",
    "BankClient",
    "DirectoryRefused",
    "QueryRefused",
]

DEFAULT_TIMEOUT = 10.0

log = logging.getLogger(__name__)


class QueryRefused(Error):
    """The aggregator refused the query as a whole; `code` and `reason` say why."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


class DirectoryRefused(QueryRefused):
    """The client's network directory is missing or expired (or could not be taken): nothing was sent.

    `rule` is the directory rule (``directory.expired``, ``directory.missing``, ``directory.anchor``…).
    """

    def __init__(self, exc: CreditnetError) -> None:
        super().__init__(exc.code, exc.reason)
        self.rule = exc.rule


class BankClient:
    """Ask the network about an enterprise, with its consent.

    >>> async with BankClient.from_files(aggregator="localhost:7000", cert=..., key=..., ca=...) as bank:
    ...     report = await bank.query("91340100...", consent=Path("acme.consent.json"),
    ...                               purpose="loan_application")

    `aggregator` may name several endpoints (replicas of one aggregator, as a
    list or comma-separated): a call goes to the one that answered last, and
    moves to the next when one is unreachable or answers UNAVAILABLE, within
    the call's one deadline; one that has not taken the call within the
    hedge delay (frozen) is asked alongside the next, and the first answer
    wins (`creditnet_bank.replicas`). A refusal (PERMISSION_DENIED,
    INVALID_ARGUMENT…) is the network's answer and is not asked of another
    replica.

    With `directory` (protocol v2), the client holds the signed network
    directory (`creditnet_bank.directory`): it refreshes it from the
    aggregator, refuses every certificate it revokes (the signers of the
    nodes' answers and log checkpoints, the aggregator's TLS certificate),
    expects the cities it lists, and sends nothing while it holds only an
    expired one (`DirectoryRefused`, ``directory.expired``).
    """

    def __init__(
        self,
        *,
        aggregator: str | Sequence[str],
        identity: Identity,
        trust: TrustStore,
        timeout: float = DEFAULT_TIMEOUT,
        directory: DirectorySettings | None = None,
    ) -> None:
        if identity.role.kind is not RoleKind.BANK:
            raise ValueError(f"a bank client needs a bank certificate, not {identity.role.uri}")
        self.replicas = Replicas(aggregator, identity, trust)
        self.endpoints = self.replicas.endpoints
        self.identity = identity
        self.trust = trust
        self.timeout = timeout
        self.directory = BankDirectory(directory, trust) if directory is not None else None
        if self.directory is not None:
            # Every verification with this store (answers, receipts, the
            # aggregator's certificate) asks the directory held at that moment.
            trust.revocation = self.directory.revocation_check()
        self.verifier = EnvelopeVerifier(trust)

    @classmethod
    def from_files(
        cls,
        *,
        aggregator: str | Sequence[str],
        cert: Path | str,
        key: Path | str,
        ca: Path | str,
        timeout: float = DEFAULT_TIMEOUT,
        directory_anchor: str | None = None,
        directory_state: Path | str | None = None,
        directory_bootstrap: Path | str | None = None,
    ) -> BankClient:
        """`directory_anchor` (SHA-256 hex of the first trusted directory) and
        `directory_state` (the file the client keeps it in) go together; with
        them the client holds the network directory. `directory_bootstrap`: the
        first signed directory, if at hand (otherwise fetched and pinned)."""
        settings: DirectorySettings | None = None
        if directory_anchor is not None or directory_state is not None:
            if directory_anchor is None or directory_state is None:
                raise ValueError("a directory anchor and a directory state file go together")
            settings = DirectorySettings(
                anchor=directory_anchor,
                state=Path(directory_state),
                bootstrap=Path(directory_bootstrap) if directory_bootstrap is not None else None,
            )
        return cls(
            aggregator=aggregator,
            identity=Identity.load(Path(cert), Path(key)),
            trust=TrustStore.load(Path(ca)),
            timeout=timeout,
            directory=settings,
        )

    @classmethod
    def from_network(
        cls,
        network_json: Path | str,
        bank: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        directory_state: Path | str | None = None,
    ) -> BankClient:
        """Connect with the endpoints and a bank identity listed in a network.json.

        A network with a directory (`creditnet network up`) gives its anchor
        and first signed directory; the client keeps it in `directory_state`,
        by default ``banks/<code>.directory.binpb`` next to the network.json.
        """
        net = json.loads(Path(network_json).read_text())
        base = Path(network_json).parent
        banks = net["identities"]["banks"]
        code = bank or next(iter(banks))
        ident = banks[code]
        signed = net.get("directory")
        listed = net["aggregator"]
        return cls.from_files(
            # A network with replicas lists them all; "endpoint" is the first.
            aggregator=listed.get("endpoints") or listed["endpoint"],
            cert=base / ident["cert"],
            key=base / ident["key"],
            ca=base / net["ca"],
            timeout=timeout,
            directory_anchor=signed["anchor"] if signed else None,
            directory_state=(directory_state or base / "banks" / f"{code}.directory.binpb")
            if signed
            else None,
            directory_bootstrap=base / signed["file"] if signed else None,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.replicas.close()

    async def _fetch_directory(self) -> v2_envelope_pb2.SignedEnvelope:
        resp = await self.replicas.unary(
            GET_DIRECTORY,
            directory_service_pb2.GetDirectoryRequest(),
            directory_service_pb2.GetDirectoryResponse,
            time.monotonic() + min(self.timeout, 5.0),
        )
        return resp.directory

    async def refresh_directory(self) -> int:
        """Fetch the aggregator's directory now; the version held afterwards.

        Raises the rule that refused it (``directory.rollback``, …, a
        CreditnetError) or the call's AioRpcError; the last good one is kept.
        """
        if self.directory is None:
            raise ValueError("this client was not given a network directory")
        return await self.directory.refresh(self._fetch_directory)

    async def offer_directory(self, envelope: v2_envelope_pb2.SignedEnvelope) -> bool:
        """Take a signed directory received another way, verified as any; True if it changed."""
        if self.directory is None:
            raise ValueError("this client was not given a network directory")
        return await self.directory.offer(envelope)

    async def ready_directory(self) -> Directory | None:
        """The directory to act by, refreshed when due; DirectoryRefused when there is no fresh one."""
        if self.directory is None:
            return None
        try:
            return await self.directory.ready(self._fetch_directory)
        except CreditnetError as exc:
            raise DirectoryRefused(exc) from None

    def sign_query(
        self,
        uscc: str,
        consent: envelope_pb2.SignedEnvelope | Path | str,
        purpose: Purpose | str,
        *,
        categories: Sequence[Category | str] = (),
        cities: Sequence[City | str] = (),
        suite: AnswerSuite = DEFAULT_SUITE,
    ) -> envelope_pb2.SignedEnvelope:
        """Sign a query whose answers are sealed to a fresh key of `suite`, kept in this process."""
        consent_env = (
            consent if isinstance(consent, envelope_pb2.SignedEnvelope) else load_envelope(Path(consent))
        )
        return query_mod.build(
            self.identity,
            consent_env,
            enterprise_uscc=uscc,
            purpose=purpose if isinstance(purpose, Purpose) else Purpose.parse(purpose),
            categories=tuple(c if isinstance(c, Category) else Category.parse(c) for c in categories),
            cities=tuple(c if isinstance(c, City) else City.parse(c) for c in cities),
            answer_key=AnswerKeyPair.generate(suite),
        )

    async def query(
        self,
        uscc: str,
        consent: envelope_pb2.SignedEnvelope | Path | str,
        purpose: Purpose | str,
        *,
        categories: Sequence[Category | str] = (),
        cities: Sequence[City | str] = (),
        timeout: float | None = None,
        exhaustive: bool = False,
        suite: AnswerSuite = DEFAULT_SUITE,
    ) -> Report:
        """Sign and send a query; `exhaustive` asks every city in scope, whatever the routing.

        The answers come sealed to a fresh key of `suite` (docs/protocol.md, "Sealed answers").
        """
        env = self.sign_query(uscc, consent, purpose, categories=categories, cities=cities, suite=suite)
        return await self.send(env, timeout=timeout, exhaustive=exhaustive)

    async def send(
        self,
        query_env: envelope_pb2.SignedEnvelope,
        *,
        timeout: float | None = None,
        exhaustive: bool = False,
    ) -> Report:
        """Send a signed query; retried (on the next replica, if several) while the aggregator is unreachable.

        A retry resends the same envelope: nodes answer a query id at most
        once (a node asked again re-sends the answer it gave), so a retry can
        never be answered twice. With `exhaustive` the
        aggregator asks every city in scope, so that each gives its signed
        word; otherwise it asks only the cities that may hold records
        (docs/protocol.md, "Routing") and reports the others NOT_ASKED.
        """
        budget = timeout or self.timeout
        deadline = time.monotonic() + budget
        # Fail closed before anything leaves: no fresh directory, no query.
        await self.ready_directory()
        query_id = _query_id(query_env)
        # One client span for the query, retries included: the servers' spans
        # of every attempt hang under it.
        request = aggregator_pb2.FederatedQueryRequest(query=query_env, exhaustive=exhaustive)
        with query_scope(query_id), client_span(FEDERATED_QUERY, AGGREGATOR_SERVER_NAME) as metadata:

            def headers(remaining: float) -> list[tuple[str, str | bytes]]:
                # gRPC rounds the deadline it sends up (10 s goes out as
                # 10.1 s), and the answer needs time to come back: the
                # aggregator is told exactly when to have answered, so
                # that the sections that arrived are never lost.
                return [*metadata, budget_metadata(remaining - answer_reserve(remaining))]

            while True:
                try:
                    resp = await self.replicas.unary(
                        FEDERATED_QUERY,
                        request,
                        aggregator_pb2.FederatedQueryResponse,
                        deadline,
                        metadata=headers,
                    )
                    break
                except grpc.aio.AioRpcError as exc:
                    remaining = deadline - time.monotonic()
                    hint = _retry_after(exc)
                    if hint is not None and remaining - hint > 0.05:
                        # Turned away before any node saw the query (rate or
                        # load): the server said when to come back.
                        log.info("the aggregator is busy for this bank; retrying in %.2f s", hint)
                        await asyncio.sleep(hint)
                        continue
                    raise QueryRefused(exc.code(), exc.details() or "") from None
        return self.verify_response(query_env, resp, exhaustive=exhaustive)

    def verify_response(
        self,
        query_env: envelope_pb2.SignedEnvelope,
        resp: aggregator_pb2.FederatedQueryResponse,
        *,
        exhaustive: bool = False,
    ) -> Report:
        query = query_pb2.CreditQuery()
        query.ParseFromString(query_env.payload)
        # The cities the network has: the directory's members. Without a
        # directory and with no city named in the query or its consent, the
        # bank cannot know its scope and takes the cities the aggregator answers for.
        members: set[City] | None = None
        version = 0
        directory: Directory | None = None
        if self.directory is not None:
            try:
                directory = self.directory.require_fresh()
            except CreditnetError as exc:
                raise DirectoryRefused(exc) from None
            members, version = set(self.directory.member_cities(directory)), directory.version

        def check(raw: aggregator_pb2.CitySection) -> Section:
            return verify_section(self.verifier, raw, query_env, query, directory, exhaustive=exhaustive)

        sections = account(
            resp.sections,
            scope_cities(query, members or ()),
            check,
            members=members,
            directory_version=version,
        )
        return merge(query.query_id, query.enterprise_uscc, Purpose.from_proto(query.purpose), sections)

    async def nodes(self, *, timeout: float | None = None) -> aggregator_pb2.ListNodesResponse:
        return await self.replicas.unary(
            LIST_NODES,
            aggregator_pb2.ListNodesRequest(),
            aggregator_pb2.ListNodesResponse,
            time.monotonic() + (timeout or self.timeout),
        )

    async def query_node(
        self,
        endpoint: str,
        city: City,
        query_env: envelope_pb2.SignedEnvelope,
        *,
        timeout: float | None = None,
    ) -> node_pb2.QueryResponse:
        """Ask one node directly, bypassing the aggregator (nodes verify everything themselves)."""
        channel = secure_channel(endpoint, self.identity, self.trust, node_server_name(city))
        async with channel:
            stub = node_pb2_grpc.CityNodeServiceStub(channel)
            resp: node_pb2.QueryResponse = await stub.Query(
                node_pb2.QueryRequest(query=query_env), timeout=timeout or self.timeout
            )
            return resp


def _query_id(query_env: envelope_pb2.SignedEnvelope) -> str | None:
    """The query id, to label the call; None when the payload is not a query (the server says why)."""
    try:
        return parse_query_id(query_pb2.CreditQuery.FromString(query_env.payload).query_id)
    except DecodeError:
        return None


def _retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    """Seconds to wait before retrying a RESOURCE_EXHAUSTED call that carries a retry hint, else None."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return int(text) / 1000 if text.isdigit() else None
    return None
