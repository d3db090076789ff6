"""Test vectors for records signed at their source (docs/protocol.md, "Records signed at their source").

Written with the other vectors by ``python -m creditnet_devkit.vectors`` as
``provenance.json``: a provider's signed RecordBatch manifest over four
records (their exact bytes), every leaf hash and inclusion proof, and
disclosed records a bank must refuse, each with the reason. Keys and
signatures are deterministic, as in the other vectors. The answer of
``envelopes.json`` discloses record 0 of this batch.

The private keys in the vectors are public knowledge: never trust them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from creditnet import pilot
from creditnet.chain.merkle import leaf_hash
from creditnet.domain import Category, City
from creditnet.envelope import RECORD_BATCH_TYPE, digest, pae, sign
from creditnet.pki import Role
from creditnet.provenance import encode, sign_batch, tree
from creditnet.v2 import common_pb2, envelope_pb2, provenance_pb2, records_pb2

__all__ = [
    "Batch",
    "Refused",
    "batch_records",
    "make_batch",
    "provider_roles",
    "refused_cases",
    "render",
]

BATCH_ID: Final = "7d1f0a52-93c4-4b6e-8f20-1c9e5b3a7d64"
PROVIDER_ID: Final = "340100-exchange"
# The categories the provider's certificate covers: the batch's loan record is outside them.
PROVIDER_CATEGORIES: Final = (Category.UTILITY, Category.TAX)
OTHER_USCC: Final = "91310000MA1FL8XQ37"


@dataclass(frozen=True, slots=True)
class Batch:
    provider: Any  # core.Participant
    other_city_provider: Any
    records: list[records_pb2.CreditRecord]
    raw: list[bytes]
    envelope: envelope_pb2.SignedEnvelope
    root: bytes
    paths: list[bytes]

    def proven(self, index: int, batch: int = 0) -> provenance_pb2.ProvenRecord:
        path = self.paths[index]
        return provenance_pb2.ProvenRecord(
            record=self.raw[index],
            batch=batch,
            leaf_index=index,
            inclusion_path=[path[i : i + 32] for i in range(0, len(path), 32)],
        )


def _record(record_id: str, day: common_pb2.Date, *, uscc: str, **detail: Any) -> records_pb2.CreditRecord:
    return records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=uscc,
        city=pilot.HEFEI.proto,
        source="State Taxation Administration, Hefei",
        provider_id="provider:" + PROVIDER_ID,
        record_date=day,
        **detail,
    )


def batch_records(enterprise_uscc: str) -> list[records_pb2.CreditRecord]:
    """0: the record the answer vector discloses; 1: dated before the consent's period; 2: about
    another enterprise; 3: a utility record (a category the answer of envelopes.json does not
    disclose); 4: a loan record, outside the provider's categories."""
    tax = records_pb2.TaxRecord(
        year=2024, grade=records_pb2.TAX_GRADE_A, tax_paid_fen=123_456_700, arrears_fen=0
    )
    old_tax = records_pb2.TaxRecord(
        year=2020, grade=records_pb2.TAX_GRADE_B, tax_paid_fen=98_000_000, arrears_fen=0
    )
    loan = records_pb2.LoanRecord(
        lender="Bank of Hefei",
        contract_id="HF-LOAN-0001",
        principal_fen=100_000_000,
        balance_fen=40_000_000,
        status=records_pb2.LOAN_STATUS_CURRENT,
    )
    return [
        _record(
            "tax-2024-91340100MA2N0U3E6T",
            common_pb2.Date(year=2025, month=4, day=30),
            uscc=enterprise_uscc,
            tax=tax,
        ),
        _record(
            "tax-2020-91340100MA2N0U3E6T",
            common_pb2.Date(year=2021, month=4, day=30),
            uscc=enterprise_uscc,
            tax=old_tax,
        ),
        _record(
            "tax-2024-91310000MA1FL8XQ37",
            common_pb2.Date(year=2025, month=4, day=30),
            uscc=OTHER_USCC,
            tax=tax,
        ),
        _record(
            "utility-HF-0001-2025-04",
            common_pb2.Date(year=2025, month=4, day=30),
            uscc=enterprise_uscc,
            utility=records_pb2.UtilityRecord(
                kind=records_pb2.UTILITY_KIND_ELECTRICITY,
                account_id="HF-0001",
                period_start=common_pb2.Date(year=2025, month=4, day=1),
                period_end=common_pb2.Date(year=2025, month=4, day=30),
                amount_due_fen=1_234_500,
                amount_paid_fen=1_234_500,
            ),
        ),
        _record(
            "loan-HF-LOAN-0001", common_pb2.Date(year=2025, month=3, day=31), uscc=enterprise_uscc, loan=loan
        ),
    ]


def provider_roles() -> tuple[Role, Role]:
    """The batch's signer, a provider of Hefei, and a provider of Shanghai."""
    return (
        Role.provider(pilot.HEFEI, PROVIDER_ID, PROVIDER_CATEGORIES),
        Role.provider(pilot.SHANGHAI, "310000-exchange", PROVIDER_CATEGORIES),
    )


def make_batch(cast: Any, enterprise_uscc: str, signed_at: dt.datetime) -> Batch:
    provider, other = cast.provider, cast.provider_other_city
    recs = batch_records(enterprise_uscc)
    raw = encode(recs)
    env = sign_batch(provider.identity, raw, batch_id=BATCH_ID, now=signed_at)
    root, paths = tree(raw)
    return Batch(provider, other, recs, raw, env, root, paths)


@dataclass(frozen=True, slots=True)
class Refused:
    name: str
    description: str
    city: City
    batch: envelope_pb2.SignedEnvelope
    proven: Any
    reason: str


def _manifest(batch: Batch) -> provenance_pb2.RecordBatch:
    return provenance_pb2.RecordBatch.FromString(batch.envelope.payload)


def refused_cases(batch: Batch, enterprise_uscc: str) -> list[Refused]:
    """Disclosed records a bank must refuse, with words its reason contains."""
    del enterprise_uscc
    altered = batch.proven(0)
    # The record's date moved by a year: the node mis-dated it.
    altered.record = altered.record.replace(b"\x08\xe9\x0f", b"\x08\xe8\x0f", 1)
    assert altered.record != batch.raw[0]
    invented = provenance_pb2.ProvenRecord()
    invented.CopyFrom(batch.proven(0))
    rec = records_pb2.CreditRecord.FromString(batch.raw[0])
    rec.record_id = "tax-invented"
    invented.record = rec.SerializeToString(deterministic=True)
    wrong_index = batch.proven(0)
    wrong_index.leaf_index = 1
    forged = envelope_pb2.SignedEnvelope()
    forged.CopyFrom(batch.envelope)
    manifest = _manifest(batch)
    manifest.record_count += 1
    forged.payload = manifest.SerializeToString(deterministic=True)
    other_city = sign_batch(
        batch.other_city_provider.identity, batch.raw, batch_id=BATCH_ID, now=_signed_at(batch)
    )

    def resigned(change: Callable[[provenance_pb2.RecordBatch], None]) -> envelope_pb2.SignedEnvelope:
        m = _manifest(batch)
        change(m)
        return sign(RECORD_BATCH_TYPE, m.SerializeToString(deterministic=True), batch.provider.identity)

    def other_provider_id(m: provenance_pb2.RecordBatch) -> None:
        m.provider_id = "provider:someone-else"

    hefei = pilot.HEFEI
    return [
        Refused(
            "altered record",
            "The node changed the record's date after it was signed.",
            hefei,
            batch.envelope,
            altered,
            "not in its provider's signed batch",
        ),
        Refused(
            "invented record",
            "A record no provider signed, with another record's proof.",
            hefei,
            batch.envelope,
            invented,
            "not in its provider's signed batch",
        ),
        Refused(
            "wrong leaf index",
            "A genuine record presented at another position.",
            hefei,
            batch.envelope,
            wrong_index,
            "not in its provider's signed batch",
        ),
        Refused(
            "forged manifest",
            "The manifest's count changed without the provider's signature.",
            hefei,
            forged,
            batch.proven(0),
            "batch.signature",
        ),
        Refused(
            "provider of another city",
            "The batch is signed by a provider of Shanghai.",
            hefei,
            other_city,
            batch.proven(0),
            "batch.signer",
        ),
        Refused(
            "answered as another city",
            "A genuine Hefei batch in a Shanghai answer.",
            pilot.SHANGHAI,
            batch.envelope,
            batch.proven(0),
            "batch.signer",
        ),
        Refused(
            "manifest names another provider",
            "The signer's manifest claims another provider id.",
            hefei,
            resigned(other_provider_id),
            batch.proven(0),
            "batch.provider_id",
        ),
        Refused(
            "category outside the certificate",
            "A loan record; the certificate covers utility and tax.",
            hefei,
            batch.envelope,
            batch.proven(4),
            "does not cover loan records",
        ),
    ]


def _signed_at(batch: Batch) -> dt.datetime:
    return _manifest(batch).signed_at.ToDatetime(tzinfo=dt.UTC)


def render(batch: Batch, refused: list[Refused], message_json: Callable[[Any], Any], verify_at: str) -> Any:
    leaves = [leaf_hash(r) for r in batch.raw]
    return {
        "format_version": 1,
        "description": (
            "A provider's signed RecordBatch manifest over five records' exact bytes, with each leaf hash "
            "(SHA-256(0x00 || record bytes)) and RFC 9162 inclusion path (siblings from the leaf up), and "
            "disclosed records a bank must refuse. The signer's certificate is in keys.json's participants."
        ),
        "see": "docs/protocol.md#records-signed-at-their-source",
        "verify_at": verify_at,
        "batch": {
            "payload_type": RECORD_BATCH_TYPE,
            "envelope_hex": batch.envelope.SerializeToString(deterministic=True).hex(),
            "payload_hex": batch.envelope.payload.hex(),
            "payload_sha256_hex": digest(batch.envelope.payload).hex(),
            "pae_hex": pae(RECORD_BATCH_TYPE, batch.envelope.payload).hex(),
            "manifest_json": message_json(_manifest(batch)),
            "signer": batch.provider.label,
            "root_hex": batch.root.hex(),
        },
        "records": [
            {
                "index": i,
                "record_hex": raw.hex(),
                "record_json": message_json(rec),
                "leaf_hash_hex": leaves[i].hex(),
                "inclusion_path_hex": [h.hex() for h in batch.proven(i).inclusion_path],
            }
            for i, (raw, rec) in enumerate(zip(batch.raw, batch.records, strict=True))
        ],
        "refused": [
            {
                "name": r.name,
                "description": r.description,
                "city": r.city.value,
                "batch_envelope_hex": r.batch.SerializeToString(deterministic=True).hex(),
                "proven_record_hex": r.proven.SerializeToString(deterministic=True).hex(),
                "expect_reason_contains": r.reason,
            }
            for r in refused
        ],
    }
