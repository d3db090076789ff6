"""The synthetic data generator: determinism, slices, validity, realism and streaming."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import re
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from creditnet import pilot, records, uscc
from creditnet.dates import date_from_proto
from creditnet.domain import Category, City
from creditnet.v2 import records_pb2
from creditnet_devkit import synthetic

SEED = 2024
PER_CITY = 600  # 3,000 enterprises: enough for the shares to settle


def split(items: Iterable[synthetic.SyntheticItem]) -> list[list[synthetic.SyntheticItem]]:
    """Items grouped per enterprise: a profile followed by its records."""
    groups: list[list[synthetic.SyntheticItem]] = []
    for item in items:
        if isinstance(item, records_pb2.EnterpriseProfile):
            groups.append([item])
        else:
            assert groups, "a record came before any profile"
            groups[-1].append(item)
    return groups


def jsonl_bytes(items: Iterable[synthetic.SyntheticItem]) -> bytes:
    buf = io.StringIO()
    profiles: list[bytes] = []

    def recs() -> Iterable[records_pb2.CreditRecord]:
        for item in items:
            if isinstance(item, records_pb2.CreditRecord):
                yield item
            else:
                profiles.append(item.SerializeToString(deterministic=True))

    records.write_jsonl(recs(), buf)
    return buf.getvalue().encode() + b"".join(profiles)


@dataclass
class Survey:
    """What one pass over a large generated data set found."""

    profiles: list[records_pb2.EnterpriseProfile] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    record_ids: Counter[tuple[int, str]] = field(default_factory=Counter)
    late: int = 0
    before_profile: int = 0
    records_per_enterprise: Counter[str] = field(default_factory=Counter)
    cities: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    categories: Counter[Category] = field(default_factory=Counter)
    grades: Counter[str] = field(default_factory=Counter)
    loan_status: Counter[int] = field(default_factory=Counter)
    utility_arrears: set[str] = field(default_factory=set)
    contribution_arrears: set[str] = field(default_factory=set)
    judicial: set[str] = field(default_factory=set)
    dishonest: set[str] = field(default_factory=set)
    penalty: set[str] = field(default_factory=set)
    patents_by_industry: Counter[bool] = field(default_factory=Counter)
    sources: dict[tuple[int, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    def share(self, enterprises: set[str]) -> float:
        return len(enterprises) / len(self.profiles)


@pytest.fixture(scope="module")
def survey() -> Survey:
    s = Survey()
    current = ""
    for item in synthetic.generate(SEED, PER_CITY):
        if isinstance(item, records_pb2.EnterpriseProfile):
            s.profiles.append(item)
            current = item.uscc
            continue
        u = item.enterprise_uscc
        if u != current:
            s.before_profile += 1
        try:
            category = records.validate_record(item, today=synthetic.AS_OF)
        except records.RecordError as exc:
            s.invalid.append(f"{item.record_id}: {exc}")
            continue
        s.record_ids[(item.city, item.record_id)] += 1
        if date_from_proto(item.record_date) > synthetic.AS_OF:
            s.late += 1
        s.records_per_enterprise[u] += 1
        s.cities[u].add(item.city)
        s.categories[category] += 1
        s.sources[(item.city, category.value)].add(item.source)
        match category:
            case Category.TAX:
                s.grades[records_pb2.TaxGrade.Name(item.tax.grade)[-1]] += 1
            case Category.LOAN:
                s.loan_status[item.loan.status] += 1
            case Category.UTILITY if item.utility.arrears_fen:
                s.utility_arrears.add(u)
            case Category.SOCIAL_INSURANCE if item.social_insurance.arrears_fen:
                s.contribution_arrears.add(u)
            case Category.HOUSING_FUND if item.housing_fund.arrears_fen:
                s.contribution_arrears.add(u)
            case Category.JUDICIAL:
                s.judicial.add(u)
                if item.judicial.dishonest_debtor:
                    s.dishonest.add(u)
            case Category.PENALTY:
                s.penalty.add(u)
    return s


# ---------------------------------------------------------------------------
# determinism and slices


def test_same_seed_gives_identical_bytes_and_another_seed_does_not() -> None:
    a = jsonl_bytes(synthetic.generate(11, 12))
    b = jsonl_bytes(synthetic.generate(11, 12))
    c = jsonl_bytes(synthetic.generate(12, 12))
    assert len(a) > 10_000
    assert a == b
    assert a != c


def test_any_enterprise_can_be_regenerated_alone() -> None:
    groups = split(synthetic.generate(5, 8))
    assert len(groups) == 8 * len(pilot.CITIES)
    for n, group in enumerate(groups):
        city, index = pilot.CITIES[n // 8], n % 8
        assert list(synthetic.enterprise_items(5, city, index)) == group


def test_a_smaller_run_is_a_prefix_of_a_larger_one_per_city() -> None:
    small = split(synthetic.generate(9, 4, [pilot.JIAXING, pilot.NANJING]))
    large = split(synthetic.generate(9, 10, [pilot.NANJING, pilot.JIAXING]))
    nanjing = [g for g in large if g[0].home_city == pilot.NANJING.proto]  # type: ignore[union-attr]
    jiaxing = [g for g in large if g[0].home_city == pilot.JIAXING.proto]  # type: ignore[union-attr]
    assert small == jiaxing[:4] + nanjing[:4]


def test_plan_matches_what_is_generated() -> None:
    for city in pilot.CITIES:
        for index in range(6):
            plan = synthetic.plan_enterprise(3, city, index)
            profile, *recs = synthetic.enterprise_items(3, city, index)
            assert profile == plan.profile()
            assert {r.city for r in recs} == {c.proto for c in plan.cities}  # type: ignore[union-attr]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="enterprises_per_city must be ≥ 0"):
        next(synthetic.generate(1, -1))
    with pytest.raises(ValueError, match="too early"):
        next(synthetic.generate(1, 1, as_of=dt.date(1990, 3, 1)))
    with pytest.raises(ValueError, match="index must be ≥ 0"):
        synthetic.plan_enterprise(1, pilot.HEFEI, -1)
    assert list(synthetic.generate(1, 0)) == []


# ---------------------------------------------------------------------------
# validity


def test_every_record_is_valid_unique_and_not_after_as_of(survey: Survey) -> None:
    assert survey.invalid == []
    assert sum(survey.record_ids.values()) > 50_000
    assert [k for k, n in survey.record_ids.items() if n > 1] == []
    assert survey.late == 0
    assert survey.before_profile == 0


def test_profiles_are_realistic(survey: Survey) -> None:
    usccs = [p.uscc for p in survey.profiles]
    assert len(usccs) == len(set(usccs)) == PER_CITY * len(pilot.CITIES)
    industries: Counter[str] = Counter()
    for p in survey.profiles:
        home = City.from_proto(p.home_city)
        assert uscc.require_home_city(p.uscc) == home
        assert p.uscc.startswith("91")
        assert p.name.endswith("公司") and len(p.name) >= 8, p.name
        assert any(
            place in p.name for place in ("上海", "南京", "杭州", "合肥", "嘉兴", "江苏", "浙江", "安徽")
        )
        assert re.fullmatch(r"[A-Z]\d\d \S+", p.industry), p.industry
        industries[p.industry[0]] += 1
        # Registered capital is a round number of ten thousand yuan (万元).
        assert p.registered_capital_fen > 0 and p.registered_capital_fen % 1_000_000 == 0
        founded = date_from_proto(p.founded)
        assert dt.date(1990, 1, 1) <= founded <= dt.date(2024, 12, 31)
        # Codes issued after the 2015 reform start their organisation code with MA.
        assert (p.uscc[8:10] == "MA") == (founded >= dt.date(2015, 10, 1))
    # Manufacturing (C), IT (I), wholesale (F) and logistics (G) all appear.
    assert {"C", "I", "F", "G", "E"} <= set(industries)
    capitals = sorted(p.registered_capital_fen // 100 for p in survey.profiles)
    median = capitals[len(capitals) // 2]
    assert 1_000_000 <= median <= 10_000_000  # a few million yuan, as for most SMEs
    assert capitals[-1] > 50 * median  # with a long tail
    years = Counter(date_from_proto(p.founded).year for p in survey.profiles)
    assert sum(n for y, n in years.items() if y >= 2015) > sum(n for y, n in years.items() if y < 2015)


def test_records_per_enterprise_are_moderate(survey: Survey) -> None:
    counts = sorted(survey.records_per_enterprise.values())
    assert len(counts) == len(survey.profiles)  # everybody has records
    assert counts[0] >= 5
    assert 15 <= counts[len(counts) // 2] <= 40
    assert counts[-1] <= 90
    assert set(survey.categories) == set(Category)


def test_sources_are_the_citys_own_providers(survey: Survey) -> None:
    for (city_number, category), sources in survey.sources.items():
        city, cat = City.from_proto(city_number), Category(category)
        if cat is Category.LOAN:
            assert all(s.endswith(("分行", "支行")) for s in sources)
        elif cat is Category.UTILITY:
            kinds = (records_pb2.UTILITY_KIND_ELECTRICITY, records_pb2.UTILITY_KIND_WATER)
            assert sources >= {synthetic.source_for(city, cat, k) for k in kinds}
        else:
            assert sources == {synthetic.source_for(city, cat)}
    assert synthetic.source_for(pilot.HEFEI, Category.UTILITY) == "国网合肥供电公司"
    assert synthetic.source_for(pilot.HEFEI, Category.SOCIAL_INSURANCE) == "合肥市社会保险事业管理中心"


# ---------------------------------------------------------------------------
# realism


def test_tax_grade_shares(survey: Survey) -> None:
    total = sum(survey.grades.values())
    shares = {g: n / total for g, n in survey.grades.items()}
    expected = {"A": 0.20, "B": 0.55, "M": 0.15, "C": 0.07, "D": 0.03}
    for grade, share in expected.items():
        assert shares[grade] == pytest.approx(share, abs=0.035), (grade, shares)


def test_risk_shares(survey: Survey) -> None:
    assert 0.05 <= survey.share(survey.utility_arrears) <= 0.08
    assert 0.025 <= survey.share(survey.contribution_arrears) <= 0.055
    assert 0.06 <= survey.share(survey.judicial) <= 0.10
    assert 0.007 <= survey.share(survey.dishonest) <= 0.022
    assert 0.035 <= survey.share(survey.penalty) <= 0.065
    loans = sum(survey.loan_status.values())
    assert loans > 2_000
    assert 0.04 <= survey.loan_status[records_pb2.LOAN_STATUS_OVERDUE] / loans <= 0.06
    assert survey.loan_status[records_pb2.LOAN_STATUS_SETTLED] > 0
    assert survey.loan_status[records_pb2.LOAN_STATUS_CURRENT] > 0


def test_about_a_quarter_of_enterprises_are_active_in_other_cities(survey: Survey) -> None:
    multi = [c for c in survey.cities.values() if len(c) > 1]
    assert 0.24 <= len(multi) / len(survey.profiles) <= 0.32
    sizes = Counter(len(c) for c in multi)
    assert sizes[2] > sizes[3] > sizes[4] > 0


def test_risks_go_together() -> None:
    """Enterprises with a C or D tax grade fall into arrears and overdue loans far more often."""
    by_grade: dict[str, list[bool]] = defaultdict(list)
    for index, city in itertools.product(range(300), pilot.CITIES):
        plan = synthetic.plan_enterprise(77, city, index)
        trouble = plan.utility_arrears or plan.contribution_arrears or plan.dishonest_debtor
        by_grade["CD" if plan.tax_grade in "CD" else "AB"].append(trouble)
    rate = {k: sum(v) / len(v) for k, v in by_grade.items()}
    assert rate["CD"] > 4 * rate["AB"]


def test_arrears_add_up() -> None:
    """A utility account in arrears owes what it did not pay, and clears it when it pays."""
    seen = 0
    for index, city in itertools.product(range(200), pilot.CITIES):
        plan = synthetic.plan_enterprise(31, city, index)
        if not plan.utility_arrears:
            continue
        accounts: dict[str, list[records_pb2.UtilityRecord]] = defaultdict(list)
        for item in synthetic.enterprise_items(31, city, index):
            if isinstance(item, records_pb2.CreditRecord) and item.HasField("utility"):
                accounts[item.utility.account_id].append(item.utility)
        for bills in accounts.values():
            owed = 0
            for bill in bills:
                if bill.arrears_fen:
                    owed += bill.amount_due_fen - bill.amount_paid_fen
                    assert bill.arrears_fen == owed
                    seen += 1
                else:
                    assert bill.amount_paid_fen == bill.amount_due_fen + owed
                    owed = 0
    assert seen > 10


# ---------------------------------------------------------------------------
# as_of, demo enterprise, providers


def test_as_of_bounds_every_date() -> None:
    as_of = dt.date(2021, 3, 15)
    n = 0
    for item in synthetic.generate(4, 40, as_of=as_of):
        if isinstance(item, records_pb2.EnterpriseProfile):
            assert date_from_proto(item.founded) <= as_of - dt.timedelta(days=180)
            continue
        records.validate_record(item, today=as_of)
        assert date_from_proto(item.record_date) <= as_of
        n += 1
    assert n > 1_000
    # The same enterprise seen from another as_of keeps its identity.
    assert synthetic.plan_enterprise(4, pilot.HEFEI, 0, as_of=as_of).uscc == (
        synthetic.plan_enterprise(4, pilot.HEFEI, 0).uscc
    )


def test_demo_enterprise_has_recent_records_in_three_cities_including_shanghai() -> None:
    uscc_code = synthetic.pick_demo_enterprise(7, 40)
    assert uscc_code == synthetic.pick_demo_enterprise(7, 40)
    home = uscc.require_home_city(uscc_code)
    index = next(i for i in range(40) if synthetic.plan_enterprise(7, home, i).uscc == uscc_code)
    recent: defaultdict[int, set[str]] = defaultdict(set)
    for item in synthetic.enterprise_items(7, home, index):
        # The demo consent covers three years of data.
        if isinstance(item, records_pb2.CreditRecord) and date_from_proto(
            item.record_date
        ) >= synthetic.AS_OF - dt.timedelta(days=3 * 365):
            recent[item.city].add(item.WhichOneof("detail") or "")
    assert len(recent) >= 3
    assert "utility" in recent[pilot.SHANGHAI.proto]
    assert synthetic.pick_demo_enterprise(8, 40) != uscc_code


def test_demo_enterprise_needs_enough_enterprises() -> None:
    with pytest.raises(ValueError, match="generate more enterprises"):
        synthetic.pick_demo_enterprise(7, 0)


def test_provider_identity() -> None:
    rec = next(i for i in synthetic.generate(1, 1, [pilot.HEFEI]) if isinstance(i, records_pb2.CreditRecord))
    assert synthetic.provider_id(rec) == "provider:demo-data-exchange"
    provider = synthetic.data_provider(pilot.HEFEI, Category.LOAN)
    assert provider.provider_id == synthetic.provider_id(rec)
    assert provider.city == pilot.HEFEI and provider.subject == synthetic.DATA_EXCHANGE_SUBJECT
    assert provider.name == "合肥市公共信用信息共享服务中心"
    assert set(provider.categories) == set(Category)
    assert len({synthetic.data_provider(c).name for c in pilot.CITIES}) == len(pilot.CITIES)


# ---------------------------------------------------------------------------
# streaming


def test_generation_is_lazy_and_memory_does_not_grow() -> None:
    stream = synthetic.generate(3, 1_000_000)
    assert iter(stream) is stream
    tracemalloc.start()
    try:
        seen = sum(1 for _ in itertools.islice(stream, 50_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 50_000
    # Holding the 50,000 items would take megabytes; streaming them, kilobytes.
    assert peak < 500_000, peak
