"""The consent policy (`creditnet.policy`), every rule alone, and its users agreeing with it.

The first part calls the pure functions on terms. The second signs each
(consent, query) case for real and runs it through what the node and the
aggregator run (`query.authorize`, then the aggregator's `Grant.scope` of
its members and the node's claim limit) and what the bank's SDK runs
(`scope_cities`, `answer_bounds`): each must agree with the policy's Grant,
or refuse with the policy's rule.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, replace

import pytest

from creditnet import pilot, policy
from creditnet import query as query_mod
from creditnet.consent import ConsentTerms, grant
from creditnet.dates import utcnow
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import EnvelopeVerifier
from creditnet.errors import CreditnetError
from creditnet.pki import CertificateAuthority, Identity, Role, TrustStore, issue_identity
from creditnet.v2 import envelope_pb2, query_pb2
from creditnet_bank.verify import answer_bounds, scope_cities

NOW = utcnow().replace(microsecond=0)
USCC = "91340100MA2N0U3E6T"  # registered in Hefei
OTHER_USCC = "91310000MA1FL8XQ37"
BANK = "B0001H231000001"
OTHER_BANK = "B0002H231000002"
SUZHOU = City("320500")  # a member city beyond the pilot's five
MEMBERS = (*pilot.CITIES, SUZHOU)


def terms(**changes: object) -> ConsentTerms:
    base = ConsentTerms(
        consent_id="c-0001",
        enterprise_uscc=USCC,
        bank_code=BANK,
        purpose=Purpose.LOAN_APPLICATION,
        categories=(Category.LOAN, Category.UTILITY, Category.TAX),
        cities=(pilot.HEFEI, pilot.SHANGHAI),
        data_from=dt.date(2020, 1, 1),
        data_to=dt.date(2025, 12, 31),
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=30),
        max_uses=3,
        issued_at=NOW - dt.timedelta(days=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Ask:
    enterprise_uscc: str = USCC
    bank_code: str = BANK
    purpose: Purpose = Purpose.LOAN_APPLICATION
    categories: tuple[Category, ...] = (Category.TAX,)
    cities: tuple[City, ...] = (pilot.HEFEI,)


def refused(
    consent: ConsentTerms, asked: Ask, city: City | None = pilot.HEFEI, now: dt.datetime = NOW
) -> tuple[str, str]:
    with pytest.raises(CreditnetError) as err:
        policy.permit(consent, asked, city=city, now=now)
    return err.value.rule, err.value.code.name


# --- what is granted ----------------------------------------------------------------------


def test_a_valid_query_is_granted_its_scope_and_the_consents_limits() -> None:
    got = policy.permit(terms(), Ask(), city=pilot.HEFEI, now=NOW)
    assert got == policy.Grant(
        consent_id="c-0001",
        enterprise_uscc=USCC,
        bank_code=BANK,
        purpose=Purpose.LOAN_APPLICATION,
        categories=(Category.TAX,),
        cities=(pilot.HEFEI,),
        data_from=dt.date(2020, 1, 1),
        data_to=dt.date(2025, 12, 31),
        valid_from=NOW - dt.timedelta(days=1),
        valid_until=NOW + dt.timedelta(days=30),
        max_uses=3,
    )
    assert got.covers(pilot.HEFEI) and not got.covers(pilot.SHANGHAI)
    assert got.scope(MEMBERS) == (pilot.HEFEI,)


def test_a_query_naming_nothing_is_granted_the_whole_consent_in_protocol_order() -> None:
    got = policy.permit(terms(), Ask(categories=(), cities=()), city=pilot.SHANGHAI, now=NOW)
    assert got.categories == tuple(c for c in Category if c in terms().categories)
    assert got.categories != terms().categories  # the consent lists them out of order
    assert got.cities == tuple(sorted((pilot.HEFEI, pilot.SHANGHAI)))


def test_a_consent_naming_no_city_grants_every_member_city() -> None:
    got = policy.permit(terms(cities=()), Ask(cities=()), city=SUZHOU, now=NOW)
    assert got.cities is None
    assert all(got.covers(c) for c in MEMBERS)
    assert got.scope(reversed(MEMBERS)) == tuple(sorted(MEMBERS))
    # A query naming cities under it is granted exactly those.
    assert policy.permit(terms(cities=()), Ask(cities=(SUZHOU,)), city=SUZHOU, now=NOW).cities == (SUZHOU,)


def test_no_limit_is_granted_as_zero_uses() -> None:
    assert policy.permit(terms(max_uses=0), Ask(), city=pilot.HEFEI, now=NOW).max_uses == 0


def test_the_period_is_the_consents_inclusive_bounds() -> None:
    got = policy.permit(
        terms(data_from=dt.date(2024, 2, 29), data_to=dt.date(2024, 2, 29)), Ask(), city=None, now=NOW
    )
    assert (got.data_from, got.data_to) == (dt.date(2024, 2, 29), dt.date(2024, 2, 29))


# --- every rule, alone ------------------------------------------------------------------


def test_a_consent_for_another_enterprise_is_refused() -> None:
    assert refused(terms(enterprise_uscc=OTHER_USCC), Ask()) == (
        "consent.enterprise_mismatch",
        "PERMISSION_DENIED",
    )


def test_a_consent_for_another_bank_is_refused() -> None:
    assert refused(terms(), Ask(bank_code=OTHER_BANK)) == ("consent.bank_mismatch", "PERMISSION_DENIED")


@pytest.mark.parametrize("purpose", [p for p in Purpose if p is not Purpose.LOAN_APPLICATION])
def test_a_consent_for_another_purpose_is_refused(purpose: Purpose) -> None:
    assert refused(terms(), Ask(purpose=purpose)) == ("consent.purpose_mismatch", "PERMISSION_DENIED")


def test_the_window_is_inclusive_at_both_ends_with_no_skew() -> None:
    t = terms()
    assert policy.permit(t, Ask(), city=pilot.HEFEI, now=t.not_before)
    assert policy.permit(t, Ask(), city=pilot.HEFEI, now=t.not_after)  # expiry exactly now: still valid
    tick = dt.timedelta(microseconds=1)
    assert refused(t, Ask(), now=t.not_before - tick) == ("consent.not_yet_valid", "FAILED_PRECONDITION")
    assert refused(t, Ask(), now=t.not_after + tick) == ("consent.expired", "FAILED_PRECONDITION")


@pytest.mark.parametrize(
    "categories",
    [(Category.JUDICIAL,), (Category.TAX, Category.JUDICIAL)],
    ids=["other", "widened"],
)
def test_a_category_not_granted_is_refused_and_named(categories: tuple[Category, ...]) -> None:
    with pytest.raises(CreditnetError) as err:
        policy.permit(terms(), Ask(categories=categories), city=pilot.HEFEI, now=NOW)
    assert (err.value.rule, err.value.code.name) == ("consent.category_not_covered", "PERMISSION_DENIED")
    assert err.value.message == f"categories not in the consent: {Category.JUDICIAL.value}"


@pytest.mark.parametrize("city", [pilot.HEFEI, pilot.NANJING, None], ids=["hefei", "nanjing", "aggregator"])
def test_a_city_not_covered_is_refused_by_every_node_and_the_aggregator(city: City | None) -> None:
    asked = Ask(cities=(pilot.HEFEI, pilot.NANJING))
    assert refused(terms(), asked, city) == ("consent.city_not_covered", "PERMISSION_DENIED")


def test_a_node_outside_the_granted_cities_refuses_and_the_aggregator_does_not() -> None:
    asks_shanghai = Ask(cities=(pilot.SHANGHAI,))
    assert refused(terms(), asks_shanghai, pilot.HEFEI) == ("query.city_not_in_scope", "PERMISSION_DENIED")
    assert policy.permit(terms(), asks_shanghai, city=None, now=NOW).cities == (pilot.SHANGHAI,)
    # Naming no city is the consent's cities: Nanjing is not among them.
    assert refused(terms(), Ask(cities=()), pilot.NANJING) == ("query.city_not_in_scope", "PERMISSION_DENIED")


def test_the_rules_are_checked_in_the_documented_order() -> None:
    """Each case breaks its rule and every later one: the earlier rule is the refusal."""
    late = NOW + dt.timedelta(days=31)
    worst = Ask(
        enterprise_uscc=OTHER_USCC,
        bank_code=OTHER_BANK,
        purpose=Purpose.GUARANTEE,
        categories=(Category.JUDICIAL,),
        cities=(pilot.NANJING,),
    )
    order: list[tuple[str, dict[str, object]]] = [
        ("consent.enterprise_mismatch", {}),
        ("consent.bank_mismatch", {"enterprise_uscc": USCC}),
        ("consent.purpose_mismatch", {"bank_code": BANK}),
        ("consent.expired", {"purpose": Purpose.LOAN_APPLICATION}),
        ("consent.category_not_covered", {"now": NOW}),
        ("consent.city_not_covered", {"categories": (Category.TAX,)}),
        ("query.city_not_in_scope", {"cities": (pilot.SHANGHAI,)}),
    ]
    fields: dict[str, object] = {}
    for rule, fix in order:
        fields.update(fix)
        now = fields.get("now", late)
        asked = replace(worst, **{k: v for k, v in fields.items() if k != "now"})  # type: ignore[arg-type]
        assert isinstance(now, dt.datetime)
        assert refused(terms(), asked, pilot.HEFEI, now)[0] == rule
    assert policy.permit(terms(), Ask(cities=(pilot.HEFEI,)), city=pilot.HEFEI, now=NOW)


def test_check_parties_is_the_first_two_rules_alone() -> None:
    policy.check_parties(terms(), Ask(purpose=Purpose.GUARANTEE, categories=(Category.JUDICIAL,)))
    for asked, rule in (
        (Ask(enterprise_uscc=OTHER_USCC), "consent.enterprise_mismatch"),
        (Ask(bank_code=OTHER_BANK), "consent.bank_mismatch"),
    ):
        with pytest.raises(CreditnetError) as err:
            policy.check_parties(terms(), asked)
        assert err.value.rule == rule


# --- the bound the bank holds answers to --------------------------------------------------


def test_the_bound_only_narrows_the_consent_and_never_refuses() -> None:
    widened = Ask(categories=(Category.TAX, Category.JUDICIAL), cities=(pilot.HEFEI, pilot.NANJING))
    got = policy.bound(terms(), widened)
    assert got.categories == (Category.TAX,)
    assert got.cities == (pilot.HEFEI,)
    assert not got.covers(pilot.NANJING) and not got.covers(pilot.SHANGHAI)


def test_a_query_naming_only_what_the_consent_does_not_hold_is_bound_to_nothing() -> None:
    """Not to everything: an empty intersection is no city and no category, never "every member city"."""
    got = policy.bound(terms(), Ask(categories=(Category.JUDICIAL,), cities=(pilot.NANJING,)))
    assert got.categories == () and got.cities == ()
    assert not any(got.covers(c) for c in MEMBERS) and got.scope(MEMBERS) == ()


def test_asked_by_reads_a_creditquery() -> None:
    msg = query_pb2.CreditQuery(
        enterprise_uscc=USCC,
        bank_code=BANK,
        purpose=Purpose.GUARANTEE.proto,
        categories=[Category.TAX.proto, Category.LOAN.proto],
        cities=[pilot.SHANGHAI.proto],
    )
    got = policy.asked_by(msg)
    assert (got.enterprise_uscc, got.bank_code, got.purpose) == (USCC, BANK, Purpose.GUARANTEE)
    assert (got.categories, got.cities) == ((Category.TAX, Category.LOAN), (pilot.SHANGHAI,))
    with pytest.raises(ValueError):
        policy.asked_by(query_pb2.CreditQuery(purpose=Purpose.GUARANTEE.proto, cities=["hefei"]))


# --- the node, the aggregator and the SDK agree with the policy -------------------------------


@dataclass(frozen=True)
class People:
    enterprise: Identity
    other_enterprise: Identity
    bank: Identity
    verifier: EnvelopeVerifier


@pytest.fixture(scope="module")
def people() -> People:
    issued = NOW - dt.timedelta(minutes=5)
    ca = CertificateAuthority.create("policy-test CA", not_before=issued)
    return People(
        enterprise=issue_identity(ca, Role.enterprise(USCC), not_before=issued),
        other_enterprise=issue_identity(ca, Role.enterprise(OTHER_USCC), not_before=issued),
        bank=issue_identity(ca, Role.bank(BANK), not_before=issued),
        verifier=EnvelopeVerifier(TrustStore(ca.cert)),
    )


# (name, consent changes, what the query asks): accepted and refused alike.
CASES: list[tuple[str, dict[str, object], Ask]] = [
    ("narrowed", {}, Ask()),
    ("whole-consent", {}, Ask(categories=(), cities=())),
    (
        "two-cities",
        {},
        Ask(categories=(Category.UTILITY, Category.LOAN), cities=(pilot.SHANGHAI, pilot.HEFEI)),
    ),
    ("every-member", {"cities": ()}, Ask(cities=())),
    ("every-member-one-named", {"cities": ()}, Ask(cities=(SUZHOU,))),
    ("unlimited-uses", {"max_uses": 0}, Ask()),
    ("at-not-before", {"not_before": NOW}, Ask()),
    ("at-not-after", {"not_after": NOW}, Ask()),
    ("other-enterprise", {"enterprise_uscc": OTHER_USCC}, Ask()),
    ("other-bank", {"bank_code": OTHER_BANK}, Ask()),
    ("other-purpose", {}, Ask(purpose=Purpose.GUARANTEE)),
    ("not-yet-valid", {"not_before": NOW + dt.timedelta(seconds=1)}, Ask()),
    (
        "expired",
        {"not_before": NOW - dt.timedelta(days=2), "not_after": NOW - dt.timedelta(seconds=1)},
        Ask(),
    ),
    ("category-not-granted", {}, Ask(categories=(Category.TAX, Category.JUDICIAL))),
    ("city-not-covered", {}, Ask(cities=(pilot.HEFEI, pilot.NANJING))),
    ("asks-shanghai-only", {}, Ask(cities=(pilot.SHANGHAI,))),
]


def _signed(people: People, consent: ConsentTerms, asked: Ask) -> envelope_pb2.SignedEnvelope:
    signer = people.other_enterprise if consent.enterprise_uscc == OTHER_USCC else people.enterprise
    return query_mod.build(
        people.bank,
        grant(signer, consent),
        enterprise_uscc=USCC,
        purpose=asked.purpose,
        categories=asked.categories,
        cities=asked.cities,
        now=NOW - dt.timedelta(seconds=10),
        query_id=str(uuid.uuid4()),
    )


@pytest.mark.parametrize(("consent_changes", "asked"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("city", [None, pilot.HEFEI, pilot.SHANGHAI, pilot.NANJING, SUZHOU], ids=str)
def test_the_node_the_aggregator_and_the_sdk_agree_with_the_policy(
    people: People, consent_changes: dict[str, object], asked: Ask, city: City | None
) -> None:
    from creditnet.node.service import _claim_of

    consent = terms(**consent_changes)
    env = _signed(people, consent, asked)
    try:
        expected: policy.Grant | str = policy.permit(consent, asked, city=city, now=NOW)
    except CreditnetError as exc:
        expected = exc.rule

    # The node (city given) and the aggregator (None) authorize through the policy.
    try:
        aq = query_mod.authorize(people.verifier, env, city=city, now=NOW)
    except CreditnetError as exc:
        assert exc.rule == expected
        return
    assert isinstance(expected, policy.Grant) and aq.grant == expected
    # What the node discloses and counts, and the cities the aggregator asks, are the grant's.
    assert (aq.categories, aq.data_from, aq.data_to) == (
        expected.categories,
        expected.data_from,
        expected.data_to,
    )
    assert _claim_of(aq).max_uses == expected.max_uses
    assert aq.grant.scope(MEMBERS) == expected.scope(MEMBERS)
    # The bank's SDK: the cities it accounts for and the bound it holds each answer to.
    query = query_pb2.CreditQuery.FromString(env.payload)
    assert scope_cities(query, MEMBERS) == expected.scope(MEMBERS)
    assert answer_bounds(query) == expected
