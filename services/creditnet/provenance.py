"""Records signed at their source: a provider's signed batch manifest and the proofs that tie a record to it.

A data provider signs each batch it submits: a `RecordBatch` manifest whose
`root` is the RFC 9162 Merkle Tree Hash over the exact serialised bytes of
its records, leaf ``i`` being ``SHA-256(0x00 || bytes of record i)``. The node
keeps those bytes, the manifest envelope and each record's inclusion path;
it discloses all three, and a bank checks a record against the provider's
signature without trusting the node (docs/protocol.md, "Records signed at
their source"). Hashing the bytes as sent, never a re-serialisation, is
what lets a bank in any language check them.

Pure: no I/O. The node's checks (:func:`verify_batch`) raise refusals with
rule ids; the bank's (:func:`check_record`) raise :class:`ProvenanceError`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError

from creditnet.chain.merkle import EMPTY_ROOT, HASH_SIZE, ProofError, leaf_hash, node_hash, verify_inclusion
from creditnet.dates import ts_to_proto, utcnow
from creditnet.domain import Category, City
from creditnet.envelope import RECORD_BATCH_TYPE, EnvelopeVerifier, Verified, digest, sign
from creditnet.errors import Error, InvalidArgument, PermissionDenied
from creditnet.pki import Identity, Role, RoleKind
from creditnet.v2 import envelope_pb2, provenance_pb2, records_pb2

__all__ = [
    "RECORD_BATCH_TYPE",
    "ProvenanceError",
    "SignedBatch",
    "VerifiedManifest",
    "check_record",
    "encode",
    "owned_by",
    "provider_id_of",
    "sign_batch",
    "sign_records",
    "split_path",
    "tree",
    "verify_batch",
    "verify_manifest",
]

PROVIDER_ID_PREFIX: Final = "provider:"
MAX_BATCH_ID: Final = 128


class ProvenanceError(Error, ValueError):
    """A disclosed record that its provider's signed batch does not vouch for."""


def provider_id_of(role: Role) -> str:
    """The provider id a provider's records carry: "provider:" and its certificate's id."""
    return PROVIDER_ID_PREFIX + role.subject


def encode(records: Sequence[records_pb2.CreditRecord]) -> list[bytes]:
    """The bytes a provider signs and sends for each record (no maps in CreditRecord: one encoding)."""
    return [r.SerializeToString(deterministic=True) for r in records]


def tree(raw: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """The Merkle root over `raw` and every leaf's inclusion path, in one O(n log n) pass.

    Each path lists siblings from the leaf up, as RFC 9162's PATH does and
    `merkle.verify_inclusion` reads it.
    """
    if not raw:
        return EMPTY_ROOT, []
    leaves = [leaf_hash(r) for r in raw]
    paths: list[list[bytes]] = [[] for _ in raw]

    def build(start: int, end: int) -> bytes:
        if end - start == 1:
            return leaves[start]
        k = 1 << ((end - start - 1).bit_length() - 1)
        left, right = build(start, start + k), build(start + k, end)
        # Children first: their (deeper) siblings precede this level's.
        for i in range(start, start + k):
            paths[i].append(right)
        for i in range(start + k, end):
            paths[i].append(left)
        return node_hash(left, right)

    return build(0, len(raw)), [b"".join(p) for p in paths]


def sign_batch(
    identity: Identity,
    raw: Sequence[bytes],
    *,
    batch_id: str | None = None,
    now: dt.datetime | None = None,
) -> envelope_pb2.SignedEnvelope:
    """The provider's signed manifest over records `raw` (each as it will be sent)."""
    role = identity.role
    if role.kind is not RoleKind.PROVIDER or role.city is None:
        raise ValueError(f"only a data provider signs record batches, not {role.uri}")
    root, _ = tree(raw)
    manifest = provenance_pb2.RecordBatch(
        provider_id=provider_id_of(role),
        city=role.city.proto,
        batch_id=batch_id or str(uuid.uuid4()),
        record_count=len(raw),
        root=root,
        signed_at=ts_to_proto(now or utcnow()),
    )
    return sign(RECORD_BATCH_TYPE, manifest.SerializeToString(deterministic=True), identity)


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A batch as the store keeps it: the manifest envelope and, per record, its bytes and path."""

    envelope: bytes
    # SHA-256 of the manifest payload: names the batch in the store.
    digest: bytes
    provider_id: str
    batch_id: str
    root: bytes
    size: int
    raw: list[bytes]
    # Each record's inclusion path, its hashes concatenated.
    paths: list[bytes]


def owned_by(
    identity: Identity, records: Sequence[records_pb2.CreditRecord]
) -> list[records_pb2.CreditRecord]:
    """`records` as a provider signs them: one without a provider_id gets the signer's (on a copy;
    the caller's messages are not changed), and one naming another provider is left for the node
    to refuse (``batch.provider_id``)."""
    own = provider_id_of(identity.role)
    owned: list[records_pb2.CreditRecord] = []
    for rec in records:
        if not rec.provider_id:
            copy = records_pb2.CreditRecord()
            copy.CopyFrom(rec)
            copy.provider_id = own
            rec = copy
        owned.append(rec)
    return owned


def sign_records(
    identity: Identity,
    records: Sequence[records_pb2.CreditRecord],
    *,
    now: dt.datetime | None = None,
) -> tuple[list[records_pb2.CreditRecord], SignedBatch]:
    """Sign a batch for a store written directly (provisioning, tools, benchmarks), as a provider would.

    Records without a provider_id get the signer's; the returned records are
    the ones signed, in order, leaf i being record i.
    """
    signed_records = owned_by(identity, records)
    raw = encode(signed_records)
    env = sign_batch(identity, raw, now=now)
    manifest = provenance_pb2.RecordBatch.FromString(env.payload)
    return signed_records, _signed_batch(env, manifest, raw)


def _signed_batch(
    envelope: envelope_pb2.SignedEnvelope, manifest: provenance_pb2.RecordBatch, raw: Sequence[bytes]
) -> SignedBatch:
    """What the store keeps of a batch whose manifest was checked (or just signed) over `raw`."""
    root, paths = tree(raw)
    if root != manifest.root or len(raw) != manifest.record_count:
        raise ValueError("the manifest does not cover these records")
    return SignedBatch(
        envelope=envelope.SerializeToString(deterministic=True),
        digest=digest(envelope.payload),
        provider_id=manifest.provider_id,
        batch_id=manifest.batch_id,
        root=manifest.root,
        size=manifest.record_count,
        raw=list(raw),
        paths=paths,
    )


@dataclass(frozen=True, slots=True)
class VerifiedManifest:
    """A manifest whose provider signature verified, and who signed it."""

    manifest: provenance_pb2.RecordBatch
    signer: Role
    verified: Verified


def verify_manifest(
    verifier: EnvelopeVerifier,
    env: envelope_pb2.SignedEnvelope,
    city: City,
    *,
    at: dt.datetime | None = None,
) -> VerifiedManifest:
    """Signature, signer (a PROVIDER of `city`) and the manifest's own fields.

    Refusals: ``batch.type``/``batch.empty``/``batch.size`` (INVALID_ARGUMENT),
    ``batch.signature`` and ``batch.cert.*`` (UNAUTHENTICATED), ``batch.signer``,
    ``batch.city`` and ``batch.provider_id`` (PERMISSION_DENIED),
    ``batch.malformed`` (INVALID_ARGUMENT).
    """
    verified = verifier.verify(env, RECORD_BATCH_TYPE, what="batch", at=at, cache=True)
    signer = verified.signer.role
    if signer.kind is not RoleKind.PROVIDER or signer.city != city:
        raise PermissionDenied(
            "batch.signer", f"the batch is signed by {signer.uri}, not by a data provider of {city.value}"
        )
    manifest = provenance_pb2.RecordBatch()
    try:
        manifest.ParseFromString(verified.payload)
    except DecodeError:
        raise InvalidArgument("batch.malformed", "the batch manifest is not a RecordBatch") from None
    if len(manifest.root) != HASH_SIZE or not manifest.HasField("signed_at"):
        raise InvalidArgument("batch.malformed", "the batch manifest lacks its 32-byte root or its time")
    if not 0 < len(manifest.batch_id) <= MAX_BATCH_ID:
        raise InvalidArgument("batch.malformed", f"the batch id must have 1 to {MAX_BATCH_ID} characters")
    if manifest.city != city.proto:
        raise PermissionDenied("batch.city", f"the batch manifest is not for {city.value}")
    if manifest.provider_id != provider_id_of(signer):
        raise PermissionDenied(
            "batch.provider_id", "the batch manifest names another provider than the one that signed it"
        )
    return VerifiedManifest(manifest, signer, verified)


def verify_batch(
    verifier: EnvelopeVerifier,
    env: envelope_pb2.SignedEnvelope | None,
    raw: Sequence[bytes],
    *,
    city: City,
    caller: Role,
    at: dt.datetime | None = None,
) -> tuple[VerifiedManifest, SignedBatch]:
    """The node's checks of a submitted batch, before any record of it is looked at.

    The signer must be the calling provider (same id), a provider of this
    city, and its signed root and count must be those of exactly these
    records' bytes. Per-record checks (provider id, category, city) follow
    in the node's screening.
    """
    if env is None:
        raise InvalidArgument(
            "batch.unsigned", "the batch carries no provider-signed manifest; sign each batch (RecordBatch)"
        )
    checked = verify_manifest(verifier, env, city, at=at)
    if checked.signer.subject != caller.subject:
        raise PermissionDenied("batch.signer", "the batch is signed by another provider than the caller")
    manifest = checked.manifest
    if manifest.record_count != len(raw):
        raise InvalidArgument(
            "batch.count", f"the manifest counts {manifest.record_count} records, the batch holds {len(raw)}"
        )
    root, paths = tree(raw)
    if root != manifest.root:
        raise InvalidArgument(
            "batch.root", "the manifest's root is not the Merkle root of these records' bytes"
        )
    stored = SignedBatch(
        envelope=env.SerializeToString(deterministic=True),
        digest=checked.verified.digest,
        provider_id=manifest.provider_id,
        batch_id=manifest.batch_id,
        root=root,
        size=len(raw),
        raw=list(raw),
        paths=paths,
    )
    return checked, stored


def split_path(path: bytes) -> list[bytes]:
    """A stored path (concatenated hashes) as its list of hashes."""
    if len(path) % HASH_SIZE:
        raise ValueError("a stored inclusion path is not a whole number of hashes")
    return [path[i : i + HASH_SIZE] for i in range(0, len(path), HASH_SIZE)]


def check_record(
    proven: provenance_pb2.ProvenRecord,
    batch: VerifiedManifest,
    city: City,
) -> tuple[records_pb2.CreditRecord, Category]:
    """A disclosed record, parsed from the very bytes its provider signed, or ProvenanceError.

    `batch` is the manifest `proven.batch` refers to, verified for `city`.
    """
    manifest = batch.manifest
    try:
        verify_inclusion(
            leaf_hash(proven.record),
            proven.leaf_index,
            manifest.record_count,
            list(proven.inclusion_path),
            manifest.root,
        )
    except ProofError as exc:
        raise ProvenanceError(f"not in its provider's signed batch ({exc})") from None
    record = records_pb2.CreditRecord()
    try:
        record.ParseFromString(proven.record)
    except DecodeError:
        raise ProvenanceError("the signed bytes are not a CreditRecord") from None
    if record.provider_id != manifest.provider_id:
        raise ProvenanceError("the record names another provider than the one that signed its batch")
    if record.city != city.proto:
        raise ProvenanceError("the record is of another city")
    field = record.WhichOneof("detail")
    if field is None:
        raise ProvenanceError("the record has no category")
    category = Category.from_oneof_field(field)
    if category not in batch.signer.categories:
        raise ProvenanceError(f"its provider's certificate does not cover {category.value} records")
    return record, category
