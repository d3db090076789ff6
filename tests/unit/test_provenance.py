"""Provider-signed batches: the Merkle tree over records' bytes, the node's checks and the bank's."""

from __future__ import annotations

import hashlib

import pytest

from creditnet import pilot, provenance
from creditnet.chain.merkle import inclusion_proof, leaf_hash, root_from_leaves
from creditnet.domain import ALL_CATEGORIES, Category
from creditnet.envelope import EnvelopeVerifier
from creditnet.errors import CreditnetError
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import provenance_pb2, records_pb2
from creditnet_devkit import synthetic

CA = CertificateAuthority.create()
VERIFIER = EnvelopeVerifier(TrustStore(CA.cert))
PROVIDER = issue_identity(CA, Role.provider(pilot.HEFEI, "exchange", [Category.UTILITY, Category.TAX]))


def hefei_records(n: int, provider: Identity = PROVIDER) -> list[records_pb2.CreditRecord]:
    out: list[records_pb2.CreditRecord] = []
    index = 0
    while len(out) < n:
        for item in synthetic.enterprise_items(3, pilot.HEFEI, index):
            if isinstance(item, records_pb2.CreditRecord) and item.WhichOneof("detail") in ("utility", "tax"):
                item.provider_id = provenance.provider_id_of(provider.role)
                out.append(item)
        index += 1
    return out[:n]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64, 100])
def test_the_tree_gives_the_rfc_9162_root_and_every_leafs_inclusion_path(size: int) -> None:
    raw = [b"record %d" % i for i in range(size)]
    root, paths = provenance.tree(raw)
    leaves = [hashlib.sha256(b"\x00" + r).digest() for r in raw]
    assert root == root_from_leaves(leaves)

    def subtree(start: int, end: int) -> bytes:
        return root_from_leaves(leaves[start:end])

    for i in range(size):
        assert provenance.split_path(paths[i]) == inclusion_proof(i, size, subtree)


def proven_batch(
    recs: list[records_pb2.CreditRecord], provider: Identity = PROVIDER
) -> tuple[provenance.VerifiedManifest, list[provenance_pb2.ProvenRecord]]:
    raw = provenance.encode(recs)
    env = provenance.sign_batch(provider, raw)
    checked, signed = provenance.verify_batch(VERIFIER, env, raw, city=pilot.HEFEI, caller=provider.role)
    proven = [
        provenance_pb2.ProvenRecord(
            record=signed.raw[i], leaf_index=i, inclusion_path=provenance.split_path(signed.paths[i])
        )
        for i in range(len(raw))
    ]
    return checked, proven


def test_every_record_of_an_honest_batch_checks_out_from_its_signed_bytes() -> None:
    recs = hefei_records(7)
    checked, proven = proven_batch(recs)
    for rec, p in zip(recs, proven, strict=True):
        got, category = provenance.check_record(p, checked, pilot.HEFEI)
        assert got == rec and category.oneof_field == rec.WhichOneof("detail")


def test_an_altered_record_or_a_moved_proof_does_not_check_out() -> None:
    recs = hefei_records(5)
    checked, proven = proven_batch(recs)
    altered = records_pb2.CreditRecord.FromString(proven[2].record)
    altered.record_date.year -= 1
    proven[2].record = altered.SerializeToString()
    with pytest.raises(provenance.ProvenanceError, match="not in its provider's signed batch"):
        provenance.check_record(proven[2], checked, pilot.HEFEI)
    proven[3].leaf_index = 4
    with pytest.raises(provenance.ProvenanceError, match="not in its provider's signed batch"):
        provenance.check_record(proven[3], checked, pilot.HEFEI)
    del proven[4].inclusion_path[-1]
    with pytest.raises(provenance.ProvenanceError, match="must have"):
        provenance.check_record(proven[4], checked, pilot.HEFEI)


def test_a_signed_record_outside_the_signers_categories_or_city_does_not_check_out() -> None:
    recs = hefei_records(2)
    checked, proven = proven_batch(recs)
    narrow = provenance.VerifiedManifest(
        checked.manifest,
        Role.provider(pilot.HEFEI, "exchange", [Category.LOAN]),
        checked.verified,
    )
    with pytest.raises(provenance.ProvenanceError, match="does not cover"):
        provenance.check_record(proven[0], narrow, pilot.HEFEI)
    with pytest.raises(provenance.ProvenanceError, match="another city"):
        provenance.check_record(proven[0], checked, pilot.SHANGHAI)


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        ("unsigned", "batch.unsigned"),
        ("count", "batch.count"),
        ("root", "batch.root"),
        ("forged", "batch.signature"),
        ("other city", "batch.signer"),
        ("other caller", "batch.signer"),
        ("bank", "batch.signer"),
    ],
)
def test_the_node_refuses_a_batch_its_signed_manifest_does_not_cover(case: str, rule: str) -> None:
    raw = provenance.encode(hefei_records(4))
    signer: Identity = PROVIDER
    caller = PROVIDER.role
    if case == "other city":
        signer = issue_identity(CA, Role.provider(pilot.SHANGHAI, "exchange", ALL_CATEGORIES))
    if case == "bank":
        signer = issue_identity(CA, Role.bank("B0001H231000001"))
    if case == "other caller":
        caller = Role.provider(pilot.HEFEI, "someone-else", ALL_CATEGORIES)
    if case == "bank":
        from creditnet.envelope import RECORD_BATCH_TYPE, sign

        env = sign(RECORD_BATCH_TYPE, provenance.sign_batch(PROVIDER, raw).payload, signer)
    else:
        env = provenance.sign_batch(signer, raw)
    sent = raw
    if case == "count":
        sent = raw[:3]
    if case == "root":
        sent = [raw[0], raw[2], raw[1], raw[3]]
    if case == "forged":
        manifest = provenance_pb2.RecordBatch.FromString(env.payload)
        manifest.record_count = 3
        env.payload = manifest.SerializeToString()
        sent = raw[:3]
    with pytest.raises(CreditnetError) as err:
        provenance.verify_batch(
            VERIFIER, None if case == "unsigned" else env, sent, city=pilot.HEFEI, caller=caller
        )
    assert err.value.rule == rule


def test_a_manifest_naming_another_provider_is_refused_even_when_signed() -> None:
    from creditnet.envelope import RECORD_BATCH_TYPE, sign

    raw = provenance.encode(hefei_records(2))
    manifest = provenance_pb2.RecordBatch.FromString(provenance.sign_batch(PROVIDER, raw).payload)
    manifest.provider_id = "provider:someone-else"
    env = sign(RECORD_BATCH_TYPE, manifest.SerializeToString(), PROVIDER)
    with pytest.raises(CreditnetError) as err:
        provenance.verify_batch(VERIFIER, env, raw, city=pilot.HEFEI, caller=PROVIDER.role)
    assert err.value.rule == "batch.provider_id"


def test_the_leaf_hash_is_domain_separated_from_interior_nodes() -> None:
    # A pair of leaves' hashes, offered as one record, is not a leaf of the tree.
    raw = [b"a", b"b"]
    root, _ = provenance.tree(raw)
    assert leaf_hash(leaf_hash(b"a") + leaf_hash(b"b")) != root
