"""Directory verification: thresholds, rotation, rollback, forks, expiry, bad content, and the holder."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from creditnet.directory import DirectoryHolder, add_signature, sign, verify
from creditnet.directory.build import PILOT_CITIES
from creditnet.directory.model import Directory, Policy, Revoked, serial_bytes, spki_sha256
from creditnet.directory.sign import DIRECTORY_TYPE, unsigned
from creditnet.directory.verify import VerifiedDirectory
from creditnet.envelope import CONSENT_TYPE, pae
from creditnet.errors import CreditnetError
from creditnet.pki import Role, issue_identity
from creditnet.v2 import directory_pb2, envelope_pb2

from .conftest import ISSUED, NOW, World


def anchor(env: envelope_pb2.SignedEnvelope) -> bytes:
    return hashlib.sha256(env.payload).digest()


def first(world: World) -> VerifiedDirectory:
    env = sign(world.directory(1), world.gov[:2])
    return verify(env, trust=world.trust, anchor_sha256=anchor(env))


def refused(rule: str, fn: object, *args: object, **kw: object) -> CreditnetError:
    with pytest.raises(CreditnetError) as err:
        fn(*args, **kw)  # type: ignore[operator]
    assert err.value.rule == rule, err.value.reason
    return err.value


# --- signatures and the anchor ---------------------------------------------------


def test_a_first_directory_signed_by_k_keys_and_matching_the_anchor_is_trusted(world: World) -> None:
    v = first(world)
    assert v.version == 1
    assert [c.code for c in v.directory.cities] == ["310000", "320100", "330100", "330400", "340100"]
    assert v.directory.city("320100") is not None
    assert v.directory.city("320100").name_en == "Nanjing"  # type: ignore[union-attr]


def test_a_first_directory_that_does_not_match_the_pinned_anchor_is_refused(world: World) -> None:
    env = sign(world.directory(1), world.gov[:2])
    refused("directory.anchor", verify, env, trust=world.trust, anchor_sha256=b"\0" * 32)
    refused("directory.anchor", verify, env, trust=world.trust)


def test_a_directory_below_the_threshold_is_refused(world: World) -> None:
    trusted = first(world)
    env = sign(world.directory(2), world.gov[:1])
    err = refused("directory.threshold", verify, env, trust=world.trust, trusted=trusted)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "1 valid signature(s)" in err.message


def test_one_key_signing_twice_counts_once(world: World) -> None:
    trusted = first(world)
    env = sign(world.directory(2), world.gov[:1])
    env.signatures.append(env.signatures[0])
    refused("directory.threshold", verify, env, trust=world.trust, trusted=trusted)


def test_signatures_by_keys_that_are_not_governance_keys_do_not_count(world: World) -> None:
    trusted = first(world)
    bank = issue_identity(world.ca, Role.bank("B0001"), not_before=ISSUED)
    env = sign(world.directory(2), world.gov[:1])
    env.signatures.append(
        envelope_pb2.Signature(
            signature=bank.key.sign(pae(DIRECTORY_TYPE, env.payload), ec.ECDSA(hashes.SHA256())),
            certificate_chain=list(bank.chain_der),
        )
    )
    err = refused("directory.threshold", verify, env, trust=world.trust, trusted=trusted)
    assert "not a governance key" in err.message


def test_a_governance_key_not_listed_in_the_trusted_directory_does_not_count(world: World) -> None:
    trusted = first(world)
    env = sign(world.directory(2), world.gov[:1] + world.new_gov[:1])
    refused("directory.threshold", verify, env, trust=world.trust, trusted=trusted)


def test_a_signature_over_other_bytes_does_not_count(world: World) -> None:
    trusted = first(world)
    env = sign(world.directory(2), world.gov[:2])
    other = sign(world.directory(3), world.gov[:2])
    env.signatures[1].signature = other.signatures[1].signature
    refused("directory.threshold", verify, env, trust=world.trust, trusted=trusted)


def test_the_payload_type_is_bound_into_the_signature(world: World) -> None:
    trusted = first(world)
    env = sign(world.directory(2), world.gov[:2])
    env.payload_type = CONSENT_TYPE
    refused("directory.type", verify, env, trust=world.trust, trusted=trusted)


def test_a_revoked_governance_key_does_not_count(world: World) -> None:
    bob = world.gov[1]
    revoked = Revoked(
        serial_bytes(bob.cert.serial_number),
        spki_sha256(bob.key.public_key()),
        1,
        NOW - dt.timedelta(minutes=2),
    )
    d1 = dataclasses.replace(world.directory(1), revoked=(revoked,))
    env1 = sign(d1, world.gov)
    trusted = verify(env1, trust=world.trust, anchor_sha256=anchor(env1))
    assert trusted.directory.is_revoked(serial=bob.cert.serial_number)
    assert trusted.directory.is_certificate_revoked(bob.cert)
    assert not trusted.directory.is_certificate_revoked(world.gov[0].cert)
    env2 = sign(dataclasses.replace(world.directory(2), revoked=(revoked,)), world.gov[:2])
    err = refused("directory.threshold", verify, env2, trust=world.trust, trusted=trusted)
    assert "revoked" in err.message


# --- versions, forks and expiry ---------------------------------------------------


def test_a_lower_version_is_refused_as_a_rollback(world: World) -> None:
    env3 = sign(world.directory(3), world.gov[:2])
    trusted = verify(env3, trust=world.trust, anchor_sha256=anchor(env3))
    err = refused(
        "directory.rollback",
        verify,
        sign(world.directory(2), world.gov[:2]),
        trust=world.trust,
        trusted=trusted,
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION


def test_the_same_version_with_other_contents_is_refused_as_a_fork(world: World) -> None:
    trusted = first(world)
    other = sign(world.directory(1, cities=("310000",)), world.gov[:2])
    refused("directory.fork", verify, other, trust=world.trust, trusted=trusted)
    same = verify(trusted.envelope, trust=world.trust, trusted=trusted)
    assert same is trusted


def test_versions_may_be_skipped_when_the_governance_is_unchanged(world: World) -> None:
    trusted = first(world)
    assert verify(sign(world.directory(9), world.gov[1:]), trust=world.trust, trusted=trusted).version == 9


def test_a_directory_older_than_its_maximum_age_is_refused_as_expired(world: World) -> None:
    # A first directory may be old: it is a root to update from.
    env1 = sign(world.directory(1, issued_at=NOW - dt.timedelta(days=9)), world.gov[:2])
    trusted = verify(env1, trust=world.trust, anchor_sha256=anchor(env1))
    old = world.directory(2, issued_at=NOW - dt.timedelta(days=8))
    err = refused("directory.expired", verify, sign(old, world.gov[:2]), trust=world.trust, trusted=trusted)
    assert err.code == grpc.StatusCode.UNAVAILABLE


def test_a_directory_from_the_future_is_refused(world: World) -> None:
    trusted = first(world)
    later = world.directory(2, issued_at=NOW + dt.timedelta(hours=1))
    refused("directory.future", verify, sign(later, world.gov[:2]), trust=world.trust, trusted=trusted)


# --- governance rotation (TUF root rotation) ----------------------------------


def test_a_rotation_signed_by_k_old_and_k_new_keys_is_accepted(world: World) -> None:
    trusted = first(world)
    rotated = world.directory(2, governance=world.new_gov, threshold=2)
    env = sign(rotated, world.gov[:2] + world.new_gov)
    v = verify(env, trust=world.trust, trusted=trusted)
    assert {k.name for k in v.directory.governance.keys} == {"dave", "erin"}
    # From then on the new keys alone sign.
    assert verify(
        sign(world.directory(3, governance=world.new_gov), world.new_gov), trust=world.trust, trusted=v
    )


def test_a_rotation_signed_only_by_the_new_keys_is_refused(world: World) -> None:
    trusted = first(world)
    rotated = world.directory(2, governance=world.new_gov, threshold=2)
    refused("directory.rotation", verify, sign(rotated, world.new_gov), trust=world.trust, trusted=trusted)


def test_a_rotation_without_k_new_signatures_is_refused(world: World) -> None:
    trusted = first(world)
    rotated = world.directory(2, governance=world.new_gov, threshold=2)
    env = sign(rotated, world.gov[:2] + world.new_gov[:1])
    refused("directory.threshold", verify, env, trust=world.trust, trusted=trusted)


def test_raising_the_threshold_is_a_rotation(world: World) -> None:
    trusted = first(world)
    raised = world.directory(2, threshold=3)
    refused("directory.threshold", verify, sign(raised, world.gov[:2]), trust=world.trust, trusted=trusted)
    assert (
        verify(sign(raised, world.gov), trust=world.trust, trusted=trusted).directory.governance.threshold
        == 3
    )


# --- bad content ---------------------------------------------------------------


def _edit(d: Directory, fn: object) -> bytes:
    msg = d.to_proto()
    fn(msg)  # type: ignore[operator]
    return msg.SerializeToString(deterministic=True)


def _signed_raw(world: World, payload: bytes) -> envelope_pb2.SignedEnvelope:
    env = envelope_pb2.SignedEnvelope(payload_type=DIRECTORY_TYPE, payload=payload)
    for g in world.gov[:2]:
        add_signature(env, g)
    return env


BAD_CONTENT = {
    "unknown city code": ("directory.city", lambda m: setattr(m.cities[0], "code", "320599")),
    "county code": ("directory.city", lambda m: setattr(m.cities[0], "code", "320582")),
    "province code": ("directory.city", lambda m: setattr(m.cities[1], "code", "320000")),
    "duplicate city": ("directory.duplicate", lambda m: m.cities.append(m.cities[0])),
    "duplicate endpoint": (
        "directory.duplicate",
        lambda m: m.cities[1].endpoints.append(m.cities[0].endpoints[0]),
    ),
    "duplicate server name": (
        "directory.duplicate",
        lambda m: setattr(m.cities[1], "tls_server_name", m.cities[0].tls_server_name),
    ),
    "no endpoint": ("directory.member", lambda m: m.cities[0].ClearField("endpoints")),
    "bad endpoint": ("directory.member", lambda m: m.cities[0].endpoints.append("nowhere")),
    "someone else's log key": (
        "directory.member",
        lambda m: setattr(m.cities[0], "log_key_certificate", m.cities[1].log_key_certificate),
    ),
    "witness not a member": (
        "directory.witness",
        lambda m: m.witness_assignments[0].witnesses.append("320500"),
    ),
    "quorum above witnesses": ("directory.witness", lambda m: setattr(m.witness_assignments[0], "quorum", 9)),
    "quorum zero": ("directory.witness", lambda m: setattr(m.witness_assignments[0], "quorum", 0)),
    "log witnessing itself": (
        "directory.witness",
        lambda m: m.witness_assignments[0].witnesses.append(m.witness_assignments[0].log),
    ),
    "no governance keys": ("directory.governance", lambda m: m.governance.ClearField("keys")),
    "no governance": ("directory.governance", lambda m: m.ClearField("governance")),
    "k > n": ("directory.governance", lambda m: setattr(m.governance, "threshold", 4)),
    "k = 0": ("directory.governance", lambda m: setattr(m.governance, "threshold", 0)),
    "no policy": ("directory.policy", lambda m: m.ClearField("policy")),
    "max age below refresh": ("directory.policy", lambda m: m.policy.max_age.FromSeconds(1)),
    "version 0": ("directory.version", lambda m: setattr(m, "version", 0)),
    "bad revocation": (
        "directory.revocation",
        lambda m: m.revoked_certificates.append(
            directory_pb2.RevokedCertificate(serial=b"\x01", spki_sha256=b"x")
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_bad_content_is_refused_naming_what_is_wrong_and_the_holder_keeps_its_directory(
    world: World, tmp_path: Path, case: str
) -> None:
    rule, fn = BAD_CONTENT[case]
    holder = DirectoryHolder(tmp_path / "directory.pb", world.trust)
    good = sign(world.directory(1), world.gov[:2])
    holder.bootstrap(good, anchor(good))
    bad = _signed_raw(world, _edit(world.directory(2), fn))
    err = refused(rule, holder.offer, bad)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert holder.require().version == 1
    assert DirectoryHolder(tmp_path / "directory.pb", world.trust).require().version == 1


def test_a_directory_with_fields_this_version_does_not_know_is_refused(world: World) -> None:
    trusted = first(world)
    payload = world.directory(2).to_payload() + b"\xa8\x06\x01"  # field 101, varint 1
    refused("directory.malformed", verify, _signed_raw(world, payload), trust=world.trust, trusted=trusted)


def test_garbage_is_refused_as_malformed(world: World) -> None:
    trusted = first(world)
    refused(
        "directory.malformed", verify, _signed_raw(world, b"\xff\xff\xff"), trust=world.trust, trusted=trusted
    )
    refused("directory.malformed", verify, b"not a directory", trust=world.trust, trusted=trusted)


def test_nothing_invalid_can_be_signed(world: World) -> None:
    d = world.directory(1)
    bad = dataclasses.replace(d, governance=dataclasses.replace(d.governance, threshold=5))
    refused("directory.governance", unsigned, bad)


def test_a_non_governance_key_cannot_sign(world: World) -> None:
    bank = issue_identity(world.ca, Role.bank("B0001"), not_before=ISSUED)
    refused("directory.signer", add_signature, unsigned(world.directory(1)), bank)
    env = sign(world.directory(1), world.gov[:1])
    refused("directory.signer", add_signature, env, world.gov[0])


# --- the holder --------------------------------------------------------------------


def test_the_holder_persists_each_accepted_directory_and_reloads_it(world: World, tmp_path: Path) -> None:
    path = tmp_path / "state" / "directory.pb"
    holder = DirectoryHolder(path, world.trust)
    refused("directory.missing", holder.require)
    env1 = sign(world.directory(1), world.gov[:2])
    holder.bootstrap(env1, anchor(env1))
    six = (*PILOT_CITIES, "320500")
    assert holder.offer(sign(world.directory(2, cities=six), world.gov[:2]))
    assert not holder.offer(holder.require().envelope)
    again = DirectoryHolder(path, world.trust)
    assert again.require().version == 2
    assert again.require().directory.city("320500") is not None
    assert [p.name for p in path.parent.iterdir()] == ["directory.pb"]


def test_a_tampered_state_file_is_refused_on_load(world: World, tmp_path: Path) -> None:
    path = tmp_path / "directory.pb"
    holder = DirectoryHolder(path, world.trust)
    env1 = sign(world.directory(1), world.gov[:2])
    holder.bootstrap(env1, anchor(env1))
    env = envelope_pb2.SignedEnvelope.FromString(path.read_bytes())
    env.signatures.pop()
    path.write_bytes(env.SerializeToString())
    refused("directory.threshold", DirectoryHolder, path, world.trust)


def test_a_holder_with_only_an_expired_directory_refuses_to_serve_and_recovers(
    world: World, tmp_path: Path
) -> None:
    holder = DirectoryHolder(tmp_path / "directory.pb", world.trust)
    short = Policy(refresh_interval=dt.timedelta(minutes=1), max_age=dt.timedelta(minutes=10))
    env1 = sign(world.directory(1, policy=short, issued_at=NOW - dt.timedelta(hours=1)), world.gov[:2])
    holder.bootstrap(env1, anchor(env1))
    assert holder.is_expired()
    err = refused("directory.expired", holder.require_fresh)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert holder.offer(sign(world.directory(2, policy=short), world.gov[:2]))
    assert not holder.is_expired()
    assert holder.require_fresh().version == 2


def test_a_holder_crosses_a_rotation_only_through_the_rotating_directory(
    world: World, tmp_path: Path
) -> None:
    holder = DirectoryHolder(tmp_path / "directory.pb", world.trust)
    env1 = sign(world.directory(1), world.gov[:2])
    holder.bootstrap(env1, anchor(env1))
    v2 = sign(world.directory(2, governance=world.new_gov), world.gov[:2] + world.new_gov)
    v3 = sign(world.directory(3, governance=world.new_gov), world.new_gov)
    refused("directory.rotation", holder.offer, v3)
    assert holder.require().version == 1
    assert holder.offer_chain([v2, v3]) == 3


def test_the_holder_answers_revocation_questions(world: World, tmp_path: Path) -> None:
    bank = issue_identity(world.ca, Role.bank("B0002"), not_before=ISSUED)
    spki = spki_sha256(bank.key.public_key())
    entry = Revoked(serial_bytes(bank.cert.serial_number), spki, 1, NOW - dt.timedelta(minutes=2))
    holder = DirectoryHolder(tmp_path / "directory.pb", world.trust)
    env1 = sign(world.directory(1), world.gov[:2])
    holder.bootstrap(env1, anchor(env1))
    assert not holder.is_certificate_revoked(bank.cert)
    holder.offer(sign(dataclasses.replace(world.directory(2), revoked=(entry,)), world.gov[:2]))
    assert holder.is_certificate_revoked(bank.cert)
    assert holder.is_revoked(spki=spki)
    assert holder.is_revoked(serial=bank.cert.serial_number)
    assert not holder.is_revoked(serial=bank.cert.serial_number + 1, spki=b"\0" * 32)


def test_governance_role_uris_round_trip() -> None:
    role = Role.governance("alice")
    assert role.uri == "creditnet://governance/alice"
    assert Role.parse_uri(role.uri) == role


def test_a_directory_of_every_prefecture_level_city_and_municipality_verifies(world: World) -> None:
    from creditnet import divisions
    from creditnet.chain.keys import LogKey
    from creditnet.directory.build import MemberSpec, make_directory

    cities = [
        MemberSpec(d.code, (f"127.0.0.1:{10000 + i}",), LogKey.issue(world.ca, d.code).certificate_der)
        for i, d in enumerate(divisions.cities())
    ]
    d = make_directory(
        version=1,
        issued_at=NOW - dt.timedelta(minutes=1),
        cities=cities,
        aggregators=[world.members["national"]],
        governance=world.gov,
        threshold=2,
    )
    env = sign(d, world.gov[:2])
    v = verify(env, trust=world.trust, anchor_sha256=anchor(env))
    assert len(v.directory.cities) == 337
    assert all(len(w.witnesses) == 4 and w.quorum == 3 for w in v.directory.witness_assignments)


def test_every_directory_rule_is_in_the_protocol_rule_table_with_its_code() -> None:
    from creditnet.directory.errors import RULES

    table = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    for rule, (cls, _) in RULES.items():
        assert f"| `{rule}` | `{cls.code.name}` |" in table, rule
