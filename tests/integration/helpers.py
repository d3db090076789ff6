"""Small helpers the integration tests share."""

from __future__ import annotations

import datetime as dt

import grpc

from creditnet import consent as consent_mod
from creditnet import query as query_mod
from creditnet.channels import secure_channel
from creditnet.dates import date_to_proto, utcnow
from creditnet.domain import ALL_CATEGORIES, Category, City, Purpose
from creditnet.envelope import digest
from creditnet.network import DEMO_BANK, NetworkLayout
from creditnet.pki import Identity, TrustStore, node_server_name
from creditnet.sealing import open_sealed
from creditnet.v2 import envelope_pb2, node_pb2, node_pb2_grpc, records_pb2


def consent(
    layout: NetworkLayout,
    *,
    bank: str = DEMO_BANK,
    purpose: Purpose = Purpose.LOAN_APPLICATION,
    categories: tuple[Category, ...] = ALL_CATEGORIES,
    cities: tuple[City, ...] = (),
    max_uses: int = 0,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    enterprise: Identity | None = None,
    uscc: str | None = None,
) -> envelope_pb2.SignedEnvelope:
    now = utcnow()
    terms = consent_mod.ConsentTerms(
        enterprise_uscc=uscc or layout.demo_enterprise,
        bank_code=bank,
        purpose=purpose,
        categories=categories,
        cities=cities,
        data_from=dt.date(2000, 1, 1),
        data_to=now.date(),
        not_before=not_before or now - dt.timedelta(minutes=1),
        not_after=not_after or now + dt.timedelta(days=1),
        max_uses=max_uses,
    )
    signer = enterprise or layout.enterprise()
    if uscc is not None and enterprise is not None and enterprise.role.subject != uscc:
        # Forge deliberately: sign terms naming another enterprise.
        from creditnet.envelope import CONSENT_TYPE, sign

        return sign(CONSENT_TYPE, terms.to_proto().SerializeToString(), signer)
    return consent_mod.grant(signer, terms)


async def ask_node(
    layout: NetworkLayout,
    city: City,
    query: envelope_pb2.SignedEnvelope,
    caller: Identity,
    trust: TrustStore,
    timeout: float = 5.0,
) -> node_pb2.QueryResponse:
    async with secure_channel(layout.node_endpoint(city), caller, trust, node_server_name(city)) as ch:
        return await node_pb2_grpc.CityNodeServiceStub(ch).Query(
            node_pb2.QueryRequest(query=query), timeout=timeout
        )


async def node_refusal(
    layout: NetworkLayout, city: City, query: envelope_pb2.SignedEnvelope, caller: Identity, trust: TrustStore
) -> tuple[grpc.StatusCode, str]:
    try:
        await ask_node(layout, city, query, caller, trust)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError(f"the {city.value} node answered a query it should refuse")


def opened_answer(
    resp: node_pb2.QueryResponse, query: envelope_pb2.SignedEnvelope, city: City
) -> envelope_pb2.SignedEnvelope:
    """A node's signed answer, opened with the key this process made for `query` (it was built here)."""
    pair = query_mod.answer_key_for(query)
    assert pair is not None, "the query was not built in this process"
    return open_sealed(pair, resp.sealed_answer, digest(query.payload), city)


def utility_record(uscc: str, city: City, record_id: str) -> records_pb2.CreditRecord:
    """A paid electricity bill of `uscc` in `city`, dated 2025-05-31."""
    day = dt.date(2025, 5, 31)
    return records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=uscc,
        city=city.proto,
        source="a utility",
        record_date=date_to_proto(day),
        utility=records_pb2.UtilityRecord(
            kind=records_pb2.UTILITY_KIND_ELECTRICITY,
            account_id="R-1",
            period_start=date_to_proto(dt.date(2025, 5, 1)),
            period_end=date_to_proto(day),
            amount_due_fen=500,
            amount_paid_fen=500,
        ),
    )
