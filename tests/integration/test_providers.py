"""Data providers submit records over a client stream, limited by their certificate."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from creditnet import pilot
from creditnet import uscc as uscc_mod
from creditnet.batches import MAX_BATCH_RECORDS
from creditnet.channels import secure_channel
from creditnet.dates import date_to_proto
from creditnet.domain import Category, City
from creditnet.network import InProcessNetwork, NetworkLayout
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity, node_server_name
from creditnet.provider import submit_records
from creditnet.v2 import node_pb2, records_pb2
from tests.integration.provider_wire import owned, signed_message, submit_raw


def utility(record_id: str, uscc: str, city: City = pilot.HEFEI, paid: int = 100) -> records_pb2.CreditRecord:
    return records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=uscc,
        city=city.proto,
        source="国网合肥供电公司",
        record_date=date_to_proto(dt.date(2025, 6, 30)),
        utility=records_pb2.UtilityRecord(
            kind=records_pb2.UTILITY_KIND_ELECTRICITY,
            account_id="HF-0001",
            period_start=date_to_proto(dt.date(2025, 6, 1)),
            period_end=date_to_proto(dt.date(2025, 6, 30)),
            amount_due_fen=100,
            amount_paid_fen=paid,
        ),
    )


def tax(record_id: str, uscc: str) -> records_pb2.CreditRecord:
    return records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=uscc,
        city=pilot.HEFEI.proto,
        source="国家税务总局合肥市税务局",
        record_date=date_to_proto(dt.date(2025, 4, 30)),
        tax=records_pb2.TaxRecord(year=2024, grade=records_pb2.TAX_GRADE_A, tax_paid_fen=1000),
    )


@pytest.fixture
def uscc(layout: NetworkLayout) -> str:
    return layout.demo_enterprise


async def test_provider_submits_its_own_category_idempotently(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore, uscc: str
) -> None:
    provider = issue_identity(ca, Role.provider(pilot.HEFEI, "state-grid-340100", [Category.UTILITY]))
    recs = [utility(f"sg-{i}", uscc) for i in range(25)]
    bad = utility("sg-bad", "91340100XXXXXXXXX1")
    endpoint = layout.node_endpoint(pilot.HEFEI)
    first = await submit_records(endpoint, provider, trust, [*recs, bad], batch_size=10)
    assert (first.received, first.accepted, first.duplicates, first.rejected, first.batches) == (
        26,
        25,
        0,
        1,
        3,
    )
    assert first.rejections[0].record_id == "sg-bad" and first.rejections[0].index == 25
    assert "uscc" in first.rejections[0].reason.lower()
    again = await submit_records(endpoint, provider, trust, recs, batch_size=10)
    assert (again.accepted, again.duplicates) == (0, 25)
    stored = await network.nodes[pilot.HEFEI].store.find_records(
        uscc, [Category.UTILITY], dt.date(2025, 6, 1), dt.date(2025, 6, 30)
    )
    mine = [r for r in stored if r.record_id.startswith("sg-")]
    assert len(mine) == 25
    assert all(r.provider_id == "provider:state-grid-340100" for r in mine)


async def test_provider_cannot_submit_other_categories(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore, uscc: str
) -> None:
    provider = issue_identity(ca, Role.provider(pilot.HEFEI, "state-grid-340100", [Category.UTILITY]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit_records(layout.node_endpoint(pilot.HEFEI), provider, trust, [tax("t-1", uscc)])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (err.value.details() or "").startswith("provider.category")
    stored = await network.nodes[pilot.HEFEI].store.find_records(
        uscc, [Category.TAX], dt.date(2025, 1, 1), dt.date(2025, 12, 31)
    )
    assert all(r.record_id != "t-1" for r in stored)


async def test_provider_of_another_city_is_refused(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore, uscc: str
) -> None:
    nanjing = issue_identity(ca, Role.provider(pilot.NANJING, "nj-water", [Category.UTILITY]))
    from creditnet.v2 import node_pb2, node_pb2_grpc

    async with secure_channel(
        layout.node_endpoint(pilot.HEFEI), nanjing, trust, node_server_name(pilot.HEFEI)
    ) as ch:
        stub = node_pb2_grpc.CityNodeServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitRecords(
                iter([node_pb2.SubmitRecordsRequest(records=[utility("x", uscc)])]), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A Hefei provider cannot smuggle records of another city into the Hefei node either.
    hefei = issue_identity(ca, Role.provider(pilot.HEFEI, "sg", [Category.UTILITY]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit_records(
            layout.node_endpoint(pilot.HEFEI), hefei, trust, [utility("y", uscc, city=pilot.NANJING)]
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_banks_cannot_submit_records(
    network: InProcessNetwork, layout: NetworkLayout, trust: TrustStore, uscc: str
) -> None:
    from creditnet.v2 import node_pb2, node_pb2_grpc

    async with secure_channel(
        layout.node_endpoint(pilot.HEFEI), layout.bank(), trust, node_server_name(pilot.HEFEI)
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node_pb2_grpc.CityNodeServiceStub(ch).SubmitRecords(
                iter([node_pb2.SubmitRecordsRequest(records=[utility("z", uscc)])]), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert uscc_mod.is_valid(uscc)


async def test_an_undecodable_record_is_rejected_by_its_position_and_the_rest_of_its_batch_is_stored(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore, uscc: str
) -> None:
    provider = issue_identity(ca, Role.provider(pilot.HEFEI, "grid-raw", [Category.UTILITY]))
    marker = "RAW-MARK-0"
    raws = owned(provider, *[utility(f"raw-{i}", uscc) for i in range(3)], utility(marker, uscc))
    # The record id's bytes made invalid UTF-8, as a client with its own encoder may send them
    # (and its provider signed them so).
    raws[3] = raws[3].replace(marker.encode(), b"\xff\xfe" + marker.encode()[2:])
    broken = signed_message(provider, raws)
    summary = node_pb2.SubmitRecordsResponse.FromString(await submit_raw(layout, provider, trust, broken))
    assert (summary.received, summary.accepted, summary.rejected) == (4, 3, 1)
    assert summary.rejections[0].index == 3 and "CreditRecord" in summary.rejections[0].reason
    stored = await network.nodes[pilot.HEFEI].store.find_records(
        uscc, [Category.UTILITY], dt.date(2025, 6, 1), dt.date(2025, 6, 30)
    )
    assert {r.record_id for r in stored if r.record_id.startswith("raw-")} == {"raw-0", "raw-1", "raw-2"}


async def test_a_batch_of_more_records_than_the_maximum_is_refused_and_earlier_batches_stay(
    network: InProcessNetwork, layout: NetworkLayout, ca: CertificateAuthority, trust: TrustStore, uscc: str
) -> None:
    provider = issue_identity(ca, Role.provider(pilot.HEFEI, "grid-big", [Category.UTILITY]))
    first = signed_message(provider, owned(provider, utility("big-0", uscc)))
    # Empty records: two bytes each on the wire, many under the message size limit.
    oversized = b"\x0a\x00" * (MAX_BATCH_RECORDS + 1)
    # A valid batch after the refused one is read, not stored: the refusal
    # ends the stream's ingestion, and comes once the provider has sent it all.
    after = signed_message(provider, owned(provider, utility("big-after", uscc)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit_raw(layout, provider, trust, first, oversized, after)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("provider.batch_size: ")
    stored = await network.nodes[pilot.HEFEI].store.find_records(
        uscc, [Category.UTILITY], dt.date(2025, 6, 1), dt.date(2025, 6, 30)
    )
    assert "big-0" in {r.record_id for r in stored}
    assert "big-after" not in {r.record_id for r in stored}
    # As many as the maximum is one batch like any other.
    full = node_pb2.SubmitRecordsResponse.FromString(
        await submit_raw(layout, provider, trust, signed_message(provider, [b""] * MAX_BATCH_RECORDS))
    )
    assert (full.received, full.rejected) == (MAX_BATCH_RECORDS, MAX_BATCH_RECORDS)
    with pytest.raises(ValueError, match="batch"):
        await submit_records(
            layout.node_endpoint(pilot.HEFEI), provider, trust, [], batch_size=MAX_BATCH_RECORDS + 1
        )
