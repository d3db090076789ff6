"""One enterprise profile merged from every city's verified section."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from creditnet.domain import Category, City, Purpose
from creditnet.v2 import records_pb2
from creditnet_bank.verify import Section, SectionStatus

__all__ = [
    "Indicators",
    "Report",
    "indicators",
    "merge",
]

_ANSWERED = (SectionStatus.OK, SectionStatus.NO_RECORDS)
_TAX_GRADES = {1: "A", 2: "B", 3: "M", 4: "C", 5: "D"}


@dataclass(slots=True)
class Indicators:
    """The figures a credit officer looks at first."""

    # Utilities: the worst run of unpaid months on any account, and the total owed.
    utility_max_arrears_months: int = 0
    utility_arrears_fen: int = 0
    # Latest insured headcount summed over cities (the latest month per city).
    social_insurance_headcount: int = 0
    social_insurance_arrears_months: int = 0
    housing_fund_headcount: int = 0
    housing_fund_arrears_months: int = 0
    # Latest tax credit grade (A best, D worst) and its year.
    tax_grade: str = ""
    tax_grade_year: int = 0
    tax_arrears_fen: int = 0
    judicial_cases: int = 0
    judicial_as_defendant: int = 0
    dishonest_debtor: bool = False
    penalties: int = 0
    serious_penalties: int = 0
    penalty_fines_fen: int = 0
    loans: int = 0
    loan_balance_fen: int = 0
    overdue_loans: int = 0
    max_days_overdue: int = 0
    patents: int = 0
    ip_pledges: int = 0
    pledged_goods_value_fen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class Report:
    query_id: str
    enterprise_uscc: str
    purpose: Purpose
    sections: list[Section]
    profile: records_pb2.EnterpriseProfile | None = None
    by_category: dict[Category, dict[City, list[records_pb2.CreditRecord]]] = field(default_factory=dict)
    indicators: Indicators = field(default_factory=Indicators)

    @property
    def scope(self) -> list[City]:
        """The effective scope the bank accounted for: one section each (creditnet_bank.scope)."""
        return [s.city for s in self.sections if s.in_scope]

    @property
    def answered_cities(self) -> list[City]:
        return [s.city for s in self.sections if s.in_scope and s.status in _ANSWERED]

    @property
    def missing_cities(self) -> list[City]:
        """Cities of the scope without a verified answer: denied, down, timed out, invalid or
        MISSING (no section at all); not those the aggregator says it did not ask."""
        done = (*_ANSWERED, SectionStatus.NOT_ASKED)
        return [s.city for s in self.sections if s.in_scope and s.status not in done]

    @property
    def not_asked_cities(self) -> list[City]:
        """Cities the aggregator did not ask: by its routing they hold nothing on the enterprise."""
        return [s.city for s in self.sections if s.status is SectionStatus.NOT_ASKED]

    @property
    def unexpected_cities(self) -> list[City]:
        """Cities outside the scope the aggregator returned a section for (INVALID, never opened)."""
        return [s.city for s in self.sections if not s.in_scope]

    @property
    def complete(self) -> bool:
        """Every city of the scope answered or was not asked, and nothing else came back."""
        return not self.missing_cities and not self.unexpected_cities

    @property
    def record_count(self) -> int:
        return sum(len(s.records) for s in self.sections)

    def section(self, city: City) -> Section | None:
        return next((s for s in self.sections if s.city == city), None)

    def to_json(self) -> dict[str, Any]:
        from creditnet.records import record_to_json

        return {
            "query_id": self.query_id,
            "enterprise_uscc": self.enterprise_uscc,
            "purpose": self.purpose.value,
            "profile": _profile_json(self.profile),
            "indicators": self.indicators.as_dict(),
            "scope": [c.value for c in self.scope],
            "missing_cities": [c.value for c in self.missing_cities],
            "unexpected_cities": [c.value for c in self.unexpected_cities],
            "sections": [
                {
                    "city": s.city.value,
                    "status": s.status.value,
                    "reason": s.reason,
                    "in_scope": s.in_scope,
                    "asked": s.asked,
                    "routing": s.routing,
                    "routing_detail": s.routing_detail,
                    "code": s.code,
                    "latency_ms": s.latency_ms,
                    "as_of": s.as_of.isoformat() if s.as_of else None,
                    "categories": [c.value for c in s.categories],
                    "records": [record_to_json(r) for r in s.records],
                    # Records the node holds but no provider signed: counted, never shown.
                    "withheld_unsigned": s.withheld_unsigned,
                }
                for s in self.sections
            ],
        }


def _profile_json(profile: records_pb2.EnterpriseProfile | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    return json_format.MessageToDict(profile, preserving_proto_field_name=True)


def merge(query_id: str, uscc: str, purpose: Purpose, sections: list[Section]) -> Report:
    report = Report(query_id=query_id, enterprise_uscc=uscc, purpose=purpose, sections=sections)
    by_cat: dict[Category, dict[City, list[records_pb2.CreditRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for s in sections:
        if s.profile is not None and report.profile is None:
            report.profile = s.profile
        for rec in s.records:
            by_cat[Category.from_oneof_field(rec.WhichOneof("detail") or "")][s.city].append(rec)
    report.by_category = {
        c: dict(v) for c, v in sorted(by_cat.items(), key=lambda kv: list(Category).index(kv[0]))
    }
    report.indicators = indicators(report.by_category)
    return report


def _latest(recs: list[records_pb2.CreditRecord]) -> records_pb2.CreditRecord:
    return max(recs, key=lambda r: (r.record_date.year, r.record_date.month, r.record_date.day))


def indicators(by_cat: dict[Category, dict[City, list[records_pb2.CreditRecord]]]) -> Indicators:
    ind = Indicators()
    for recs in by_cat.get(Category.UTILITY, {}).values():
        # Arrears are a state at the end of each billing period: take the latest per account.
        latest: dict[str, records_pb2.CreditRecord] = {}
        for r in recs:
            key = f"{r.utility.kind}:{r.utility.account_id}"
            if key not in latest or _latest([latest[key], r]) is r:
                latest[key] = r
        for r in latest.values():
            ind.utility_arrears_fen += r.utility.arrears_fen
        ind.utility_max_arrears_months = max(
            [ind.utility_max_arrears_months, *(r.utility.arrears_months for r in recs)]
        )
    for recs in by_cat.get(Category.SOCIAL_INSURANCE, {}).values():
        last = _latest(recs)
        ind.social_insurance_headcount += last.social_insurance.insured_headcount
        ind.social_insurance_arrears_months = max(
            ind.social_insurance_arrears_months, last.social_insurance.arrears_months
        )
    for recs in by_cat.get(Category.HOUSING_FUND, {}).values():
        last = _latest(recs)
        ind.housing_fund_headcount += last.housing_fund.contributor_headcount
        ind.housing_fund_arrears_months = max(
            ind.housing_fund_arrears_months, last.housing_fund.arrears_months
        )
    tax = [r for recs in by_cat.get(Category.TAX, {}).values() for r in recs]
    if tax:
        best_year = max(r.tax.year for r in tax)
        # Several cities may grade the same year; the worst grade counts.
        grades = [r.tax.grade for r in tax if r.tax.year == best_year]
        ind.tax_grade = _TAX_GRADES.get(max(grades), "")
        ind.tax_grade_year = best_year
        ind.tax_arrears_fen = sum(r.tax.arrears_fen for r in tax if r.tax.year == best_year)
    for recs in by_cat.get(Category.JUDICIAL, {}).values():
        for r in recs:
            ind.judicial_cases += 1
            ind.judicial_as_defendant += r.judicial.role == records_pb2.JUDICIAL_ROLE_DEFENDANT
            ind.dishonest_debtor |= r.judicial.dishonest_debtor
    for recs in by_cat.get(Category.PENALTY, {}).values():
        for r in recs:
            ind.penalties += 1
            ind.serious_penalties += r.penalty.serious
            ind.penalty_fines_fen += r.penalty.fine_fen
    loans: dict[tuple[str, str], records_pb2.CreditRecord] = {}
    for recs in by_cat.get(Category.LOAN, {}).values():
        for r in recs:
            loan_key = (r.loan.lender, r.loan.contract_id)
            if loan_key not in loans or _latest([loans[loan_key], r]) is r:
                loans[loan_key] = r
    for r in loans.values():
        ind.loans += 1
        if r.loan.status in (records_pb2.LOAN_STATUS_CURRENT, records_pb2.LOAN_STATUS_OVERDUE):
            ind.loan_balance_fen += r.loan.balance_fen
        if r.loan.status == records_pb2.LOAN_STATUS_OVERDUE or r.loan.days_overdue > 0:
            ind.overdue_loans += 1
        ind.max_days_overdue = max(ind.max_days_overdue, r.loan.days_overdue)
    for recs in by_cat.get(Category.IP, {}).values():
        for r in recs:
            if r.ip.kind == records_pb2.IP_KIND_IP_PLEDGE:
                ind.ip_pledges += 1
            elif r.ip.kind != records_pb2.IP_KIND_TRADEMARK:
                ind.patents += 1
    for recs in by_cat.get(Category.LOGISTICS, {}).values():
        for r in recs:
            if r.logistics.pledged:
                ind.pledged_goods_value_fen += r.logistics.value_fen
    return ind
