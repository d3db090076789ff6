"""The bank accounts for every city of its scope and bounds every answer by the consent.

docs/protocol.md, "Answers and what the bank checks" and "What the bank accounts for". Answers
are signed by the test-vector node keys (a real ECDSA certificate of the vector CA) and sealed to
the vector query's answer key, as a node would.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import replace

import pytest
from rich.console import Console

from creditnet import consent as consent_mod
from creditnet import pilot, provenance
from creditnet import query as query_mod
from creditnet.cli.render import render_report
from creditnet.domain import Category, City, Purpose
from creditnet.envelope import ANSWER_TYPE, EnvelopeVerifier, digest, sign
from creditnet.pki import Identity, Role, TrustStore
from creditnet.sealing import parse_answer_key, seal
from creditnet.v2 import aggregator_pb2, common_pb2, envelope_pb2, provenance_pb2, query_pb2, records_pb2
from creditnet_bank.report import merge
from creditnet_bank.scope import NO_SECTION, OUTSIDE_SCOPE, account
from creditnet_bank.verify import Section, SectionStatus, scope_cities, verify_section
from creditnet_devkit.vectors import core
from creditnet_devkit.vectors import sealed as sealed_vectors

CAST = core.make_cast()
ENVS = core.make_envelopes(CAST)
# A node of a city the vector consent (Hefei and Shanghai) does not cover.
NANJING_NODE = core.make_participant("node-320100", CAST.ca, Role.node(pilot.NANJING), 0x1005)
# A Hefei provider accredited for every category: records of any category can be signed at their
# source, so that a case fails on the consent check it is about and not on provenance.
EVERY_CATEGORY = core.make_participant(
    "provider-340100-every", CAST.ca, Role.provider(pilot.HEFEI, "340100-every", tuple(Category)), 0x1008
)
RECEIPT_ONLY = "the answer carries no credit-chain receipt"


@pytest.fixture(scope="module")
def verifier() -> EnvelopeVerifier:
    return EnvelopeVerifier(TrustStore(CAST.ca.ca.cert))


def _query(
    categories: tuple[Category, ...] = (), cities: tuple[City, ...] = ()
) -> envelope_pb2.SignedEnvelope:
    """A vector-bank query on the vector consent.

    The consent: Hefei and Shanghai; utility, tax and loan; data from 2022-01-01 to 2025-05-31.
    """
    return query_mod.build(
        CAST.bank.identity,
        ENVS.consent,
        enterprise_uscc=core.ENTERPRISE_USCC,
        purpose=Purpose.LOAN_APPLICATION,
        categories=categories,
        cities=cities,
        now=core.VERIFY_AT,
        answer_key=sealed_vectors.answer_key(),
    )


NAMES_TAX = _query((Category.TAX,))
NAMES_NOTHING = _query()


def _answer(query_env: envelope_pb2.SignedEnvelope) -> query_pb2.CityAnswer:
    """The vector answer (one 2025-04-30 tax record, the consent's period), for `query_env`."""
    msg = query_pb2.CityAnswer.FromString(core.answer_payload(query_env, CAST))
    msg.query_id = query_pb2.CreditQuery.FromString(query_env.payload).query_id
    return msg


def _section(
    msg: query_pb2.CityAnswer,
    query_env: envelope_pb2.SignedEnvelope,
    city: City = pilot.HEFEI,
    node: Identity = CAST.node.identity,
) -> aggregator_pb2.CitySection:
    """`msg` signed by `node` and sealed to the query's key as `city`'s answer, as a node sends it."""
    signed = sign(ANSWER_TYPE, msg.SerializeToString(), node)
    key = parse_answer_key(query_pb2.CreditQuery.FromString(query_env.payload))
    sealed = seal(key, signed, digest(query_env.payload), city, discloses=True)
    return aggregator_pb2.CitySection(
        city=city.proto, status=aggregator_pb2.SECTION_STATUS_OK, sealed_answer=sealed
    )


def _verify(
    verifier: EnvelopeVerifier, section: aggregator_pb2.CitySection, query_env: envelope_pb2.SignedEnvelope
) -> Section:
    query = query_pb2.CreditQuery.FromString(query_env.payload)
    return verify_section(verifier, section, query_env, query, answer_key=sealed_vectors.answer_key())


def _date(d: dt.date) -> common_pb2.Date:
    return common_pb2.Date(year=d.year, month=d.month, day=d.day)


def _add_signed(msg: query_pb2.CityAnswer, rec: records_pb2.CreditRecord) -> None:
    """Disclose `rec` as signed at its source by a Hefei provider, in a batch of its own."""
    _, batch = provenance.sign_records(EVERY_CATEGORY.identity, [rec], now=core.BATCH_SIGNED_AT)
    msg.batches.append(envelope_pb2.SignedEnvelope.FromString(batch.envelope))
    msg.proven_records.append(
        provenance_pb2.ProvenRecord(record=batch.raw[0], batch=len(msg.batches) - 1, leaf_index=0)
    )


def _record(category: Category, day: dt.date = dt.date(2025, 4, 30)) -> records_pb2.CreditRecord:
    rec = records_pb2.CreditRecord(
        record_id=f"{category.value}-{day.isoformat()}",
        enterprise_uscc=core.ENTERPRISE_USCC,
        city=pilot.HEFEI.proto,
        source="test",
        record_date=_date(day),
    )
    if category is Category.JUDICIAL:
        rec.judicial.CopyFrom(records_pb2.JudicialRecord(case_number="(2024)皖0104民初1号"))
    elif category is Category.LOAN:
        rec.loan.CopyFrom(records_pb2.LoanRecord(lender="bank", contract_id="c-1", balance_fen=1))
    else:
        rec.tax.CopyFrom(records_pb2.TaxRecord(year=day.year, grade=records_pb2.TAX_GRADE_A))
    return rec


def _discloses(category: Category) -> Callable[[query_pb2.CityAnswer], None]:
    def change(msg: query_pb2.CityAnswer) -> None:
        msg.categories.append(category.proto)
        _add_signed(msg, _record(category))

    return change


def _answer_period(start: dt.date, end: dt.date) -> Callable[[query_pb2.CityAnswer], None]:
    def change(msg: query_pb2.CityAnswer) -> None:
        msg.data_from.CopyFrom(_date(start))
        msg.data_to.CopyFrom(_date(end))

    return change


def _record_dated(day: dt.date) -> Callable[[query_pb2.CityAnswer], None]:
    """The answer's one tax record replaced by one dated `day`, signed at its source."""

    def change(msg: query_pb2.CityAnswer) -> None:
        del msg.proven_records[:]
        del msg.batches[:]
        _add_signed(msg, _record(Category.TAX, day))

    return change


CONSENT_FROM, CONSENT_TO = dt.date(2022, 1, 1), dt.date(2025, 5, 31)
OUT_OF_CONSENT = {
    "a category the consent does not hold": (_discloses(Category.JUDICIAL), "not consented"),
    "a period starting before the consent's": (
        _answer_period(CONSENT_FROM - dt.timedelta(days=1), CONSENT_TO),
        "period outside the consent",
    ),
    "a period ending after the consent's": (
        _answer_period(CONSENT_FROM, CONSENT_TO + dt.timedelta(days=1)),
        "period outside the consent",
    ),
    "a record dated before the consented period": (
        _record_dated(CONSENT_FROM - dt.timedelta(days=1)),
        "outside the consented period",
    ),
    "a record dated after the consented period": (
        _record_dated(CONSENT_TO + dt.timedelta(days=1)),
        "outside the consented period",
    ),
    "a record dated outside the answer's narrower period": (
        lambda m: (
            _answer_period(dt.date(2023, 1, 1), dt.date(2024, 12, 31))(m),
            _record_dated(CONSENT_TO)(m),
        ),
        "outside the consented period",
    ),
}


@pytest.mark.parametrize(
    "query_env", [NAMES_TAX, NAMES_NOTHING], ids=["query-names-tax", "query-names-nothing"]
)
@pytest.mark.parametrize("case", list(OUT_OF_CONSENT), ids=lambda c: c.replace(" ", "-"))
def test_an_answer_beyond_the_consent_is_invalid_whether_or_not_the_query_named_categories(
    verifier: EnvelopeVerifier, query_env: envelope_pb2.SignedEnvelope, case: str
) -> None:
    change, reason = OUT_OF_CONSENT[case]
    # The control: the same answer unchanged passes every answer check (it lacks only a receipt).
    assert _verify(verifier, _section(_answer(query_env), query_env), query_env).reason.endswith(RECEIPT_ONLY)
    msg = _answer(query_env)
    change(msg)
    got = _verify(verifier, _section(msg, query_env), query_env)
    assert got.status is SectionStatus.INVALID and reason in got.reason, got.reason
    assert not got.records and got.profile is None


def test_a_query_that_names_categories_narrows_the_consent_and_one_that_names_none_does_not(
    verifier: EnvelopeVerifier,
) -> None:
    loan = _discloses(Category.LOAN)  # consented, but not named by the tax-only query
    narrowed = _answer(NAMES_TAX)
    loan(narrowed)
    got = _verify(verifier, _section(narrowed, NAMES_TAX), NAMES_TAX)
    assert got.status is SectionStatus.INVALID and "not asked for" in got.reason
    whole = _answer(NAMES_NOTHING)
    loan(whole)
    assert _verify(verifier, _section(whole, NAMES_NOTHING), NAMES_NOTHING).reason.endswith(RECEIPT_ONLY)


def test_a_category_the_query_names_outside_the_consent_does_not_widen_what_the_bank_accepts(
    verifier: EnvelopeVerifier,
) -> None:
    # Nodes refuse such a query (consent.category_not_covered); the bank does not rely on it.
    query_env = _query((Category.TAX, Category.JUDICIAL))
    msg = _answer(query_env)
    _discloses(Category.JUDICIAL)(msg)
    got = _verify(verifier, _section(msg, query_env), query_env)
    assert got.status is SectionStatus.INVALID and "not consented" in got.reason


def test_an_answer_from_a_city_the_consent_does_not_cover_is_invalid(verifier: EnvelopeVerifier) -> None:
    # The bank named Nanjing although its consent covers Hefei and Shanghai; nodes refuse such a
    # query (consent.city_not_covered), and an answer signed by the Nanjing node is still refused.
    query_env = _query(cities=(pilot.HEFEI, pilot.NANJING))
    msg = _answer(query_env)
    msg.city = pilot.NANJING.proto
    got = _verify(verifier, _section(msg, query_env, pilot.NANJING, NANJING_NODE.identity), query_env)
    assert got.status is SectionStatus.INVALID and "consent does not cover" in got.reason, got.reason


# --- every city of the scope accounted for ----------------------------------------------------


def _account(
    verifier: EnvelopeVerifier,
    raws: list[aggregator_pb2.CitySection],
    query_env: envelope_pb2.SignedEnvelope = NAMES_NOTHING,
    members: set[City] | None = None,
) -> tuple[list[Section], list[City]]:
    """The sections the bank reports, and the cities whose section it opened."""
    opened: list[City] = []
    query = query_pb2.CreditQuery.FromString(query_env.payload)

    def check(raw: aggregator_pb2.CitySection) -> Section:
        opened.append(City.from_proto(raw.city))
        return _verify(verifier, raw, query_env)

    scope = scope_cities(query, members or ())
    return account(raws, scope, check, members=members, directory_version=7), opened


def test_the_scope_is_the_querys_cities_else_the_consents_else_the_directorys_members() -> None:
    every = {pilot.HEFEI, pilot.NANJING, pilot.SHANGHAI, pilot.HANGZHOU}
    named = query_pb2.CreditQuery.FromString(_query(cities=(pilot.SHANGHAI,)).payload)
    assert scope_cities(named, every) == (pilot.SHANGHAI,)
    of_consent = query_pb2.CreditQuery.FromString(NAMES_NOTHING.payload)  # the consent: Hefei, Shanghai
    assert scope_cities(of_consent, every) == tuple(sorted({pilot.HEFEI, pilot.SHANGHAI}))
    everywhere = consent_mod.grant(CAST.enterprise.identity, replace(core.consent_terms(), cities=()))
    unnamed = query_mod.build(
        CAST.bank.identity,
        everywhere,
        enterprise_uscc=core.ENTERPRISE_USCC,
        purpose=Purpose.LOAN_APPLICATION,
        now=core.VERIFY_AT,
        answer_key=sealed_vectors.answer_key(),
    )
    assert scope_cities(query_pb2.CreditQuery.FromString(unnamed.payload), every) == tuple(sorted(every))


def test_a_city_of_the_scope_without_a_section_is_reported_missing(verifier: EnvelopeVerifier) -> None:
    hefei = _section(_answer(NAMES_NOTHING), NAMES_NOTHING)
    sections, opened = _account(verifier, [hefei])
    by_city = {s.city: s for s in sections}
    assert set(by_city) == {pilot.HEFEI, pilot.SHANGHAI} and opened == [pilot.HEFEI]
    shanghai = by_city[pilot.SHANGHAI]
    assert shanghai.status is SectionStatus.MISSING and shanghai.reason == NO_SECTION and shanghai.in_scope
    report = merge("q", core.ENTERPRISE_USCC, Purpose.LOAN_APPLICATION, sections)
    assert pilot.SHANGHAI in report.missing_cities and not report.complete
    assert report.to_json()["missing_cities"] == [c.value for c in report.missing_cities]


def test_with_no_section_at_all_every_city_of_the_scope_is_missing(verifier: EnvelopeVerifier) -> None:
    sections, opened = _account(verifier, [])
    assert {s.city for s in sections} == {pilot.HEFEI, pilot.SHANGHAI} and not opened
    assert all(s.status is SectionStatus.MISSING for s in sections)


def test_two_sections_for_one_city_make_it_invalid_and_neither_is_opened(verifier: EnvelopeVerifier) -> None:
    hefei = _section(_answer(NAMES_NOTHING), NAMES_NOTHING)
    sections, opened = _account(verifier, [hefei, hefei])
    got = next(s for s in sections if s.city == pilot.HEFEI)
    assert got.status is SectionStatus.INVALID and "2 sections" in got.reason and got.in_scope
    assert opened == [] and not got.records


def test_a_section_for_a_city_outside_the_scope_is_invalid_and_never_opened(
    verifier: EnvelopeVerifier,
) -> None:
    hefei = _section(_answer(NAMES_TAX), NAMES_TAX)
    nanjing = aggregator_pb2.CitySection()
    nanjing.CopyFrom(hefei)
    nanjing.city = pilot.NANJING.proto
    query_env = _query((Category.TAX,), (pilot.HEFEI,))
    hefei = _section(_answer(query_env), query_env)
    sections, opened = _account(verifier, [nanjing, hefei], query_env)
    assert [(s.city, s.in_scope) for s in sections] == [(pilot.HEFEI, True), (pilot.NANJING, False)]
    assert sections[1].status is SectionStatus.INVALID and sections[1].reason == OUTSIDE_SCOPE
    assert opened == [pilot.HEFEI]
    report = merge("q", core.ENTERPRISE_USCC, Purpose.LOAN_APPLICATION, sections)
    assert report.scope == [pilot.HEFEI] and report.unexpected_cities == [pilot.NANJING]
    assert pilot.NANJING not in report.missing_cities and not report.complete


def test_with_a_directory_a_member_missing_and_a_non_member_are_each_reported(
    verifier: EnvelopeVerifier,
) -> None:
    members = {pilot.HEFEI, pilot.NANJING}  # the directory does not list Shanghai
    hefei = _section(_answer(NAMES_NOTHING), NAMES_NOTHING)
    sections, _ = _account(verifier, [hefei], members=members)
    shanghai = next(s for s in sections if s.city == pilot.SHANGHAI)
    assert shanghai.status is SectionStatus.UNAVAILABLE and "not a member" in shanghai.reason
    # The query named no city and its consent names two: the directory's other members are not in scope.
    assert {s.city for s in sections} == {pilot.HEFEI, pilot.SHANGHAI}


def test_a_section_naming_no_valid_city_refuses_the_whole_answer(verifier: EnvelopeVerifier) -> None:
    from creditnet_bank.verify import AnswerInvalid

    bogus = aggregator_pb2.CitySection(city="12", status=aggregator_pb2.SECTION_STATUS_OK)
    with pytest.raises(AnswerInvalid, match="unknown city"):
        _account(verifier, [bogus])


def test_the_table_and_the_json_show_a_missing_city_and_a_section_outside_the_scope() -> None:
    sections = [
        Section(city=pilot.HEFEI, status=SectionStatus.NO_RECORDS),
        Section(city=pilot.SHANGHAI, status=SectionStatus.MISSING, reason=NO_SECTION),
        Section(city=pilot.NANJING, status=SectionStatus.INVALID, reason=OUTSIDE_SCOPE, in_scope=False),
    ]
    report = merge("q", core.ENTERPRISE_USCC, Purpose.LOAN_APPLICATION, sections)
    doc = report.to_json()
    assert doc["scope"] == [pilot.HEFEI.value, pilot.SHANGHAI.value]
    assert doc["missing_cities"] == [pilot.SHANGHAI.value]
    assert doc["unexpected_cities"] == [pilot.NANJING.value]
    assert [(s["status"], s["in_scope"]) for s in doc["sections"]] == [
        ("no_records", True),
        ("missing", True),
        ("invalid", False),
    ]
    out = io.StringIO()
    render_report(report, Console(file=out, width=300, color_system=None))
    text = out.getvalue()
    assert "missing" in text and NO_SECTION in text and "outside the scope" in text
    assert f"missing cities: {pilot.SHANGHAI.value}" in text
