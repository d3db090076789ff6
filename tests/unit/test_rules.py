"""Every stateless rule of `query.authorize` and of consent and revocation verification.

Each refusal case differs from the valid query of `test_a_valid_query_is_authorized`
in one respect only and asserts the rule id and status code it is refused
with, so removing or reordering a rule makes its test fail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from creditnet import consent as consent_mod
from creditnet import pilot
from creditnet import query as query_mod
from creditnet.consent import ConsentTerms, grant, revoke, verify_consent, verify_revocation
from creditnet.dates import date_to_proto, ts_to_proto, utcnow
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import CONSENT_TYPE, QUERY_TYPE, REVOCATION_TYPE, EnvelopeVerifier, sign
from creditnet.errors import CreditnetError, PermissionDenied
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.policy import check_window
from creditnet.query import CLOCK_SKEW, MAX_QUERY_LIFETIME, AuthorizedQuery
from creditnet.sealing import AnswerKeyPair, AnswerSuite
from creditnet.v2 import common_pb2, consent_pb2, envelope_pb2, query_pb2

NOW = utcnow().replace(microsecond=0)
# Certificates are issued as of NOW, however long after import a test runs.
ISSUED = NOW - dt.timedelta(minutes=5)


def issued(ca: CertificateAuthority, role: Role, **kw: object) -> Identity:
    return issue_identity(ca, role, not_before=ISSUED, **kw)


USCC = "91340100MA2N0U3E6T"  # registered in Hefei
OTHER_USCC = "91310000MA1FL8XQ37"  # registered in Shanghai
BANK = "B0001H231000001"
OTHER_BANK = "B0002H231000002"


@dataclass(frozen=True)
class World:
    enterprise: Identity
    other_enterprise: Identity
    foreign_enterprise: Identity
    bank: Identity
    other_bank: Identity
    node: Identity
    aggregator: Identity
    provider: Identity
    verifier: EnvelopeVerifier


@pytest.fixture(scope="module")
def w() -> World:
    ca = CertificateAuthority.create("unit-test CA", not_before=ISSUED)
    foreign = CertificateAuthority.create("a CA nobody trusts", not_before=ISSUED)
    return World(
        enterprise=issued(ca, Role.enterprise(USCC)),
        other_enterprise=issued(ca, Role.enterprise(OTHER_USCC)),
        foreign_enterprise=issued(foreign, Role.enterprise(USCC)),
        bank=issued(ca, Role.bank(BANK)),
        other_bank=issued(ca, Role.bank(OTHER_BANK)),
        node=issued(ca, Role.node(pilot.HEFEI)),
        aggregator=issued(ca, Role.aggregator()),
        provider=issued(ca, Role.provider(pilot.HEFEI, "grid", [Category.UTILITY])),
        verifier=EnvelopeVerifier(TrustStore(ca.cert)),
    )


def terms(**changes: object) -> ConsentTerms:
    base = ConsentTerms(
        consent_id="c-0001",
        enterprise_uscc=USCC,
        bank_code=BANK,
        purpose=Purpose.LOAN_APPLICATION,
        categories=(Category.UTILITY, Category.TAX, Category.LOAN),
        cities=(pilot.HEFEI, pilot.SHANGHAI),
        data_from=dt.date(2020, 1, 1),
        data_to=dt.date(2025, 12, 31),
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=30),
        max_uses=3,
        issued_at=NOW - dt.timedelta(days=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def consent(w: World, **changes: object) -> envelope_pb2.SignedEnvelope:
    return grant(w.enterprise, terms(**changes))


def forged_consent(
    signer: Identity, mutate: Callable[[consent_pb2.Consent], object] = lambda m: None
) -> envelope_pb2.SignedEnvelope:
    """The default terms, changed by `mutate` and signed by `signer` without grant()'s checks."""
    msg = terms().to_proto()
    mutate(msg)
    return sign(CONSENT_TYPE, msg.SerializeToString(), signer)


def query_msg(consent_env: envelope_pb2.SignedEnvelope, **fields: object) -> query_pb2.CreditQuery:
    msg = query_pb2.CreditQuery(
        query_id=str(uuid.uuid4()),
        enterprise_uscc=USCC,
        bank_code=BANK,
        purpose=Purpose.LOAN_APPLICATION.proto,
        categories=[Category.TAX.proto],
        cities=[pilot.HEFEI.proto],
        issued_at=ts_to_proto(NOW - dt.timedelta(seconds=10)),
        expires_at=ts_to_proto(NOW + dt.timedelta(seconds=110)),
        consent=consent_env,
        answer_key=AnswerKeyPair.generate(AnswerSuite.X25519).proto,
    )
    loose: Any = msg  # fields are set by name, including deliberately invalid values
    for name, value in fields.items():
        if isinstance(value, list):
            loose.ClearField(name)
            getattr(msg, name).extend(value)
        elif isinstance(value, dt.datetime):
            getattr(msg, name).CopyFrom(ts_to_proto(value))
        elif value is None:
            loose.ClearField(name)
        elif isinstance(value, query_pb2.AnswerKey):
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def signed(msg: query_pb2.CreditQuery, signer: Identity) -> envelope_pb2.SignedEnvelope:
    return sign(QUERY_TYPE, msg.SerializeToString(), signer)


def ask(
    w: World, env: envelope_pb2.SignedEnvelope, city: City | None = pilot.HEFEI, now: dt.datetime = NOW
) -> AuthorizedQuery:
    return query_mod.authorize(w.verifier, env, city=city, now=now)


def refusal(
    w: World, env: envelope_pb2.SignedEnvelope, city: City | None = pilot.HEFEI, now: dt.datetime = NOW
) -> tuple[str, str]:
    with pytest.raises(CreditnetError) as err:
        ask(w, env, city, now)
    return err.value.rule, err.value.code.name


# --- what passes ------------------------------------------------------------------


def test_a_valid_query_is_authorized(w: World) -> None:
    consent_env = consent(w)
    env = query_mod.build(
        w.bank,
        consent_env,
        enterprise_uscc=USCC,
        purpose=Purpose.LOAN_APPLICATION,
        categories=(Category.TAX,),
        cities=(pilot.HEFEI,),
        now=NOW,
    )
    aq = ask(w, env)
    assert aq.categories == (Category.TAX,)
    assert aq.cities == (pilot.HEFEI,)
    assert (aq.data_from, aq.data_to) == (dt.date(2020, 1, 1), dt.date(2025, 12, 31))
    assert aq.bank.role == w.bank.role
    assert aq.digest == hashlib.sha256(env.payload).digest()
    assert aq.consent.digest == hashlib.sha256(consent_env.payload).digest()
    assert aq.consent.terms == terms()
    assert aq.terms.expires_at - aq.terms.issued_at == query_mod.DEFAULT_QUERY_LIFETIME
    # The hand-built query of the refusal cases passes too.
    assert ask(w, signed(query_msg(consent_env), w.bank)).categories == (Category.TAX,)


def test_an_empty_query_scope_means_the_whole_consent(w: World) -> None:
    env = signed(query_msg(consent(w), categories=[], cities=[]), w.bank)
    aq = ask(w, env)
    assert aq.categories == (Category.UTILITY, Category.TAX, Category.LOAN)
    assert aq.cities == (pilot.SHANGHAI, pilot.HEFEI)  # protocol order


def test_a_consent_without_cities_covers_every_member_city(w: World) -> None:
    env = signed(query_msg(consent(w, cities=()), cities=[]), w.bank)
    for city in (*pilot.CITIES, City("320500")):
        aq = ask(w, env, city)
        assert aq.cities == ()
        assert aq.scope([City("320500"), *pilot.CITIES]) == tuple(sorted((*pilot.CITIES, City("320500"))))


def test_the_aggregator_applies_the_rules_without_a_city(w: World) -> None:
    env = signed(query_msg(consent(w), cities=[pilot.SHANGHAI.proto]), w.bank)
    assert ask(w, env, None).cities == (pilot.SHANGHAI,)
    assert refusal(w, env, pilot.HEFEI) == ("query.city_not_in_scope", "PERMISSION_DENIED")


# --- the query envelope and its signer ------------------------------------------


def test_a_query_of_another_payload_type_is_refused(w: World) -> None:
    assert refusal(w, consent(w)) == ("query.type", "INVALID_ARGUMENT")


def test_a_tampered_query_is_refused(w: World) -> None:
    env = signed(query_msg(consent(w)), w.bank)
    env.payload = query_msg(consent(w), categories=[]).SerializeToString()
    assert refusal(w, env) == ("query.signature", "UNAUTHENTICATED")


@pytest.mark.parametrize("who", ["enterprise", "node", "aggregator", "provider"])
def test_only_a_bank_signs_queries(w: World, who: str) -> None:
    signer: Identity = getattr(w, who)
    assert refusal(w, signed(query_msg(consent(w)), signer)) == ("query.signer_role", "PERMISSION_DENIED")


def test_build_refuses_a_signer_that_is_not_a_bank(w: World) -> None:
    with pytest.raises(PermissionDenied) as err:
        query_mod.build(w.aggregator, consent(w), enterprise_uscc=USCC, purpose=Purpose.LOAN_APPLICATION)
    assert err.value.rule == "query.signer_role"


def test_the_query_must_name_the_bank_that_signs_it(w: World) -> None:
    """Another bank cannot sign a query in the name of the consented bank."""
    env = signed(query_msg(consent(w)), w.other_bank)
    assert refusal(w, env) == ("query.bank_mismatch", "PERMISSION_DENIED")


# --- malformed queries ----------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"query_id": "not-a-uuid"},
        {"query_id": ""},
        {"purpose": 0},
        {"purpose": 99},
        {"categories": [0]},
        {"categories": [Category.TAX.proto, 42]},
        {"cities": [""]},
        {"cities": [pilot.HEFEI.proto, "17"]},
        {"cities": [pilot.HEFEI.proto, "340000"]},
        {"cities": [pilot.HEFEI.proto, pilot.HEFEI.proto]},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_malformed_query_fields_are_refused(w: World, fields: dict[str, object]) -> None:
    env = signed(query_msg(consent(w), **fields), w.bank)
    assert refusal(w, env) == ("query.malformed", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "spell",
    [str.upper, lambda u: "{" + u + "}", lambda u: "urn:uuid:" + u, lambda u: u.replace("-", "")],
    ids=["upper", "braced", "urn", "no-dashes"],
)
def test_a_query_id_in_any_but_the_canonical_spelling_is_refused(
    w: World, spell: Callable[[str], str]
) -> None:
    # Replay protection compares ids as strings: a second spelling of an
    # answered id would be a second answer.
    env = signed(query_msg(consent(w), query_id=spell(str(uuid.uuid4()))), w.bank)
    assert refusal(w, env) == ("query.malformed", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "fields",
    [
        {"categories": [Category.TAX.proto, Category.TAX.proto]},
        {"cities": [pilot.HEFEI.proto, pilot.HEFEI.proto]},
        {"categories": [Category.TAX.proto] * (len(Category) + 1)},
    ],
    ids=["category-twice", "city-twice", "too-many-categories"],
)
def test_repeated_scope_values_are_refused(w: World, fields: dict[str, object]) -> None:
    env = signed(query_msg(consent(w), **fields), w.bank)
    assert refusal(w, env) == ("query.malformed", "INVALID_ARGUMENT")


def test_a_million_repeated_categories_are_refused_before_the_signature_is_checked(w: World) -> None:
    # About 1 MiB: under the envelope limit, over a query's. Refused on its
    # length alone, before any hashing, parsing or lookups.
    env = signed(query_msg(consent(w), categories=[Category.TAX.proto] * 1_000_000), w.bank)
    assert len(env.payload) > query_mod.MAX_QUERY_PAYLOAD_BYTES
    env.signatures[0].signature = b"\x00" * 64  # not even a valid signature: never looked at
    assert refusal(w, env) == ("query.size", "INVALID_ARGUMENT")


def test_a_consent_repeating_a_category_is_refused(w: World) -> None:
    env = forged_consent(w.enterprise, lambda m: m.categories.append(Category.TAX.proto))
    env = signed(query_msg(env), w.bank)
    assert refusal(w, env) == ("consent.malformed", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "spell", [str.lower, lambda u: u[:6] + "-" + u[6:], lambda u: u.translate({ord("1"): "１"})]
)
def test_a_uscc_in_any_but_the_canonical_spelling_is_refused(w: World, spell: Callable[[str], str]) -> None:
    assert spell(USCC) != USCC
    env = signed(query_msg(consent(w), enterprise_uscc=spell(USCC)), w.bank)
    assert refusal(w, env) == ("query.uscc", "INVALID_ARGUMENT")
    consent_env = forged_consent(w.enterprise, lambda m: setattr(m, "enterprise_uscc", spell(USCC)))
    assert refusal(w, signed(query_msg(consent_env), w.bank)) == ("consent.malformed", "INVALID_ARGUMENT")


def test_build_writes_what_a_person_typed_in_canonical_form(w: World) -> None:
    env = query_mod.build(w.bank, consent(w), enterprise_uscc=USCC.lower(), purpose=Purpose.LOAN_APPLICATION)
    assert query_mod.parse_terms(env.payload)[0].enterprise_uscc == USCC


def test_a_query_payload_that_is_not_a_creditquery_is_refused(w: World) -> None:
    env = sign(QUERY_TYPE, b"\xff\xff\xff\xff", w.bank)
    assert refusal(w, env) == ("query.malformed", "INVALID_ARGUMENT")


@pytest.mark.parametrize("uscc", ["91340100MA2N0U3E6X", "9134010", "", "91340100MA2N0U3E6T0"])
def test_an_invalid_uscc_in_a_query_is_refused(w: World, uscc: str) -> None:
    env = signed(query_msg(consent(w), enterprise_uscc=uscc), w.bank)
    assert refusal(w, env) == ("query.uscc", "INVALID_ARGUMENT")


def test_build_refuses_an_invalid_uscc(w: World) -> None:
    with pytest.raises(ValueError):
        query_mod.build(w.bank, consent(w), enterprise_uscc="91340100MA2N0U3E6X", purpose=Purpose.GUARANTEE)


def test_a_query_without_a_consent_is_refused(w: World) -> None:
    env = signed(query_msg(consent(w), consent=None), w.bank)
    assert refusal(w, env) == ("query.consent_missing", "INVALID_ARGUMENT")


# --- query times ----------------------------------------------------------------


def test_a_query_issued_beyond_the_clock_skew_is_not_yet_valid(w: World) -> None:
    issued = NOW + CLOCK_SKEW + dt.timedelta(seconds=1)
    env = signed(query_msg(consent(w), issued_at=issued, expires_at=issued + dt.timedelta(minutes=1)), w.bank)
    assert refusal(w, env) == ("query.not_yet_valid", "FAILED_PRECONDITION")


def test_a_query_issued_within_the_clock_skew_is_accepted(w: World) -> None:
    issued = NOW + CLOCK_SKEW
    env = signed(query_msg(consent(w), issued_at=issued, expires_at=issued + dt.timedelta(minutes=1)), w.bank)
    assert ask(w, env).terms.issued_at == issued


@pytest.mark.parametrize(
    "lifetime",
    [dt.timedelta(0), -dt.timedelta(seconds=1), MAX_QUERY_LIFETIME + dt.timedelta(seconds=1)],
    ids=["zero", "negative", "too-long"],
)
def test_a_query_lifetime_outside_zero_to_five_minutes_is_refused(w: World, lifetime: dt.timedelta) -> None:
    issued = NOW - dt.timedelta(seconds=10)
    env = signed(query_msg(consent(w), issued_at=issued, expires_at=issued + lifetime), w.bank)
    assert refusal(w, env) == ("query.lifetime", "INVALID_ARGUMENT")


def test_a_query_may_live_exactly_five_minutes(w: World) -> None:
    issued = NOW - dt.timedelta(seconds=10)
    env = signed(query_msg(consent(w), issued_at=issued, expires_at=issued + MAX_QUERY_LIFETIME), w.bank)
    assert ask(w, env)


def test_a_query_without_times_is_refused(w: World) -> None:
    env = signed(query_msg(consent(w), issued_at=None, expires_at=None), w.bank)
    assert refusal(w, env) == ("query.lifetime", "INVALID_ARGUMENT")


def test_build_refuses_a_lifetime_over_five_minutes(w: World) -> None:
    with pytest.raises(CreditnetError) as err:
        query_mod.build(
            w.bank,
            consent(w),
            enterprise_uscc=USCC,
            purpose=Purpose.LOAN_APPLICATION,
            lifetime=MAX_QUERY_LIFETIME + dt.timedelta(seconds=1),
        )
    assert err.value.rule == "query.lifetime"


def test_an_expired_query_is_refused_and_valid_up_to_its_expiry(w: World) -> None:
    env = signed(query_msg(consent(w)), w.bank)
    expires = NOW + dt.timedelta(seconds=110)
    assert ask(w, env, now=expires)
    late = expires + dt.timedelta(microseconds=1)
    assert refusal(w, env, now=late) == ("query.expired", "FAILED_PRECONDITION")


# --- the consent the query carries ---------------------------------------------


def test_a_consent_of_another_payload_type_is_refused(w: World) -> None:
    revocation = revoke(w.enterprise, consent(w), now=NOW)
    env = signed(query_msg(revocation), w.bank)
    assert refusal(w, env) == ("consent.type", "INVALID_ARGUMENT")


def test_a_tampered_consent_is_refused(w: World) -> None:
    """The bank cannot widen a consent: its own valid signature does not cover the enterprise's."""
    forged = consent(w)
    forged.payload = terms(categories=tuple(Category)).to_proto().SerializeToString()
    env = signed(query_msg(forged), w.bank)
    assert refusal(w, env) == ("consent.signature", "UNAUTHENTICATED")


def test_a_consent_signed_under_a_foreign_ca_is_refused(w: World) -> None:
    env = signed(query_msg(forged_consent(w.foreign_enterprise)), w.bank)
    assert refusal(w, env) == ("consent.cert.untrusted", "UNAUTHENTICATED")


@pytest.mark.parametrize("who", ["bank", "node", "aggregator", "other_enterprise"])
def test_only_the_enterprise_named_signs_its_consent(w: World, who: str) -> None:
    env = signed(query_msg(forged_consent(getattr(w, who))), w.bank)
    assert refusal(w, env) == ("consent.signer", "PERMISSION_DENIED")


def test_a_bank_whose_code_is_the_uscc_cannot_sign_the_consent(w: World) -> None:
    """The signer's role kind counts, not only the name in its certificate."""
    ca = CertificateAuthority.create("unit-test CA 2", not_before=ISSUED)
    lookalike = issued(ca, Role.bank(USCC))
    verifier = EnvelopeVerifier(TrustStore(ca.cert))
    with pytest.raises(PermissionDenied) as err:
        verify_consent(verifier, forged_consent(lookalike), at=NOW)
    assert err.value.rule == "consent.signer"
    assert verify_consent(verifier, grant(issued(ca, Role.enterprise(USCC)), terms()), at=NOW)


@pytest.mark.parametrize("who", ["bank", "other_enterprise"])
def test_grant_refuses_a_signer_that_is_not_the_enterprise_named(w: World, who: str) -> None:
    with pytest.raises(PermissionDenied) as err:
        grant(getattr(w, who), terms())
    assert err.value.rule == "consent.signer"


def _set_date(field: str, **date: int) -> Callable[[consent_pb2.Consent], object]:
    return lambda m: getattr(m, field).CopyFrom(common_pb2.Date(**date))


MALFORMED_CONSENTS: dict[str, Callable[[consent_pb2.Consent], object]] = {
    "invalid-uscc": lambda m: setattr(m, "enterprise_uscc", "91340100MA2N0U3E6X"),
    "no-bank": lambda m: setattr(m, "bank_code", ""),
    "no-purpose": lambda m: setattr(m, "purpose", 0),
    "unknown-purpose": lambda m: setattr(m, "purpose", 77),
    "no-categories": lambda m: m.ClearField("categories"),
    "unknown-category": lambda m: m.categories.append(common_pb2.Category.ValueType(42)),
    "unknown-city": lambda m: m.cities.append("340000"),
    "malformed-city": lambda m: m.cities.append("hefei"),
    "no-data-from": lambda m: m.ClearField("data_from"),
    "impossible-date": _set_date("data_to", year=2025, month=2, day=30),
    "data-period-inverted": lambda m: m.data_from.CopyFrom(date_to_proto(dt.date(2026, 1, 1))),
    "window-inverted": lambda m: m.not_after.CopyFrom(m.not_before),
    "no-window": lambda m: [m.ClearField(f) for f in ("not_before", "not_after")],  # type: ignore[func-returns-value]
    "longer-than-three-years": lambda m: m.not_after.CopyFrom(
        ts_to_proto(NOW + consent_mod.MAX_CONSENT_VALIDITY)
    ),
    "no-consent-id": lambda m: setattr(m, "consent_id", ""),
    "consent-id-too-long": lambda m: setattr(m, "consent_id", "c" * 65),
}


@pytest.mark.parametrize("mutate", MALFORMED_CONSENTS.values(), ids=MALFORMED_CONSENTS.keys())
def test_malformed_consents_are_refused(w: World, mutate: Callable[[consent_pb2.Consent], object]) -> None:
    env = signed(query_msg(forged_consent(w.enterprise, mutate)), w.bank)
    assert refusal(w, env) == ("consent.malformed", "INVALID_ARGUMENT")


def test_a_consent_payload_that_is_not_a_consent_is_refused(w: World) -> None:
    env = signed(query_msg(sign(CONSENT_TYPE, b"\xff\xff\xff\xff", w.enterprise)), w.bank)
    assert refusal(w, env) == ("consent.malformed", "INVALID_ARGUMENT")


def test_consent_terms_are_validated_before_signing(w: World) -> None:
    for bad in (terms(max_uses=-1), terms(categories=()), terms(enterprise_uscc="x")):
        with pytest.raises(CreditnetError) as err:
            grant(w.enterprise, bad)
        assert err.value.rule == "consent.malformed"


def test_a_consent_of_another_enterprise_is_refused(w: World) -> None:
    other = grant(w.other_enterprise, terms(enterprise_uscc=OTHER_USCC))
    env = signed(query_msg(other), w.bank)
    assert refusal(w, env) == ("consent.enterprise_mismatch", "PERMISSION_DENIED")


def test_a_consent_for_another_bank_is_refused(w: World) -> None:
    env = signed(query_msg(consent(w, bank_code=OTHER_BANK)), w.bank)
    assert refusal(w, env) == ("consent.bank_mismatch", "PERMISSION_DENIED")


@pytest.mark.parametrize("purpose", [p for p in Purpose if p is not Purpose.LOAN_APPLICATION])
def test_a_consent_for_another_purpose_is_refused(w: World, purpose: Purpose) -> None:
    env = signed(query_msg(consent(w), purpose=purpose.proto), w.bank)
    assert refusal(w, env) == ("consent.purpose_mismatch", "PERMISSION_DENIED")


def test_a_consent_not_yet_valid_is_refused_and_valid_from_its_start(w: World) -> None:
    start = NOW + dt.timedelta(hours=1)
    env = signed(query_msg(consent(w, not_before=start)), w.bank)
    assert refusal(w, env) == ("consent.not_yet_valid", "FAILED_PRECONDITION")
    at_start = signed(query_msg(consent(w, not_before=NOW)), w.bank)
    assert ask(w, at_start)


def test_an_expired_consent_is_refused_and_valid_to_its_end(w: World) -> None:
    ended = signed(
        query_msg(consent(w, not_before=NOW - dt.timedelta(days=2), not_after=NOW - dt.timedelta(seconds=1))),
        w.bank,
    )
    assert refusal(w, ended) == ("consent.expired", "FAILED_PRECONDITION")
    at_end = signed(query_msg(consent(w, not_after=NOW)), w.bank)
    assert ask(w, at_end)


def test_check_window_alone(w: World) -> None:
    t = terms()
    check_window(t, t.not_before)
    check_window(t, t.not_after)
    for at, rule in (
        (t.not_before - dt.timedelta(microseconds=1), "consent.not_yet_valid"),
        (t.not_after + dt.timedelta(microseconds=1), "consent.expired"),
    ):
        with pytest.raises(CreditnetError) as err:
            check_window(t, at)
        assert (err.value.rule, err.value.code.name) == (rule, "FAILED_PRECONDITION")


# --- scope ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "categories",
    [[Category.JUDICIAL], [Category.TAX, Category.JUDICIAL]],
    ids=["other", "widened"],
)
def test_categories_outside_the_consent_are_refused(w: World, categories: list[Category]) -> None:
    env = signed(query_msg(consent(w), categories=[c.proto for c in categories]), w.bank)
    assert refusal(w, env) == ("consent.category_not_covered", "PERMISSION_DENIED")


@pytest.mark.parametrize(
    "cities",
    [[pilot.NANJING], [pilot.HEFEI, pilot.NANJING]],
    ids=["other", "widened"],
)
def test_cities_outside_the_consent_are_refused(w: World, cities: list[City]) -> None:
    env = signed(query_msg(consent(w), cities=[c.proto for c in cities]), w.bank)
    # Refused by every node, the aggregator included, not only by the cities added.
    for city in (None, pilot.HEFEI, pilot.NANJING):
        assert refusal(w, env, city) == ("consent.city_not_covered", "PERMISSION_DENIED")


def test_a_node_outside_the_query_scope_refuses(w: World) -> None:
    asks_shanghai = signed(query_msg(consent(w), cities=[pilot.SHANGHAI.proto]), w.bank)
    assert refusal(w, asks_shanghai, pilot.HEFEI) == ("query.city_not_in_scope", "PERMISSION_DENIED")
    # An empty query scope is the consent's cities: Nanjing is not among them.
    asks_all = signed(query_msg(consent(w), cities=[]), w.bank)
    assert refusal(w, asks_all, pilot.NANJING) == ("query.city_not_in_scope", "PERMISSION_DENIED")


# --- the order of the checks ------------------------------------------------------


def test_rules_are_checked_in_the_documented_order(w: World) -> None:
    """An envelope breaking several rules is refused by the first in docs/protocol.md."""
    late = NOW + dt.timedelta(hours=1)
    cases = [
        # bank mismatch comes before any time rule
        (signed(query_msg(consent(w)), w.other_bank), late, "query.bank_mismatch"),
        # query times come before the consent is even looked at
        (signed(query_msg(forged_consent(w.bank)), w.bank), late, "query.expired"),
        # the consent's signer before its terms
        (
            signed(query_msg(forged_consent(w.bank), purpose=Purpose.GUARANTEE.proto), w.bank),
            NOW,
            "consent.signer",
        ),
        # enterprise, bank, purpose, then the window, then the scope
        (
            signed(query_msg(consent(w, bank_code=OTHER_BANK), purpose=Purpose.GUARANTEE.proto), w.bank),
            NOW,
            "consent.bank_mismatch",
        ),
        (
            signed(
                query_msg(
                    consent(w, not_after=NOW - dt.timedelta(seconds=1)), purpose=Purpose.GUARANTEE.proto
                ),
                w.bank,
            ),
            NOW,
            "consent.purpose_mismatch",
        ),
        (
            signed(
                query_msg(
                    consent(w, not_after=NOW - dt.timedelta(seconds=1)), categories=[Category.JUDICIAL.proto]
                ),
                w.bank,
            ),
            NOW,
            "consent.expired",
        ),
        (
            signed(
                query_msg(consent(w), categories=[Category.JUDICIAL.proto], cities=[pilot.NANJING.proto]),
                w.bank,
            ),
            NOW,
            "consent.category_not_covered",
        ),
    ]
    for env, now, rule in cases:
        assert refusal(w, env, now=now)[0] == rule


# --- verify_consent on its own -----------------------------------------------------


def test_verify_consent_returns_the_terms_and_digest(w: World) -> None:
    env = consent(w)
    got = verify_consent(w.verifier, env, at=NOW)
    assert got.terms == terms()
    assert got.digest == hashlib.sha256(env.payload).digest()
    assert got.envelope is env


def test_verify_consent_does_not_check_the_window(w: World) -> None:
    """The window is the caller's check_window, at the time of use."""
    env = consent(w, not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=2))
    assert verify_consent(w.verifier, env, at=NOW).terms.not_before > NOW


# --- revocations -----------------------------------------------------------------


def test_a_revocation_names_the_consent_by_digest(w: World) -> None:
    consent_env = consent(w)
    env = revoke(w.enterprise, consent_env, reason="loan withdrawn", now=NOW)
    got = verify_revocation(w.verifier, env, consent_env, at=NOW)
    assert got.consent_digest == hashlib.sha256(consent_env.payload).digest()
    assert (got.consent_id, got.enterprise_uscc, got.reason) == ("c-0001", USCC, "loan withdrawn")
    assert got.revoked_at == NOW
    assert got.envelope is env


@pytest.mark.parametrize("who", ["bank", "other_enterprise"])
def test_revoke_refuses_anyone_but_the_granting_enterprise(w: World, who: str) -> None:
    with pytest.raises(PermissionDenied) as err:
        revoke(getattr(w, who), consent(w), now=NOW)
    assert err.value.rule == "revocation.signer"


def _revocation(**fields: object) -> consent_pb2.ConsentRevocation:
    msg = consent_pb2.ConsentRevocation(
        consent_id="c-0001",
        enterprise_uscc=USCC,
        consent_digest=b"\x11" * 32,
        revoked_at=ts_to_proto(NOW),
    )
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize("who", ["bank", "other_enterprise", "node"])
def test_a_revocation_must_be_signed_by_the_enterprise_it_names(w: World, who: str) -> None:
    env = sign(REVOCATION_TYPE, _revocation().SerializeToString(), getattr(w, who))
    with pytest.raises(CreditnetError) as err:
        verify_revocation(w.verifier, env, consent(w), at=NOW)
    assert (err.value.rule, err.value.code.name) == ("revocation.signer", "PERMISSION_DENIED")


def test_an_enterprise_cannot_revoke_another_enterprises_consent(w: World) -> None:
    """Naming itself as the revoker and the digest of somebody else's consent fails."""
    victim = consent(w)
    msg = _revocation(
        consent_digest=hashlib.sha256(victim.payload).digest(),
        enterprise_uscc=w.other_enterprise.role.subject,
    )
    env = sign(REVOCATION_TYPE, msg.SerializeToString(), w.other_enterprise)
    with pytest.raises(CreditnetError) as err:
        verify_revocation(w.verifier, env, victim, at=NOW)
    assert (err.value.rule, err.value.code.name) == ("revocation.signer", "PERMISSION_DENIED")


def test_a_revocation_must_come_with_the_consent_it_names(w: World) -> None:
    env = revoke(w.enterprise, consent(w), now=NOW)
    with pytest.raises(CreditnetError) as err:
        verify_revocation(w.verifier, env, consent(w, max_uses=7), at=NOW)
    assert (err.value.rule, err.value.code.name) == ("revocation.consent_mismatch", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",
        _revocation(consent_digest=b"\x11" * 31).SerializeToString(),
        _revocation(consent_digest=b"").SerializeToString(),
    ],
    ids=["not-protobuf", "short-digest", "no-digest"],
)
def test_malformed_revocations_are_refused(w: World, payload: bytes) -> None:
    with pytest.raises(CreditnetError) as err:
        verify_revocation(w.verifier, sign(REVOCATION_TYPE, payload, w.enterprise), consent(w), at=NOW)
    assert (err.value.rule, err.value.code.name) == ("revocation.malformed", "INVALID_ARGUMENT")


def test_a_revocation_envelope_is_checked_as_one(w: World) -> None:
    consent_env = consent(w)
    with pytest.raises(CreditnetError) as err:
        verify_revocation(w.verifier, consent_env, consent_env, at=NOW)
    assert err.value.rule == "revocation.type"
    tampered = revoke(w.enterprise, consent_env, now=NOW)
    tampered.payload = _revocation().SerializeToString()
    with pytest.raises(CreditnetError) as sig_err:
        verify_revocation(w.verifier, tampered, consent_env, at=NOW)
    assert sig_err.value.rule == "revocation.signature"


# -- the answer key (docs/protocol.md, "Sealed answers") ------------------------


def test_a_query_without_an_answer_key_is_refused(w: World) -> None:
    env = signed(query_msg(consent(w), answer_key=None), w.bank)
    assert refusal(w, env) == ("query.answer_key_missing", "INVALID_ARGUMENT")


@pytest.mark.parametrize("suite", [0, 3, 99])
def test_an_answer_key_of_an_unknown_suite_is_refused(w: World, suite: int) -> None:
    key = query_pb2.AnswerKey(suite=suite, public_key=bytes(32))  # type: ignore[arg-type]
    env = signed(query_msg(consent(w), answer_key=key), w.bank)
    assert refusal(w, env) == ("query.answer_key_suite", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("suite", "size"),
    [
        (AnswerSuite.X25519, 31),
        (AnswerSuite.X25519, 33),
        (AnswerSuite.X25519, 1216),
        (AnswerSuite.MLKEM768_X25519, 32),
        (AnswerSuite.MLKEM768_X25519, 1217),
        (AnswerSuite.MLKEM768_X25519, 60_000),
    ],
)
def test_an_answer_key_of_the_wrong_size_is_refused(w: World, suite: AnswerSuite, size: int) -> None:
    key = query_pb2.AnswerKey(suite=suite.proto, public_key=bytes(size))
    env = signed(query_msg(consent(w), answer_key=key), w.bank)
    assert refusal(w, env) == ("query.answer_key", "INVALID_ARGUMENT")


def _low_order_x25519(suite: AnswerSuite) -> bytes:
    good = AnswerKeyPair.generate(suite).public_bytes
    return good[:-32] + bytes(32)  # the X25519 point 0: an all-zero shared secret


@pytest.mark.parametrize(
    "key",
    [
        query_pb2.AnswerKey(suite=AnswerSuite.MLKEM768_X25519.proto, public_key=b"\xff" * 1216),
        query_pb2.AnswerKey(suite=AnswerSuite.X25519.proto, public_key=_low_order_x25519(AnswerSuite.X25519)),
        query_pb2.AnswerKey(
            suite=AnswerSuite.MLKEM768_X25519.proto, public_key=_low_order_x25519(AnswerSuite.MLKEM768_X25519)
        ),
    ],
    ids=["ml-kem-out-of-range", "x25519-low-order", "hybrid-x25519-low-order"],
)
def test_a_malformed_answer_key_is_refused(w: World, key: query_pb2.AnswerKey) -> None:
    env = signed(query_msg(consent(w), answer_key=key), w.bank)
    assert refusal(w, env) == ("query.answer_key", "INVALID_ARGUMENT")


@pytest.mark.parametrize("suite", list(AnswerSuite))
def test_both_suites_are_authorized_and_carry_the_key(w: World, suite: AnswerSuite) -> None:
    pair = AnswerKeyPair.generate(suite)
    aq = ask(w, signed(query_msg(consent(w), answer_key=pair.proto), w.bank))
    assert aq.terms.answer_key.suite is suite
