"""A provider's batch read off the wire: sliced on the event loop, decoded and checked off it."""

from __future__ import annotations

from creditnet import pilot, provenance
from creditnet.batches import MAX_BATCH_RECORDS, Batch, read_batch
from creditnet.domain import ALL_CATEGORIES
from creditnet.envelope import EnvelopeVerifier
from creditnet.node.service import UNDECODABLE_RECORD, _screen
from creditnet.pki import CertificateAuthority, Role, TrustStore, issue_identity
from creditnet.v2 import node_pb2, records_pb2
from creditnet_devkit import synthetic

CA = CertificateAuthority.create()
PROVIDER = issue_identity(CA, Role.provider(pilot.HEFEI, "exchange", ALL_CATEGORIES))


def hefei_records(n: int) -> list[records_pb2.CreditRecord]:
    out: list[records_pb2.CreditRecord] = []
    index = 0
    while len(out) < n:
        for item in synthetic.enterprise_items(3, pilot.HEFEI, index):
            if isinstance(item, records_pb2.CreditRecord):
                out.append(item)
        index += 1
    return out[:n]


def test_reading_a_batch_only_slices_it_and_decoding_marks_what_does_not_parse() -> None:
    recs = hefei_records(3)
    raw = node_pb2.SubmitRecordsRequest(records=recs).SerializeToString()
    # A record whose text is not UTF-8: the second record's bytes with its id broken.
    broken = bytearray(recs[1].SerializeToString())
    at = broken.index(recs[1].record_id.encode())
    broken[at] = 0xFF
    tampered = raw.replace(recs[1].SerializeToString(), bytes(broken))
    batch = read_batch(tampered)
    assert batch.count == 3 and len(batch.raw) == 3 and batch.parsed is None
    decoded = batch.decode()
    assert decoded[0] == recs[0] and decoded[1] is None and decoded[2] == recs[2]


def test_an_oversized_batch_is_counted_but_nothing_of_it_is_kept() -> None:
    one = node_pb2.SubmitRecordsRequest(records=hefei_records(1)).SerializeToString()
    batch = read_batch(one * (MAX_BATCH_RECORDS + 1))
    assert batch.oversized and batch.count == MAX_BATCH_RECORDS + 1 and batch.raw == []


def test_reading_a_batch_keeps_the_manifest_and_the_records_bytes_as_sent() -> None:
    recs = hefei_records(2)
    raws = provenance.encode(recs)
    manifest = provenance.sign_batch(PROVIDER, raws)
    batch = read_batch(node_pb2.SubmitRecordsRequest(records=recs, manifest=manifest).SerializeToString())
    assert batch.manifest == manifest and batch.records_bytes() == raws


def test_screening_keeps_the_valid_records_and_names_each_rejection_by_its_place_in_the_stream() -> None:
    recs = hefei_records(3)
    for rec in recs:
        rec.provider_id = provenance.provider_id_of(PROVIDER.role)
    recs[2].record_id = ""
    batch = Batch(raw=[r.SerializeToString() for r in recs] + [b"\xff\xff"], count=4)
    batch.manifest = provenance.sign_batch(PROVIDER, batch.raw)
    checked, signed = provenance.verify_batch(
        EnvelopeVerifier(TrustStore(CA.cert)),
        batch.manifest,
        batch.raw,
        city=pilot.HEFEI,
        caller=PROVIDER.role,
    )
    screened = _screen(batch, set(ALL_CATEGORIES), pilot.HEFEI, first=10, checked=checked, signed=signed)
    assert screened.valid == recs[:2] and screened.leaves == [0, 1]
    assert [(at, reason == UNDECODABLE_RECORD) for at, _, reason in screened.rejections] == [
        (12, False),
        (13, True),
    ]
    assert Batch.of(node_pb2.SubmitRecordsRequest(records=recs[:2])).decode() == recs[:2]
