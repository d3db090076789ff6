"""The bank's check that every disclosed record came unchanged from an accredited provider.

Each record of a city's answer carries its exact bytes as its provider signed
them, an inclusion proof, and (once per answer) the provider's signed batch
manifest. A record is reported only if the manifest's signature verifies
(chain to the network CA, not revoked per the bank's directory when it holds
one), its signer is a data provider of the answering city whose certificate
covers the record's category, and the proof leads from the record's bytes to
the signed root. The record is parsed from those bytes only after that.
"""

from __future__ import annotations

from creditnet.domain import City
from creditnet.envelope import EnvelopeVerifier
from creditnet.errors import CreditnetError
from creditnet.provenance import ProvenanceError, VerifiedManifest, check_record, verify_manifest
from creditnet.v2 import query_pb2, records_pb2

__all__ = ["ProvenanceError", "proven_records"]


def proven_records(
    verifier: EnvelopeVerifier, answer: query_pb2.CityAnswer, city: City
) -> list[records_pb2.CreditRecord]:
    """The answer's records, each checked against its provider's signed batch; ProvenanceError otherwise.

    The error names the record (its position in the answer) and what failed.
    """
    manifests: dict[int, VerifiedManifest] = {}
    out: list[records_pb2.CreditRecord] = []
    # A node stores a record once per provider and record_id; one shown twice
    # would count twice in the bank's indicators (a debt, a judgment).
    seen: set[tuple[str, str]] = set()
    for i, proven in enumerate(answer.proven_records):
        if proven.batch >= len(answer.batches):
            raise ProvenanceError(
                f"record {i}: refers to batch {proven.batch}, which the answer does not carry"
            )
        manifest = manifests.get(proven.batch)
        if manifest is None:
            try:
                manifest = verify_manifest(verifier, answer.batches[proven.batch], city)
            except CreditnetError as exc:
                raise ProvenanceError(f"record {i}: provider signature: {exc.reason}") from None
            manifests[proven.batch] = manifest
        try:
            record, _ = check_record(proven, manifest, city)
        except ProvenanceError as exc:
            raise ProvenanceError(f"record {i}: {exc}") from None
        key = (record.provider_id, record.record_id)
        if key in seen:
            raise ProvenanceError(f"record {i}: disclosed twice in one answer")
        seen.add(key)
        out.append(record)
    if len(manifests) != len(answer.batches):
        raise ProvenanceError("the answer carries a provider batch that no record refers to")
    return out
