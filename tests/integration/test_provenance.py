"""Records signed at their source, end to end: what a provider signs is what a bank verifies.

A node that invents, alters or mis-dates a record in its own database is
caught by the bank SDK; a batch its provider's signature does not cover is
refused at ingestion and nothing of it is stored; records stored without a
signature are withheld, never mixed in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable

import grpc
import pytest
import sqlalchemy as sa

from creditnet import pilot, provenance
from creditnet import uscc as uscc_mod
from creditnet.dates import date_to_proto
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import RECORD_BATCH_TYPE, sign
from creditnet.network import DEMO_BANK, InProcessNetwork, NetworkLayout
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.provider import submit_records
from creditnet.store.models import RECORDS
from creditnet.v2 import provenance_pb2, records_pb2
from creditnet_bank import BankClient
from creditnet_bank.verify import Section, SectionStatus
from tests.integration.helpers import consent
from tests.integration.provider_wire import message, owned, signed_message, submit_raw

# Enterprises of Hefei no other test knows: their records are this module's own.
_RNG = random.Random(20261207)
HONEST, TAMPERED, LEGACY = (uscc_mod.make_uscc(_RNG, pilot.HEFEI, serial=880_000 + i) for i in range(3))


def tax(record_id: str, uscc: str, year: int = 2024) -> records_pb2.CreditRecord:
    return records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=uscc,
        city=pilot.HEFEI.proto,
        source="国家税务总局合肥市税务局",
        record_date=date_to_proto(dt.date(year + 1, 4, 30)),
        tax=records_pb2.TaxRecord(year=year, grade=records_pb2.TAX_GRADE_A, tax_paid_fen=1000),
    )


async def hefei_section(layout: NetworkLayout, ca: CertificateAuthority, uscc: str) -> Section:
    """The Hefei section of a bank's verified report on `uscc`, under the enterprise's own consent."""
    enterprise = issue_identity(ca, Role.enterprise(uscc))
    env = consent(layout, enterprise=enterprise, uscc=uscc, cities=(pilot.HEFEI,))
    async with BankClient.from_network(layout.root / "network.json", DEMO_BANK) as bank:
        report = await bank.query(uscc, env, Purpose.LOAN_APPLICATION)
    (section,) = [s for s in report.sections if s.city == pilot.HEFEI]
    return section


async def test_an_honest_batch_round_trips_and_verifies_through_the_aggregator(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore
) -> None:
    recs = [tax(f"honest-{y}", HONEST, y) for y in (2021, 2022, 2023)]
    await submit_records(layout.node_endpoint(pilot.HEFEI), layout.provider(pilot.HEFEI), trust, recs)
    section = await hefei_section(layout, ca, HONEST)
    assert section.status is SectionStatus.OK, section.reason
    assert sorted(r.record_id for r in section.records) == [r.record_id for r in recs]
    assert all(r.provider_id == "provider:demo-data-exchange" for r in section.records)
    assert section.withheld_unsigned == 0


def _engine(network: InProcessNetwork) -> sa.Engine:
    return network.nodes[pilot.HEFEI].store.store.engine


def _stored(network: InProcessNetwork, record_id: str) -> sa.Row[tuple[bytes, int, int, bytes, dt.date]]:
    with _engine(network).connect() as conn:
        return conn.execute(
            sa.select(
                RECORDS.c.payload,
                RECORDS.c.batch,
                RECORDS.c.leaf_index,
                RECORDS.c.inclusion_path,
                RECORDS.c.record_date,
            ).where(RECORDS.c.record_id == record_id)
        ).one()


def _mis_date(network: InProcessNetwork, record_id: str) -> None:
    payload = _stored(network, record_id).payload
    rec = records_pb2.CreditRecord.FromString(payload)
    rec.record_date.year -= 1
    with _engine(network).begin() as conn:
        conn.execute(
            sa.update(RECORDS)
            .where(RECORDS.c.record_id == record_id)
            .values(payload=rec.SerializeToString(), record_date=dt.date(rec.record_date.year, 4, 30))
        )


def _invent(network: InProcessNetwork, record_id: str) -> None:
    # A record no provider signed, borrowing a genuine record's batch and proof.
    genuine = _stored(network, record_id)
    rec = records_pb2.CreditRecord.FromString(genuine.payload)
    rec.record_id = "invented-by-the-node"
    rec.tax.arrears_fen = 5_000_000
    with _engine(network).begin() as conn:
        conn.execute(
            sa.insert(RECORDS).values(
                provider_id=rec.provider_id,
                record_id=rec.record_id,
                uscc=rec.enterprise_uscc,
                category="tax",
                city=rec.city,
                record_date=dt.date(2024, 4, 30),
                source=rec.source,
                payload=rec.SerializeToString(),
                batch=genuine.batch,
                leaf_index=genuine.leaf_index,
                inclusion_path=genuine.inclusion_path,
            )
        )


@pytest.mark.parametrize("tamper", [_mis_date, _invent], ids=["mis-dated", "invented"])
async def test_a_record_the_node_altered_or_invented_in_its_database_makes_the_section_invalid(
    network: InProcessNetwork,
    layout: NetworkLayout,
    ca: CertificateAuthority,
    trust: TrustStore,
    tamper: Callable[[InProcessNetwork, str], None],
) -> None:
    recs = [tax(f"tamper-{y}", TAMPERED, y) for y in (2022, 2023)]
    await submit_records(layout.node_endpoint(pilot.HEFEI), layout.provider(pilot.HEFEI), trust, recs)
    before = {r: _stored(network, r) for r in ("tamper-2022", "tamper-2023")}
    assert (await hefei_section(layout, ca, TAMPERED)).status is SectionStatus.OK
    tamper(network, "tamper-2023")
    try:
        section = await hefei_section(layout, ca, TAMPERED)
        assert section.status is SectionStatus.INVALID
        assert "not in its provider's signed batch" in section.reason and "record " in section.reason
        assert not section.records
    finally:
        with _engine(network).begin() as conn:
            conn.execute(sa.delete(RECORDS).where(RECORDS.c.record_id == "invented-by-the-node"))
            for record_id, row in before.items():
                conn.execute(
                    sa.update(RECORDS)
                    .where(RECORDS.c.record_id == record_id)
                    .values(payload=row.payload, record_date=row.record_date)
                )
    assert (await hefei_section(layout, ca, TAMPERED)).status is SectionStatus.OK


async def test_records_stored_without_a_signature_are_withheld_until_resubmitted_signed(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore
) -> None:
    # As a store filled before records were signed holds them.
    old = tax("legacy-2023", LEGACY, 2023)
    await network.nodes[pilot.HEFEI].store.ingest([old], "provider:demo-data-exchange")
    section = await hefei_section(layout, ca, LEGACY)
    assert section.status is SectionStatus.NO_RECORDS and not section.records
    assert section.withheld_unsigned == 1
    # Its provider submits it again, signed: now it is disclosed, and verified.
    await submit_records(layout.node_endpoint(pilot.HEFEI), layout.provider(pilot.HEFEI), trust, [old])
    section = await hefei_section(layout, ca, LEGACY)
    assert section.status is SectionStatus.OK and [r.record_id for r in section.records] == ["legacy-2023"]
    assert section.withheld_unsigned == 0


def _provider(
    ca: CertificateAuthority, subject: str, *categories: Category, city: City = pilot.HEFEI
) -> Identity:
    return issue_identity(ca, Role.provider(city, subject, categories or (Category.TAX,)))


def _forged(provider: Identity, raws: list[bytes]) -> bytes:
    manifest = provenance.sign_batch(provider, raws)
    body = provenance_pb2.RecordBatch.FromString(manifest.payload)
    body.record_count += 1
    manifest.payload = body.SerializeToString()
    return message([*raws, raws[0]], manifest)


def _resigned(
    provider: Identity, raws: list[bytes], change: Callable[[provenance_pb2.RecordBatch], None]
) -> bytes:
    body = provenance_pb2.RecordBatch.FromString(provenance.sign_batch(provider, raws).payload)
    change(body)
    return message(raws, sign(RECORD_BATCH_TYPE, body.SerializeToString(), provider))


def _set_city(body: provenance_pb2.RecordBatch) -> None:
    body.city = pilot.NANJING.proto


@pytest.mark.parametrize(
    ("case", "code", "rule"),
    [
        ("unsigned", grpc.StatusCode.INVALID_ARGUMENT, "batch.unsigned"),
        ("signed by a provider of another city", grpc.StatusCode.PERMISSION_DENIED, "batch.signer"),
        ("signed by another provider", grpc.StatusCode.PERMISSION_DENIED, "batch.signer"),
        ("signed by a certificate without the category", grpc.StatusCode.PERMISSION_DENIED, "batch.category"),
        ("a manifest for another city", grpc.StatusCode.PERMISSION_DENIED, "batch.city"),
        ("a forged manifest", grpc.StatusCode.UNAUTHENTICATED, "batch.signature"),
        ("a root over other records", grpc.StatusCode.INVALID_ARGUMENT, "batch.root"),
        ("a count that is not the batch's", grpc.StatusCode.INVALID_ARGUMENT, "batch.count"),
        ("a record naming another provider", grpc.StatusCode.PERMISSION_DENIED, "batch.provider_id"),
    ],
)
async def test_a_batch_its_providers_signature_does_not_cover_is_refused_and_nothing_is_stored(
    network: InProcessNetwork,
    layout: NetworkLayout,
    ca: CertificateAuthority,
    trust: TrustStore,
    case: str,
    code: grpc.StatusCode,
    rule: str,
) -> None:
    subject = "refused-" + hashlib.sha256(case.encode()).hexdigest()[:8]
    caller = _provider(ca, subject, Category.TAX, Category.UTILITY)
    ids = [f"{subject}-{i}" for i in range(3)]
    raws = owned(caller, *(tax(i, HONEST) for i in ids))
    match case:
        case "unsigned":
            sent = message(raws, None)
        case "signed by a provider of another city":
            sent = signed_message(_provider(ca, subject, city=pilot.SHANGHAI), raws)
        case "signed by another provider":
            other = _provider(ca, "someone-else")
            sent = signed_message(other, owned(other, *(tax(i, HONEST) for i in ids)))
        case "signed by a certificate without the category":
            sent = signed_message(_provider(ca, subject, Category.UTILITY), raws)
        case "a manifest for another city":
            sent = _resigned(caller, raws, _set_city)
        case "a forged manifest":
            sent = _forged(caller, raws)
        case "a root over other records":
            sent = message(raws, provenance.sign_batch(caller, [raws[1], raws[0], raws[2]]))
        case "a count that is not the batch's":
            sent = message(raws[:2], provenance.sign_batch(caller, raws))
        case "a record naming another provider":
            recs = [tax(i, HONEST) for i in ids]
            raws = owned(caller, *recs)
            recs[1].provider_id = "provider:someone-else"
            raws[1] = recs[1].SerializeToString()
            sent = signed_message(caller, raws)
        case _:
            raise AssertionError(case)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit_raw(layout, caller, trust, sent)
    assert err.value.code() == code
    assert (err.value.details() or "").startswith(f"{rule}: ")
    stored = await network.nodes[pilot.HEFEI].store.find_records(
        HONEST, [Category.TAX], dt.date(2000, 1, 1), dt.date(2030, 1, 1)
    )
    assert not {r.record_id for r in stored} & set(ids)
