"""Record validation and the JSONL / CSV file formats."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from creditnet import pilot, records
from creditnet.dates import date_to_proto
from creditnet.domain import ALL_CATEGORIES, Category
from creditnet.records import RecordError
from creditnet.v2 import common_pb2, records_pb2

USCC = "91340100MA2N0U3E6T"
TODAY = dt.date(2026, 11, 28)


def base(category: Category, record_id: str = "r-1") -> records_pb2.CreditRecord:
    """A valid record of each category."""
    rec = records_pb2.CreditRecord(
        record_id=record_id,
        enterprise_uscc=USCC,
        city=pilot.HEFEI.proto,
        source="国网合肥供电公司",
        record_date=date_to_proto(dt.date(2025, 6, 30)),
    )
    d = date_to_proto
    match category:
        case Category.UTILITY:
            rec.utility.CopyFrom(
                records_pb2.UtilityRecord(
                    kind=records_pb2.UTILITY_KIND_ELECTRICITY,
                    account_id="3401000001",
                    period_start=d(dt.date(2025, 6, 1)),
                    period_end=d(dt.date(2025, 6, 30)),
                    amount_due_fen=1_234_500,
                    amount_paid_fen=234_500,
                    arrears_months=1,
                    arrears_fen=1_000_000,
                )
            )
        case Category.SOCIAL_INSURANCE:
            rec.social_insurance.CopyFrom(
                records_pb2.SocialInsuranceRecord(
                    period=d(dt.date(2025, 6, 1)), insured_headcount=40, contribution_fen=7_200_000
                )
            )
        case Category.HOUSING_FUND:
            rec.housing_fund.CopyFrom(
                records_pb2.HousingFundRecord(
                    period=d(dt.date(2025, 6, 1)),
                    contributor_headcount=35,
                    contribution_fen=4_200_000,
                    arrears_months=2,
                    arrears_fen=8_400_000,
                )
            )
        case Category.LOGISTICS:
            rec.logistics.CopyFrom(
                records_pb2.LogisticsRecord(
                    kind=records_pb2.LOGISTICS_KIND_WAREHOUSE_RECEIPT,
                    reference="CD20250630HF000123",
                    warehouse="合肥包河物流园3号库",
                    goods="电解铜",
                    value_fen=500_000_000,
                    pledged=True,
                    pledgee="徽商银行包河支行",
                )
            )
        case Category.TAX:
            rec.tax.CopyFrom(
                records_pb2.TaxRecord(year=2024, grade=records_pb2.TAX_GRADE_B, tax_paid_fen=123_400_00)
            )
        case Category.JUDICIAL:
            rec.judicial.CopyFrom(
                records_pb2.JudicialRecord(
                    case_number="（2025）皖0104执1234号",
                    court="合肥市蜀山区人民法院",
                    role=records_pb2.JUDICIAL_ROLE_DEFENDANT,
                    cause="买卖合同纠纷",
                    amount_fen=50_000_000,
                    status=records_pb2.CASE_STATUS_ENFORCEMENT,
                    dishonest_debtor=True,
                )
            )
        case Category.PENALTY:
            rec.penalty.CopyFrom(
                records_pb2.PenaltyRecord(
                    decision_number="合市监罚〔2025〕12号",
                    authority="合肥市市场监督管理局",
                    violation="发布虚假广告",
                    fine_fen=5_000_000,
                )
            )
        case Category.LOAN:
            rec.loan.CopyFrom(
                records_pb2.LoanRecord(
                    lender="中国工商银行合肥分行",
                    contract_id="ICBC2024HF00000001",
                    principal_fen=100_000_000,
                    balance_fen=60_000_000,
                    status=records_pb2.LOAN_STATUS_OVERDUE,
                    days_overdue=35,
                    maturity=d(dt.date(2026, 12, 31)),
                )
            )
        case Category.IP:
            rec.ip.CopyFrom(
                records_pb2.IpRecord(
                    kind=records_pb2.IP_KIND_IP_PLEDGE,
                    registration_number="Y2025980001234",
                    title="一种电池模组专利权质押",
                    pledge_amount_fen=300_000_000,
                    pledgee="合肥科技农村商业银行蜀山支行",
                )
            )
    return rec


def all_valid() -> list[records_pb2.CreditRecord]:
    return [base(c, f"r-{c.value}") for c in ALL_CATEGORIES]


# ---------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_valid_records_pass_and_report_their_category(category: Category) -> None:
    rec = base(category)
    assert records.validate_record(rec, today=TODAY) is category
    assert records.category_of(rec) is category


Mutator = Callable[[records_pb2.CreditRecord], None]


def _set(path: str, value: Any) -> Mutator:
    def mutate(rec: records_pb2.CreditRecord) -> None:
        *parents, leaf = path.split(".")
        msg: Any = rec
        for p in parents:
            msg = getattr(msg, p)
        if isinstance(value, dt.date):
            getattr(msg, leaf).CopyFrom(date_to_proto(value))
        elif isinstance(value, common_pb2.Date):
            getattr(msg, leaf).CopyFrom(value)
        else:
            setattr(msg, leaf, value)

    return mutate


def _clear(path: str) -> Mutator:
    def mutate(rec: records_pb2.CreditRecord) -> None:
        *parents, leaf = path.split(".")
        msg: Any = rec
        for p in parents:
            msg = getattr(msg, p)
        msg.ClearField(leaf)

    return mutate


def _all(*mutators: Mutator) -> Mutator:
    def mutate(rec: records_pb2.CreditRecord) -> None:
        for m in mutators:
            m(rec)

    return mutate


BAD_DATE = common_pb2.Date(year=2025, month=2, day=30)

# (category, mutation, what the message must say) — one per rule.
FAILURES: list[tuple[Category, Mutator, str]] = [
    # common fields
    (Category.TAX, _set("record_id", ""), "record_id is empty"),
    (Category.TAX, _set("record_id", "x" * 129), "record_id is longer than 128"),
    (Category.TAX, _set("record_id", "a\nb"), "record_id has unprintable"),
    (Category.TAX, _set("enterprise_uscc", USCC[:-1] + "0"), "enterprise_uscc: the check character"),
    (Category.TAX, _set("enterprise_uscc", "91340100ma2n0u3e6t"), "canonical form: 91340100MA2N0U3E6T"),
    (Category.TAX, _set("city", ""), "city must be a city's six-digit division code"),
    (Category.TAX, _set("city", "340000"), "city must be a city's six-digit division code"),
    (Category.TAX, _set("source", " "), "source is empty"),
    (Category.TAX, _set("source", "s" * 300), "source is longer than 256"),
    (Category.TAX, _set("provider_id", "p\x00"), "provider_id has unprintable"),
    (Category.TAX, _clear("record_date"), "record_date is not set"),
    (Category.TAX, _set("record_date", BAD_DATE), "record_date is not a real date: 2025-02-30"),
    (Category.TAX, _set("record_date", dt.date(2026, 11, 30)), "record_date is in the future"),
    (Category.TAX, _set("record_date", dt.date(1948, 12, 31)), "record_date is before 1949-01-01"),
    (Category.TAX, _clear("tax"), "detail: the record sets none of"),
    # utility
    (Category.UTILITY, _set("utility.kind", 0), "utility.kind must be one of water, electricity, gas"),
    (Category.UTILITY, _set("utility.kind", 9), "utility.kind must be one of"),
    (Category.UTILITY, _set("utility.account_id", ""), "utility.account_id is empty"),
    (Category.UTILITY, _clear("utility.period_start"), "utility.period_start is not set"),
    (Category.UTILITY, _set("utility.period_end", BAD_DATE), "utility.period_end is not a real date"),
    (
        Category.UTILITY,
        _set("utility.period_start", dt.date(2025, 7, 1)),
        "utility.period_start must not be after utility.period_end",
    ),
    (Category.UTILITY, _set("utility.period_start", dt.date(2024, 6, 1)), "longer than a year"),
    (
        Category.UTILITY,
        _all(
            _set("utility.period_start", dt.date(2025, 7, 1)),
            _set("utility.period_end", dt.date(2025, 7, 31)),
        ),
        "utility.period_start is after record_date",
    ),
    (Category.UTILITY, _set("utility.amount_due_fen", -1), "utility.amount_due_fen must be ≥ 0: got -1"),
    (Category.UTILITY, _set("utility.amount_paid_fen", -5), "utility.amount_paid_fen must be ≥ 0"),
    (Category.UTILITY, _set("utility.arrears_months", -1), "utility.arrears_months must be ≥ 0"),
    (Category.UTILITY, _set("utility.arrears_fen", -1), "utility.arrears_fen must be ≥ 0"),
    (Category.UTILITY, _set("utility.arrears_months", 0), "must both be zero or both be positive"),
    (Category.UTILITY, _set("utility.arrears_fen", 0), "must both be zero or both be positive"),
    # social insurance and housing fund
    (Category.SOCIAL_INSURANCE, _clear("social_insurance.period"), "social_insurance.period is not set"),
    (
        Category.SOCIAL_INSURANCE,
        _set("social_insurance.period", dt.date(2025, 7, 1)),
        "social_insurance.period is after record_date",
    ),
    (
        Category.SOCIAL_INSURANCE,
        _set("social_insurance.insured_headcount", -3),
        "social_insurance.insured_headcount must be ≥ 0",
    ),
    (
        Category.SOCIAL_INSURANCE,
        _set("social_insurance.contribution_fen", -1),
        "social_insurance.contribution_fen must be ≥ 0",
    ),
    (
        Category.SOCIAL_INSURANCE,
        _set("social_insurance.arrears_fen", 10),
        "social_insurance.arrears_months and social_insurance.arrears_fen must both be zero",
    ),
    (
        Category.HOUSING_FUND,
        _set("housing_fund.contributor_headcount", -1),
        "housing_fund.contributor_headcount must be ≥ 0",
    ),
    (Category.HOUSING_FUND, _set("housing_fund.period", BAD_DATE), "housing_fund.period is not a real date"),
    (Category.HOUSING_FUND, _set("housing_fund.arrears_months", 0), "must both be zero or both be positive"),
    # logistics
    (Category.LOGISTICS, _set("logistics.kind", 0), "logistics.kind must be one of warehouse_receipt"),
    (Category.LOGISTICS, _set("logistics.reference", ""), "logistics.reference is empty"),
    (Category.LOGISTICS, _set("logistics.goods", ""), "logistics.goods is empty"),
    (Category.LOGISTICS, _set("logistics.warehouse", ""), "logistics.warehouse is empty"),
    (Category.LOGISTICS, _set("logistics.value_fen", -1), "logistics.value_fen must be ≥ 0"),
    (Category.LOGISTICS, _set("logistics.pledgee", ""), "logistics.pledgee is empty"),
    (
        Category.LOGISTICS,
        _set("logistics.pledged", False),
        "logistics.pledgee is set but logistics.pledged is false",
    ),
    (
        Category.LOGISTICS,
        _all(
            _set("logistics.kind", records_pb2.LOGISTICS_KIND_PLEDGE),
            _set("logistics.pledged", False),
            _set("logistics.pledgee", ""),
        ),
        "logistics.pledged must be true for a pledge",
    ),
    # tax
    (Category.TAX, _set("tax.year", 1993), "tax.year must be between 1994"),
    (Category.TAX, _set("tax.year", 2026), "tax.year must be between 1994 and the record_date's year 2025"),
    (Category.TAX, _set("tax.grade", 0), "tax.grade must be one of a, b, m, c, d"),
    (Category.TAX, _set("tax.tax_paid_fen", -1), "tax.tax_paid_fen must be ≥ 0"),
    (Category.TAX, _set("tax.arrears_fen", -1), "tax.arrears_fen must be ≥ 0"),
    # judicial
    (Category.JUDICIAL, _set("judicial.case_number", ""), "judicial.case_number is empty"),
    (Category.JUDICIAL, _set("judicial.court", ""), "judicial.court is empty"),
    (Category.JUDICIAL, _set("judicial.role", 0), "judicial.role must be one of plaintiff"),
    (Category.JUDICIAL, _set("judicial.cause", ""), "judicial.cause is empty"),
    (Category.JUDICIAL, _set("judicial.amount_fen", -1), "judicial.amount_fen must be ≥ 0"),
    (
        Category.JUDICIAL,
        _set("judicial.status", 0),
        "judicial.status must be one of open, closed, enforcement",
    ),
    (
        Category.JUDICIAL,
        _set("judicial.role", records_pb2.JUDICIAL_ROLE_PLAINTIFF),
        "judicial.dishonest_debtor is only possible for the defendant",
    ),
    # penalty
    (Category.PENALTY, _set("penalty.decision_number", ""), "penalty.decision_number is empty"),
    (Category.PENALTY, _set("penalty.authority", ""), "penalty.authority is empty"),
    (Category.PENALTY, _set("penalty.violation", ""), "penalty.violation is empty"),
    (Category.PENALTY, _set("penalty.fine_fen", -100), "penalty.fine_fen must be ≥ 0"),
    # loan
    (Category.LOAN, _set("loan.lender", ""), "loan.lender is empty"),
    (Category.LOAN, _set("loan.contract_id", ""), "loan.contract_id is empty"),
    (Category.LOAN, _set("loan.principal_fen", 0), "loan.principal_fen must be ≥ 1"),
    (Category.LOAN, _set("loan.balance_fen", -1), "loan.balance_fen must be ≥ 0"),
    (
        Category.LOAN,
        _set("loan.balance_fen", 100_000_001),
        "loan.balance_fen must not exceed loan.principal_fen",
    ),
    (Category.LOAN, _set("loan.status", 0), "loan.status must be one of current, overdue"),
    (Category.LOAN, _set("loan.days_overdue", -1), "loan.days_overdue must be ≥ 0"),
    (Category.LOAN, _set("loan.days_overdue", 0), "loan.days_overdue must be ≥ 1 for an overdue loan"),
    (
        Category.LOAN,
        _set("loan.status", records_pb2.LOAN_STATUS_CURRENT),
        "loan.days_overdue must be 0 unless the loan is overdue",
    ),
    (
        Category.LOAN,
        _all(_set("loan.status", records_pb2.LOAN_STATUS_SETTLED), _set("loan.days_overdue", 0)),
        "loan.balance_fen must be 0 for a settled loan",
    ),
    (Category.LOAN, _set("loan.maturity", BAD_DATE), "loan.maturity is not a real date"),
    # ip
    (Category.IP, _set("ip.kind", 0), "ip.kind must be one of invention_patent"),
    (Category.IP, _set("ip.registration_number", ""), "ip.registration_number is empty"),
    (Category.IP, _set("ip.title", ""), "ip.title is empty"),
    (Category.IP, _set("ip.pledge_amount_fen", -1), "ip.pledge_amount_fen must be ≥ 0"),
    (Category.IP, _set("ip.pledge_amount_fen", 0), "ip.pledge_amount_fen must be ≥ 1 for an IP pledge"),
    (Category.IP, _set("ip.pledgee", ""), "ip.pledgee is empty"),
    (
        Category.IP,
        _set("ip.kind", records_pb2.IP_KIND_TRADEMARK),
        "ip.pledge_amount_fen and ip.pledgee apply only to an IP pledge",
    ),
]


@pytest.mark.parametrize(
    ("category", "mutate", "message"), FAILURES, ids=[f"{c.value}:{m[:40]}" for c, _, m in FAILURES]
)
def test_every_rule_rejects_with_a_message_naming_the_field(
    category: Category, mutate: Mutator, message: str
) -> None:
    rec = base(category)
    records.validate_record(rec, today=TODAY)
    mutate(rec)
    before = rec.SerializeToString()
    with pytest.raises(RecordError) as err:
        records.validate_record(rec, today=TODAY)
    assert message in str(err.value)
    assert rec.SerializeToString() == before  # validation changes nothing


def test_a_record_may_be_dated_tomorrow_but_not_later() -> None:
    rec = base(Category.TAX)
    rec.record_date.CopyFrom(date_to_proto(TODAY + dt.timedelta(days=1)))
    records.validate_record(rec, today=TODAY)
    rec.record_date.CopyFrom(date_to_proto(TODAY + dt.timedelta(days=2)))
    with pytest.raises(RecordError, match="in the future"):
        records.validate_record(rec, today=TODAY)


def test_shipments_need_no_warehouse_and_unpledged_goods_no_pledgee() -> None:
    rec = base(Category.LOGISTICS)
    rec.logistics.kind = records_pb2.LOGISTICS_KIND_SHIPMENT
    rec.logistics.warehouse = ""
    rec.logistics.pledged = False
    rec.logistics.pledgee = ""
    assert records.validate_record(rec, today=TODAY) is Category.LOGISTICS


def test_written_off_loans_may_be_overdue_and_maturity_is_optional() -> None:
    rec = base(Category.LOAN)
    rec.loan.status = records_pb2.LOAN_STATUS_WRITTEN_OFF
    rec.loan.days_overdue = 400
    rec.loan.ClearField("maturity")
    assert records.validate_record(rec, today=TODAY) is Category.LOAN


def test_validation_defaults_to_today_in_china() -> None:
    rec = base(Category.TAX)
    rec.record_date.CopyFrom(date_to_proto(records.china_today() + dt.timedelta(days=3)))
    with pytest.raises(RecordError, match="in the future"):
        records.validate_record(rec)


# ---------------------------------------------------------------------------
# JSON


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_json_round_trip(category: Category) -> None:
    rec = base(category)
    rec.provider_id = "provider:340100-exchange"
    data = records.record_to_json(rec)
    assert data["category"] == category.value
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
    assert records.record_from_json(data) == rec


def test_human_json_form() -> None:
    data = records.record_to_json(base(Category.UTILITY))
    assert data == {
        "record_id": "r-1",
        "enterprise_uscc": USCC,
        "city": "340100",
        "source": "国网合肥供电公司",
        "record_date": "2025-06-30",
        "category": "utility",
        "utility": {
            "kind": "electricity",
            "account_id": "3401000001",
            "period_start": "2025-06-01",
            "period_end": "2025-06-30",
            "amount_due_fen": 1_234_500,
            "amount_paid_fen": 234_500,
            "arrears_months": 1,
            "arrears_fen": 1_000_000,
        },
    }


def test_json_accepts_the_protobuf_mapping_too() -> None:
    proto_form = {
        "recordId": "r-1",
        "enterpriseUscc": USCC.lower(),
        "city": "340100",
        "source": "国网合肥供电公司",
        "recordDate": {"year": 2025, "month": 6, "day": 30},
        "tax": {"year": 2024, "grade": "TAX_GRADE_B", "taxPaidFen": "12340000"},
    }
    assert records.record_from_json(proto_form) == base(Category.TAX)
    numeric = {**proto_form, "tax": {"year": 2024, "grade": 2, "tax_paid_fen": 12_340_000}}
    assert records.record_from_json(numeric) == base(Category.TAX)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown field 'colour'; expected one of: record_id"),
        ({"tax": {"year": 2024, "grade": "e"}}, "tax.grade must be one of a, b, m, c, d: got 'e'"),
        ({"city": "hefei"}, "city must be a city's six-digit division code"),
        ({"city": "340000"}, "is not a prefecture-level division or a municipality"),
        ({"record_date": "2025-02-30"}, "record_date is not a real date: 2025-02-30"),
        ({"record_date": "30/06/2025"}, "record_date must be a date written YYYY-MM-DD"),
        ({"tax": {"year": "twenty"}}, "tax.year must be an integer: got 'twenty'"),
        ({"tax": {"year": 20.5}}, "tax.year must be an integer"),
        ({"tax": {"year": True}}, "tax.year must be an integer"),
        ({"tax": {"tax_paid": 1}}, "unknown field 'tax_paid' in tax"),
        ({"tax": 5}, "tax must be an object, got a number"),
        ({"source": 5}, "source must be a string, got a number"),
        ({"category": "loan"}, "category says loan but the record's detail is tax"),
        ({"category": "gossip"}, "category: unknown category 'gossip'"),
        ({"tax": {"year": 2**40}}, "Value out of range"),
    ],
)
def test_json_errors_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    data = records.record_to_json(base(Category.TAX))
    data.update(change)
    with pytest.raises(RecordError) as err:
        records.record_from_json(data)
    assert message in str(err.value)


def test_json_record_must_be_an_object() -> None:
    with pytest.raises(RecordError, match="must be a JSON object, got an array"):
        records.record_from_json([1, 2])


def test_bools_accept_words_and_null_means_unset() -> None:
    data = records.record_to_json(base(Category.PENALTY))
    data["penalty"]["serious"] = "yes"
    data["provider_id"] = None
    assert records.record_from_json(data).penalty.serious is True
    data["penalty"]["serious"] = "maybe"
    with pytest.raises(RecordError, match=r"penalty\.serious must be true or false"):
        records.record_from_json(data)


# ---------------------------------------------------------------------------
# files


def write(path: Path, recs: list[records_pb2.CreditRecord]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        n = (records.write_csv if path.suffix == ".csv" else records.write_jsonl)(recs, fh)
    assert n == len(recs)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".csv"])
def test_files_round_trip_every_category(tmp_path: Path, suffix: str) -> None:
    recs = all_valid()
    recs[0].provider_id = "provider:x"
    path = write(tmp_path / f"records{suffix}", recs)
    rows = list(records.iter_file(path, today=TODAY))
    assert [r.error for r in rows] == [None] * len(recs)
    assert [r.record for r in rows] == recs
    first_data_line = 2 if suffix == ".csv" else 1
    assert [r.line_number for r in rows] == list(range(first_data_line, first_data_line + len(recs)))


def test_writers_are_deterministic(tmp_path: Path) -> None:
    for writer in (records.write_jsonl, records.write_csv):
        a, b = io.StringIO(), io.StringIO()
        writer(all_valid(), a)
        writer(all_valid(), b)
        assert a.getvalue() == b.getvalue() and a.getvalue()


def test_jsonl_broken_lines_become_error_rows(tmp_path: Path) -> None:
    good = [
        json.dumps(records.record_to_json(base(c, f"id-{c.value}")), ensure_ascii=False)
        for c in ALL_CATEGORIES
    ]
    invalid = records.record_to_json(base(Category.TAX, "bad-uscc"))
    invalid["enterprise_uscc"] = "91340100ABCDEFGHJ0"
    lines = [
        good[0].encode(),
        b"{not json",
        b"",
        b"   ",
        good[1].encode(),
        b'{"record_id": "\xff\xfe"}',
        b"[1, 2, 3]",
        b'{"record_id": 7}',
        json.dumps(invalid).encode(),
        good[2].encode(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = list(records.iter_file(path, today=TODAY))
    by_line = {r.line_number: r for r in rows}
    assert sorted(by_line) == [1, 2, 5, 6, 7, 8, 9, 10]  # blank lines 3 and 4 are skipped
    assert {ln for ln, r in by_line.items() if r.error is None} == {1, 5, 10}
    assert all(r.record is not None for r in rows if r.error is None)
    assert all(r.record is None for r in rows if r.error is not None)
    assert by_line[2].error is not None and by_line[2].error.startswith("not valid JSON")
    assert by_line[6].error == "not UTF-8 text: invalid byte at column 16"
    assert by_line[7].error == "a record must be a JSON object, got an array"
    assert by_line[8].error == "record_id must be a string, got a number"
    assert by_line[9].error is not None and by_line[9].error.startswith("enterprise_uscc:")


def test_jsonl_without_validation_keeps_parsable_but_invalid_records(tmp_path: Path) -> None:
    rec = base(Category.TAX)
    rec.tax.tax_paid_fen = -1
    path = write(tmp_path / "r.jsonl", [rec])
    (row,) = records.iter_file(path, validate=False)
    assert row.record == rec and row.error is None
    (row,) = records.iter_file(path, today=TODAY)
    assert row.record is None and row.error == "tax.tax_paid_fen must be ≥ 0: got -1"


def test_jsonl_overlong_line_is_one_error_row(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    good = json.dumps(records.record_to_json(base(Category.TAX)), ensure_ascii=False)
    path.write_text(
        "\n".join([good, '{"source": "' + "x" * (records.MAX_LINE_BYTES * 2) + '"}', good]) + "\n"
    )
    rows = list(records.iter_file(path, today=TODAY))
    assert [(r.line_number, r.error is None) for r in rows] == [(1, True), (2, False), (3, True)]
    assert rows[1].error is not None and "longer than" in rows[1].error


def test_jsonl_tolerates_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_text(
        "\ufeff" + json.dumps(records.record_to_json(base(Category.TAX))) + "\n", encoding="utf-8"
    )
    (row,) = records.iter_file(path, today=TODAY)
    assert row.error is None


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


TAX_HEADER = [*records.COMMON_COLUMNS, "year", "grade", "tax_paid_fen", "arrears_fen"]
TAX_ROW = ["t-1", USCC, "340100", "国家税务总局合肥市税务局", "2025-04-30", "tax", "2024", "A", "100", ""]


def test_csv_with_only_the_columns_it_needs(tmp_path: Path) -> None:
    path = tmp_path / "tax.csv"
    path.write_text(csv_text(list(reversed(TAX_HEADER)), [list(reversed(TAX_ROW))]), encoding="utf-8")
    (row,) = records.iter_file(path, today=TODAY)
    assert row.error is None and row.record is not None
    assert row.record.tax.grade == records_pb2.TAX_GRADE_A and row.record.tax.arrears_fen == 0
    assert row.record.city == pilot.HEFEI.proto


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (TAX_HEADER[1:], "lacks column(s) record_id"),
        ([*TAX_HEADER, "colour"], "unknown CSV column(s) 'colour'"),
        ([*TAX_HEADER, "year"], "repeats column(s) year"),
    ],
)
def test_csv_header_problems_raise_at_once(tmp_path: Path, header: list[str], message: str) -> None:
    path = tmp_path / "h.csv"
    path.write_text(csv_text(header, []), encoding="utf-8")
    with pytest.raises(RecordError) as err:
        records.iter_file(path)
    assert message in str(err.value)


def test_csv_empty_file_has_no_header(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(RecordError, match="no header line"):
        records.iter_file(path)


def test_csv_broken_rows_become_error_rows_with_their_line(tmp_path: Path) -> None:
    utility_row = ["u-1", USCC, "340100", "国网合肥供电公司", "2025-06-30", "utility", "", "", "", ""]
    text = csv_text(
        TAX_HEADER,
        [
            TAX_ROW,  # line 2
            [*TAX_ROW[:5], "", *TAX_ROW[6:]],  # 3: no category
            [*TAX_ROW[:5], "gossip", *TAX_ROW[6:]],  # 4
            TAX_ROW[:-1],  # 5: a cell short
            [*TAX_ROW[:6], "2024", "A", "lots", ""],  # 6
            utility_row,  # 7: the file has no utility columns
            [*TAX_ROW[:2], "", *TAX_ROW[3:]],  # 8: no city
        ],
    )
    text += '"t-2,' + USCC + ",340100\n"  # 9-10: an unterminated quote swallows the rest
    text += "x,y\n"
    path = tmp_path / "broken.csv"
    path.write_text(text, encoding="utf-8")
    rows = list(records.iter_file(path, today=TODAY))
    errors = {r.line_number: r.error for r in rows}
    assert errors[2] is None
    assert errors[3] == "category is empty"
    assert errors[4] is not None and errors[4].startswith("category: unknown category 'gossip'")
    assert errors[5] == "expected 10 columns as in the header, got 9"
    assert errors[6] == "tax.tax_paid_fen must be an integer: got 'lots'"
    assert errors[7] is not None and errors[7].startswith("the CSV has no column(s) kind, account_id")
    assert errors[8] is not None and errors[8].startswith("city must be a city's six-digit division code")
    assert errors[9] is not None
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 9]


def test_csv_value_in_a_column_of_another_category(tmp_path: Path) -> None:
    header = [*TAX_HEADER, "lender"]
    path = tmp_path / "foreign.csv"
    path.write_text(csv_text(header, [[*TAX_ROW, "中国银行"]]), encoding="utf-8")
    (row,) = records.iter_file(path, today=TODAY)
    assert row.error == "column(s) lender do not apply to a tax record"


def test_csv_bad_utf8_row_is_an_error_row(tmp_path: Path) -> None:
    good = csv_text(TAX_HEADER, [TAX_ROW]).encode()
    bad_row = ",".join(TAX_ROW).encode().replace(b"t-1", b"t-\xff")
    path = tmp_path / "bytes.csv"
    path.write_bytes(good + bad_row + b"\n" + good.split(b"\n", 1)[1])
    rows = list(records.iter_file(path, today=TODAY))
    assert [(r.line_number, r.error) for r in rows] == [(2, None), (3, "not UTF-8 text"), (4, None)]


def test_csv_multiline_cell_counts_lines(tmp_path: Path) -> None:
    rec = base(Category.PENALTY)
    rec.penalty.violation = "发布\n虚假广告"  # legal in CSV, refused by validation
    path = write(tmp_path / "multi.csv", [rec, base(Category.TAX)])
    rows = list(records.iter_file(path, today=TODAY))
    assert [r.line_number for r in rows] == [2, 4]
    assert rows[0].error == "penalty.violation has unprintable characters: '发布\\n虚假广告'"
    assert rows[1].error is None


@pytest.mark.parametrize("name", ["records.txt", "records.json", "records", "records.csv.gz"])
def test_unknown_file_types_raise(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("{}\n")
    with pytest.raises(RecordError, match="unknown record file type"):
        records.iter_file(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_binary_content_raises(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(RecordError, match="binary file"):
        records.iter_file(path)
    path.write_bytes(bytes(range(128, 256)) * 64)  # no NUL, but not UTF-8 either
    with pytest.raises(RecordError, match="not UTF-8 text"):
        records.iter_file(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        records.iter_file(tmp_path / "absent.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(RecordError, match="is a directory"):
        records.iter_file(tmp_path / "dir.jsonl")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_reading_streams(tmp_path: Path, suffix: str) -> None:
    """Rows are read as they are asked for: a line appended after the first row was read still arrives."""
    path = tmp_path / f"grow{suffix}"
    writer = records.write_csv if suffix == ".csv" else records.write_jsonl
    write(path, [base(Category.TAX, "first"), base(Category.TAX, "second")])
    rows = records.iter_file(path, today=TODAY)
    first = next(rows)
    extra = io.StringIO()
    writer([base(Category.LOAN, "appended")], extra)
    appended = extra.getvalue().split("\n", 1)[1] if suffix == ".csv" else extra.getvalue()
    with path.open("a", encoding="utf-8") as fh:
        fh.write(appended)
    rest = list(rows)
    assert [r.record.record_id for r in [first, *rest] if r.record] == ["first", "second", "appended"]


def _peak_while_reading(path: Path) -> int:
    tracemalloc.start()
    try:
        count = sum(1 for row in records.iter_file(path, validate=False) if row.error is None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 0
    return peak


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_reading_memory_does_not_grow_with_the_file(tmp_path: Path, suffix: str) -> None:
    small = write(tmp_path / f"small{suffix}", [base(Category.UTILITY)] * 200)
    large = write(tmp_path / f"large{suffix}", [base(Category.UTILITY)] * 2_000)
    growth = large.stat().st_size - small.stat().st_size
    assert growth > 300_000
    # Ten times the rows, yet the peak grows by less than a tenth of the extra bytes.
    assert _peak_while_reading(large) < _peak_while_reading(small) + growth // 10
