"""The network PKI: role URIs, the issuance profile, chain validation and its cache."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from hypothesis import given
from hypothesis import strategies as st

from creditnet import pilot
from creditnet.dates import utcnow
from creditnet.domain import Category
from creditnet.envelope import CONSENT_TYPE, EnvelopeVerifier, sign
from creditnet.errors import InvalidArgument, Unauthenticated
from creditnet.pki import (
    AGGREGATOR_SERVER_NAME,
    LEAF_VALIDITY,
    MAX_CHAIN_LENGTH,
    CertificateAuthority,
    Identity,
    Role,
    RoleKind,
    TrustStore,
    generate_key,
    issue_identity,
    load_cert,
    load_key,
    make_csr,
    node_server_name,
    role_of,
)

USCC = "91340100MA2N0U3E6T"
NOW = utcnow().replace(microsecond=0)
# Certificates are issued as of NOW, however long after import a test runs.
ISSUED = NOW - dt.timedelta(minutes=5)


def issued(ca: CertificateAuthority, role: Role, **kw: object) -> Identity:
    return issue_identity(ca, role, not_before=ISSUED, **kw)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("unit-test CA", not_before=ISSUED)


@pytest.fixture(scope="module")
def foreign_ca() -> CertificateAuthority:
    return CertificateAuthority.create("some other CA", not_before=ISSUED)


@pytest.fixture
def trust(ca: CertificateAuthority) -> TrustStore:
    return TrustStore(ca.cert)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _key_usage(*, digital_signature: bool = True, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_with_names(
    ca: CertificateAuthority,
    names: Sequence[x509.GeneralName] | None,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | None = None,
    *,
    key_usage: tuple[x509.KeyUsage, bool] | None = (_key_usage(), True),
) -> x509.Certificate:
    """A CA-signed leaf with the network profile but arbitrary subject alternative names
    (and, if given, another keyUsage extension and criticality, or none)."""
    public_key = (key or generate_key()).public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if key_usage is not None:
        builder = builder.add_extension(key_usage[0], critical=key_usage[1])
    return builder.sign(ca.key, hashes.SHA256())


# --- role URIs -------------------------------------------------------------------

ROLES = [
    *(Role.node(c) for c in pilot.CITIES),
    Role.operator(pilot.JIAXING),
    Role.aggregator(),
    Role.aggregator("backup-1"),
    Role.bank("B0001H231000001"),
    Role.enterprise(USCC),
    Role.logkey("340100"),
    Role.logkey("national"),
    Role.provider(pilot.HEFEI, "state-grid-340100", [Category.UTILITY]),
    Role.provider(pilot.NANJING, "tax.320100", [Category.TAX, Category.PENALTY, Category.UTILITY]),
]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.uri)
def test_role_uri_round_trips(role: Role) -> None:
    assert Role.parse_uri(role.uri) == role
    assert role.uri.startswith("creditnet://" + role.kind.value + "/")


def test_role_uris_have_the_documented_spelling() -> None:
    assert Role.node(pilot.HEFEI).uri == "creditnet://node/340100"
    assert Role.operator(pilot.HEFEI).uri == "creditnet://operator/340100"
    assert Role.aggregator().uri == "creditnet://aggregator/national"
    assert Role.bank("B0001H231000001").uri == "creditnet://bank/B0001H231000001"
    assert Role.enterprise(USCC).uri == f"creditnet://enterprise/{USCC}"
    assert Role.logkey("340100").uri == "creditnet://logkey/340100"
    # Categories are written in protocol order, whatever order they were given in.
    provider = Role.provider(pilot.HEFEI, "p1", [Category.TAX, Category.UTILITY, Category.TAX])
    assert provider.uri == "creditnet://provider/340100/p1?categories=utility,tax"
    assert provider.categories == (Category.UTILITY, Category.TAX)


@given(st.text(alphabet="abcXYZ0189-_.", min_size=1, max_size=64))
def test_any_valid_bank_code_round_trips(code: str) -> None:
    assert Role.parse_uri(Role.bank(code).uri) == Role.bank(code)


@pytest.mark.parametrize(
    "uri",
    [
        "https://node/340100",
        "creditnet://",
        "creditnet://node",
        "creditnet://node/",
        "creditnet://node/wuhan",
        "creditnet://node/340100/extra",
        "creditnet://node/HEFEI",
        "creditnet://node/340100?categories=tax",
        "creditnet://node/340100#frag",
        "creditnet://node//340100",
        "creditnet://judge/340100",
        "creditnet://bank/",
        "creditnet://bank/two words",
        "creditnet://bank/" + "B" * 65,
        "creditnet://bank/B1/B2",
        "creditnet://enterprise/91340100MA2N0U3E6X",
        "creditnet://enterprise/not-a-uscc",
        "creditnet://provider/340100",
        "creditnet://provider/340100/p1",
        "creditnet://provider/340100/p1?categories=",
        "creditnet://provider/340100/p1?categories=gossip",
        "creditnet://provider/340100/p1?categories=tax,utility",
        "creditnet://provider/wuhan/p1?categories=tax",
        "creditnet://aggregator/",
    ],
)
def test_malformed_role_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        Role.parse_uri(uri)


@pytest.mark.parametrize("bad", ["", " ", "a b", "ä", "x" * 65, "a/b", "a?b"])
def test_role_tokens_are_checked(bad: str) -> None:
    for make in (Role.bank, Role.aggregator, lambda s: Role.provider(pilot.HEFEI, s, [Category.TAX])):
        with pytest.raises(InvalidArgument) as err:
            make(bad)
        assert err.value.rule == "pki.role"


def test_a_provider_needs_a_category() -> None:
    with pytest.raises(InvalidArgument, match="at least one category"):
        Role.provider(pilot.HEFEI, "p1", [])


def test_an_enterprise_role_needs_a_valid_uscc() -> None:
    with pytest.raises(ValueError):
        Role.enterprise("91340100MA2N0U3E6X")


def test_server_names_are_pinned_per_role() -> None:
    assert (
        Role.node(pilot.HANGZHOU).server_name == node_server_name(pilot.HANGZHOU) == "330100.node.creditnet"
    )
    assert Role.aggregator().server_name == AGGREGATOR_SERVER_NAME == "aggregator.creditnet"
    for role in (Role.bank("B1"), Role.enterprise(USCC), Role.operator(pilot.HEFEI)):
        assert role.server_name is None


# --- issuance ------------------------------------------------------------------


def test_ca_certificate_profile(ca: CertificateAuthority) -> None:
    cert = ca.cert
    assert cert.subject == cert.issuer
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"


def test_server_certificate_profile(ca: CertificateAuthority) -> None:
    ident = issued(ca, Role.node(pilot.HEFEI), dns_names=["node1.example.org"])
    cert = ident.cert
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["creditnet://node/340100"]
    assert san.get_values_for_type(x509.DNSName) == [
        "340100.node.creditnet",
        "node1.example.org",
        "localhost",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.issuer == ca.cert.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == LEAF_VALIDITY
    assert cert.not_valid_before_utc <= utcnow()
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert ident.role == Role.node(pilot.HEFEI)


def test_client_certificates_carry_no_server_names(ca: CertificateAuthority) -> None:
    cert = issued(ca, Role.bank("B1")).cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("creditnet://bank/B1")]


def test_certificates_are_issued_for_p256_keys_only(ca: CertificateAuthority) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidArgument) as err:
        ca.issue(Role.bank("B1"), other.public_key())
    assert err.value.rule == "pki.key"


def test_csr_flow_lets_the_ca_decide_the_role(ca: CertificateAuthority, trust: TrustStore) -> None:
    key = generate_key()
    csr = make_csr(key, Role.bank("B-ASKED"))
    assert csr.is_signature_valid
    # Issued as of NOW, however long after import the test runs.
    cert = ca.issue_from_csr(csr, Role.bank("B-GRANTED"), not_before=ISSUED)
    ident = Identity.from_objects(key, cert)
    assert ident.role == Role.bank("B-GRANTED")
    assert trust.verify_chain(ident.chain_der, NOW).role == Role.bank("B-GRANTED")


def test_a_csr_whose_signature_does_not_verify_is_refused(ca: CertificateAuthority) -> None:
    der = bytearray(make_csr(generate_key(), Role.bank("B1")).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # inside the signature's s value
    csr = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(InvalidArgument) as err:
        ca.issue_from_csr(csr, Role.bank("B1"))
    assert err.value.rule == "pki.csr"


def test_a_csr_for_a_key_that_is_not_p256_is_refused(ca: CertificateAuthority) -> None:
    for key in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
    ):
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .sign(key, hashes.SHA256())
        )
        with pytest.raises(InvalidArgument) as err:
            ca.issue_from_csr(csr, Role.bank("B1"))
        assert err.value.rule == "pki.key"


def test_identity_refuses_a_key_that_is_not_the_certificates(ca: CertificateAuthority) -> None:
    cert = issued(ca, Role.bank("B1")).cert
    with pytest.raises(InvalidArgument) as err:
        Identity.from_objects(generate_key(), cert)
    assert err.value.rule == "pki.key"


def test_ca_and_identity_files_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "pki")
    loaded = CertificateAuthority.load(tmp_path / "pki")
    assert loaded.cert == ca.cert
    assert loaded.key.private_numbers() == ca.key.private_numbers()
    ident = issued(ca, Role.enterprise(USCC))
    ident.save(tmp_path / "e.pem", tmp_path / "e.key")
    again = Identity.load(tmp_path / "e.pem", tmp_path / "e.key")
    assert again.role == ident.role and again.chain_der == ident.chain_der
    for secret in (tmp_path / "pki" / "ca.key", tmp_path / "e.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_key_and_certificate_files_are_checked(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.key").write_bytes(
        p384.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "junk").write_bytes(b"not pem")
    for path in (tmp_path / "p384.key", tmp_path / "junk", tmp_path / "missing"):
        with pytest.raises(InvalidArgument) as err:
            load_key(path)
        assert err.value.rule == "pki.key"
    for path in (tmp_path / "junk", tmp_path / "missing"):
        with pytest.raises(InvalidArgument) as cert_err:
            load_cert(path)
        assert cert_err.value.rule == "pki.cert"


# --- roles bound in certificates ------------------------------------------------


def test_role_of_needs_exactly_one_creditnet_uri(ca: CertificateAuthority, trust: TrustStore) -> None:
    node, bank = "creditnet://node/340100", "creditnet://bank/B1"
    no_san = _leaf_with_names(ca, None)
    with pytest.raises(Unauthenticated) as err:
        role_of(no_san)
    assert err.value.rule == "cert.role"
    # The RFC 5280 policy already refuses a leaf without subject alternative names.
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain([_der(no_san)], NOW)
    assert err.value.rule == "cert.untrusted"
    cases: list[list[x509.GeneralName]] = [
        [x509.DNSName("340100.node.creditnet")],
        [x509.UniformResourceIdentifier("https://example.org/")],
        [x509.UniformResourceIdentifier(node), x509.UniformResourceIdentifier(bank)],
        [x509.UniformResourceIdentifier("creditnet://node/wuhan")],
        [x509.UniformResourceIdentifier("creditnet://bank/B1?admin=1")],
    ]
    for names in cases:
        cert = _leaf_with_names(ca, names)
        with pytest.raises(Unauthenticated) as err:
            role_of(cert)
        assert err.value.rule == "cert.role", names
        with pytest.raises(Unauthenticated) as chain_err:
            trust.verify_chain([_der(cert)], NOW)
        assert chain_err.value.rule == "cert.role"
    # Other URIs beside the one creditnet role do not matter.
    mixed = [x509.UniformResourceIdentifier("https://bank.example/"), x509.UniformResourceIdentifier(bank)]
    assert role_of(_leaf_with_names(ca, mixed)) == Role.bank("B1")


# --- chain validation -----------------------------------------------------------


def test_a_chain_to_the_network_ca_verifies(ca: CertificateAuthority, trust: TrustStore) -> None:
    ident = issued(ca, Role.provider(pilot.HEFEI, "grid", [Category.UTILITY]))
    got = trust.verify_chain(ident.chain_der, NOW)
    assert got.role == ident.role
    assert got.public_key.public_numbers() == ident.key.public_key().public_numbers()
    assert got.not_before == ident.cert.not_valid_before_utc
    assert got.not_after == ident.cert.not_valid_after_utc
    assert bytes.fromhex(got.fingerprint) == ident.cert.fingerprint(hashes.SHA256())
    assert trust.verify_pem(ident.cert_pem, NOW).role == ident.role


def test_a_certificate_from_a_foreign_ca_is_untrusted(
    foreign_ca: CertificateAuthority, trust: TrustStore
) -> None:
    rogue = issued(foreign_ca, Role.node(pilot.HEFEI))
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain(rogue.chain_der, NOW)
    assert err.value.rule == "cert.untrusted"


def test_a_foreign_ca_cannot_be_smuggled_in_the_chain(
    ca: CertificateAuthority, foreign_ca: CertificateAuthority, trust: TrustStore
) -> None:
    rogue = issued(foreign_ca, Role.bank("B1"))
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain([*rogue.chain_der, _der(foreign_ca.cert)], NOW)
    assert err.value.rule == "cert.untrusted"


def test_a_leaf_cannot_act_as_a_ca(ca: CertificateAuthority, trust: TrustStore) -> None:
    """A participant's certificate signing another certificate is not a chain."""
    bank = issued(ca, Role.bank("B1"))
    fake_ca = CertificateAuthority(cert=bank.cert, key=bank.key)
    key = generate_key()
    child = fake_ca.issue(Role.node(pilot.HEFEI), key.public_key(), not_before=ISSUED)
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain([_der(child), bank.chain_der[0]], NOW)
    assert err.value.rule == "cert.untrusted"


def test_the_ca_certificate_itself_is_not_a_participant(ca: CertificateAuthority, trust: TrustStore) -> None:
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain([_der(ca.cert)], NOW)
    assert err.value.rule == "cert.untrusted"


@pytest.mark.parametrize(
    ("start", "validity"),
    [
        (NOW - dt.timedelta(days=3), dt.timedelta(days=1)),  # expired
        (NOW + dt.timedelta(hours=1), dt.timedelta(days=1)),  # not yet valid
    ],
    ids=["expired", "not-yet-valid"],
)
def test_a_certificate_outside_its_validity_is_refused(
    ca: CertificateAuthority, trust: TrustStore, start: dt.datetime, validity: dt.timedelta
) -> None:
    ident = issue_identity(ca, Role.bank("B1"), not_before=start, validity=validity)
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain(ident.chain_der, NOW)
    assert err.value.rule == "cert.expired"
    assert err.value.code.name == "UNAUTHENTICATED"


def test_a_cache_hit_still_refuses_an_expired_certificate(
    ca: CertificateAuthority, trust: TrustStore
) -> None:
    ident = issue_identity(
        ca, Role.bank("B1"), not_before=NOW - dt.timedelta(hours=1), validity=dt.timedelta(hours=2)
    )
    first = trust.verify_chain(ident.chain_der, NOW)
    assert trust.verify_chain(ident.chain_der, NOW + dt.timedelta(minutes=30)) is first  # from the cache
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain(ident.chain_der, NOW + dt.timedelta(hours=1, seconds=1))
    assert err.value.rule == "cert.expired"


def test_the_cache_is_bounded(ca: CertificateAuthority) -> None:
    trust = TrustStore(ca.cert, cache_size=2)
    idents = [issued(ca, Role.bank(f"B{i}")) for i in range(3)]
    first = trust.verify_chain(idents[0].chain_der, NOW)
    for ident in idents[1:]:
        trust.verify_chain(ident.chain_der, NOW)
    # The oldest entry was evicted: verifying again builds a new result.
    again = trust.verify_chain(idents[0].chain_der, NOW)
    assert again == first and again is not first


def test_chains_are_bounded_before_parsing(ca: CertificateAuthority, trust: TrustStore) -> None:
    der = issued(ca, Role.bank("B1")).chain_der[0]
    for chain in ([], [der] * (MAX_CHAIN_LENGTH + 1), [der + b"\x00" * 8192]):
        with pytest.raises(Unauthenticated) as err:
            trust.verify_chain(chain, NOW)
        assert err.value.rule == "cert.chain"


def test_garbage_certificates_are_malformed(trust: TrustStore) -> None:
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain([b"\x30\x03\x02\x01\x01"], NOW)
    assert err.value.rule == "cert.malformed"
    with pytest.raises(Unauthenticated) as pem_err:
        trust.verify_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", NOW)
    assert pem_err.value.rule == "cert.malformed"


def test_signer_keys_must_be_p256(ca: CertificateAuthority, trust: TrustStore) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    cert = _leaf_with_names(ca, [x509.UniformResourceIdentifier("creditnet://bank/B1")], key=p384)
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain([_der(cert)], NOW)
    assert err.value.rule == "cert.key"


def test_role_kinds_cover_the_documented_roles() -> None:
    documented = {"node", "aggregator", "bank", "enterprise", "provider", "operator", "logkey", "governance"}
    assert {k.value for k in RoleKind} == documented


# --- keyUsage ------------------------------------------------------------------

NOT_FOR_SIGNING = {
    "no-key-usage": None,
    "key-encipherment-only": (_key_usage(digital_signature=False, key_encipherment=True), True),
    "not-critical": (_key_usage(), False),
}


@pytest.mark.parametrize("key_usage", NOT_FOR_SIGNING.values(), ids=NOT_FOR_SIGNING.keys())
def test_a_certificate_that_does_not_allow_signing_is_refused(
    ca: CertificateAuthority, trust: TrustStore, key_usage: tuple[x509.KeyUsage, bool] | None
) -> None:
    """The RFC 5280 web profile alone would accept each of these forged certificates."""
    bank = [x509.UniformResourceIdentifier("creditnet://bank/B1")]
    cert = _leaf_with_names(ca, bank, key_usage=key_usage)
    with pytest.raises(Unauthenticated) as err:
        trust.verify_chain([_der(cert)], NOW)
    assert err.value.rule == "cert.key_usage"
    with pytest.raises(Unauthenticated) as pem_err:
        trust.verify_pem(cert.public_bytes(serialization.Encoding.PEM), NOW)
    assert pem_err.value.rule == "cert.key_usage"
    # The same certificate with the profile's keyUsage verifies.
    assert trust.verify_chain([_der(_leaf_with_names(ca, bank))], NOW).role == Role.bank("B1")


@pytest.mark.parametrize("key_usage", NOT_FOR_SIGNING.values(), ids=NOT_FOR_SIGNING.keys())
def test_a_log_key_certificate_that_does_not_allow_signing_is_refused(
    ca: CertificateAuthority, trust: TrustStore, key_usage: tuple[x509.KeyUsage, bool] | None
) -> None:
    names = [x509.UniformResourceIdentifier("creditnet://logkey/340100")]
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(Unauthenticated) as err:
        trust.verify_log_key(_der(_leaf_with_names(ca, names, key, key_usage=key_usage)), NOW)
    assert err.value.rule == "cert.key_usage"
    assert trust.verify_log_key(_der(_leaf_with_names(ca, names, key)), NOW).name == "340100"


def test_an_envelope_signed_under_a_certificate_not_for_signing_is_refused(
    ca: CertificateAuthority, trust: TrustStore
) -> None:
    key = generate_key()
    names = [x509.UniformResourceIdentifier(f"creditnet://enterprise/{USCC}")]
    forged = _leaf_with_names(ca, names, key, key_usage=NOT_FOR_SIGNING["key-encipherment-only"])
    signer = Identity.from_objects(key, forged)
    env = sign(CONSENT_TYPE, b"\x0a\x01x", signer)
    with pytest.raises(Unauthenticated) as err:
        EnvelopeVerifier(trust).verify(env, CONSENT_TYPE, what="consent", at=NOW)
    assert err.value.rule == "consent.cert.key_usage"


@pytest.mark.parametrize("role", ROLES, ids=str)
def test_every_certificate_the_ca_issues_meets_the_verifiers_profile(
    ca: CertificateAuthority, trust: TrustStore, role: Role
) -> None:
    if role.kind is RoleKind.LOGKEY:
        key = ed25519.Ed25519PrivateKey.generate()
        cert = ca.issue(role, key.public_key(), not_before=ISSUED)
        assert trust.verify_log_key(_der(cert), NOW).name == role.subject
    else:
        ident = issued(ca, role, dns_names=["extra.example.org"])
        assert trust.verify_chain(ident.chain_der, NOW).role == role
        cert = ident.cert
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    csr_key = generate_key()
    from_csr = ca.issue_from_csr(make_csr(csr_key, Role.bank("B9")), Role.bank("B9"), not_before=ISSUED)
    assert trust.verify_chain([_der(from_csr)], NOW).role == Role.bank("B9")
