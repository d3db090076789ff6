"""Credit records on the domain side: validation and the JSONL and CSV file formats.

The wire form is ``creditnet.v2.records_pb2.CreditRecord``. This module decides
whether a record makes sense (:func:`validate_record`) and reads and writes
the two file formats ``creditnet node ingest`` and ``creditnet data generate``
use.

JSONL (``.jsonl`` or ``.ndjson``): one JSON object per line in the protobuf
JSON mapping with the proto's field names, plus three conveniences for people
writing files by hand: dates may be ``"YYYY-MM-DD"`` strings, enum values may
be their short lower-case names (``"electricity"``, ``"a"``) as well as their
full names (``"UTILITY_KIND_ELECTRICITY"``) or numbers, and an optional
``"category"`` key must agree with the detail that is set. ``city`` is the
six-digit division code of the city whose node holds the record::

    {"record_id": "HF-UTL-0001", "enterprise_uscc": "91340100MA2N0U3E6T",
     "city": "340100", "source": "国网合肥供电公司", "record_date": "2024-03-31",
     "category": "utility", "utility": {"kind": "electricity", "account_id": "HF-0001",
     "period_start": "2024-03-01", "period_end": "2024-03-31",
     "amount_due_fen": 1234500, "amount_paid_fen": 1234500}}

CSV (``.csv``, UTF-8, header line required): the columns of :data:`CSV_COLUMNS`
in any order. ``record_id``, ``enterprise_uscc``, ``city``, ``source``,
``record_date`` and ``category`` are required; ``provider_id`` is optional;
then every field of every detail message is a column named after the field
(``amount_due_fen``, ``kind``, ``period``, ...). Fields that several
categories share (``kind``, ``arrears_fen``, ``pledgee``, ``status``, ...)
share one column, read according to the row's ``category``. A row fills only
the columns of its category (an empty cell is the field's default); a value in
a column of another category is an error. Dates are ``YYYY-MM-DD``, enums their
short names, booleans ``true``/``false``.

Reading is streaming: :func:`iter_file` yields one :class:`ParsedRow` per line
(per CSV row) and never holds the file in memory. A broken line becomes an
error row; only a file that is not JSONL or CSV at all raises
:class:`RecordError`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, TypeAlias

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from creditnet import uscc as uscc_mod
from creditnet.domain import Category, City
from creditnet.errors import Error
from creditnet.v2 import common_pb2, records_pb2

__all__ = [
    "COMMON_COLUMNS",
    "MAX_LINE_BYTES",
    "ParsedRow",
    "RecordError",
    "category_of",
    "china_today",
    "iter_file",
    "record_from_json",
    "record_to_json",
    "validate_record",
    "write_csv",
    "write_jsonl",
]


class RecordError(Error, ValueError):
    """A record, a line or a file that cannot be accepted; the message says why."""


class ParsedRow(NamedTuple):
    """One line of a record file: a record, or the reason there is none."""

    line_number: int
    record: records_pb2.CreditRecord | None
    error: str | None


MAX_RECORD_ID: Final = 128
MAX_TEXT: Final = 256
# People's Republic records: nothing a node holds predates 1949.
EARLIEST_DATE: Final = dt.date(1949, 1, 1)
# The tax-sharing reform of 1994 started today's tax system; earlier tax
# years are not something a credit record can meaningfully refer to.
EARLIEST_TAX_YEAR: Final = 1994
# A billing period longer than a year is a unit mistake, not a bill.
MAX_BILLING_DAYS: Final = 366
MAX_LINE_BYTES: Final = 1 << 20
# How much of a file is read up front to tell text from binary and check the CSV header.
SNIFF_BYTES: Final = 1 << 13
CHINA_TZ: Final = dt.timezone(dt.timedelta(hours=8), "CST")

JSONL_SUFFIXES: Final = (".jsonl", ".ndjson")
CSV_SUFFIXES: Final = (".csv",)

_DATE_TYPE = common_pb2.Date.DESCRIPTOR.full_name
_INT_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)
_DETAIL_FIELDS: Final = tuple(
    f.name for f in records_pb2.CreditRecord.DESCRIPTOR.oneofs_by_name["detail"].fields
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def china_today() -> dt.date:
    """Today's date in China Standard Time, the calendar records are dated in."""
    return dt.datetime.now(CHINA_TZ).date()


# ---------------------------------------------------------------------------
# validation


def category_of(rec: records_pb2.CreditRecord) -> Category:
    """The record's category: the name of the detail field that is set."""
    field = rec.WhichOneof("detail")
    if field is None:
        raise RecordError(f"detail: the record sets none of {', '.join(_DETAIL_FIELDS)}")
    return Category.from_oneof_field(field)


def validate_record(rec: records_pb2.CreditRecord, *, today: dt.date | None = None) -> Category:
    """Check that a record makes sense and return its category; raise RecordError if not.

    `today` (default: today in China) bounds record dates: a record may be
    dated at most one day ahead, to allow for clocks and time zones.
    """
    rid = rec.record_id
    if not rid:
        raise RecordError("record_id is empty")
    if len(rid) > MAX_RECORD_ID:
        raise RecordError(f"record_id is longer than {MAX_RECORD_ID} characters: {len(rid)}")
    if not rid.isprintable():
        raise RecordError(f"record_id has unprintable characters: {rid!r}")
    try:
        canonical = uscc_mod.validate(rec.enterprise_uscc)
    except uscc_mod.InvalidUSCC as exc:
        raise RecordError(f"enterprise_uscc: {exc}") from None
    if canonical != rec.enterprise_uscc:
        raise RecordError(f"enterprise_uscc must be written in canonical form: {canonical}")
    try:
        City.from_proto(rec.city)
    except ValueError as exc:
        raise RecordError(f"city must be a city's six-digit division code: {exc}") from None
    _text(rec.source, "source", required=True)
    if rec.provider_id:
        _text(rec.provider_id, "provider_id", required=False)
    if not rec.HasField("record_date"):
        raise RecordError("record_date is not set")
    day = _real_date(rec.record_date, "record_date")
    latest = (today or china_today()) + dt.timedelta(days=1)
    if day > latest:
        raise RecordError(f"record_date is in the future: {day} is after {latest}")
    category = category_of(rec)
    _CHECKS[category](_Fields(getattr(rec, category.oneof_field), category.oneof_field), day)
    return category


class _Fields:
    """Reads fields of one detail message and names them in error messages."""

    __slots__ = ("msg", "prefix")

    def __init__(self, msg: Message, prefix: str) -> None:
        self.msg = msg
        self.prefix = prefix

    def name(self, field: str) -> str:
        return f"{self.prefix}.{field}"

    def get(self, field: str) -> Any:
        return getattr(self.msg, field)

    def at_least(self, field: str, minimum: int) -> int:
        value: int = self.get(field)
        if value < minimum:
            raise RecordError(f"{self.name(field)} must be ≥ {minimum}: got {value}")
        return value

    def text(self, field: str, *, required: bool = True) -> str:
        return _text(self.get(field), self.name(field), required=required)

    def enum(self, field: str) -> int:
        value: int = self.get(field)
        fd = self.msg.DESCRIPTOR.fields_by_name[field]
        assert fd.enum_type is not None
        names = _enum_short_names(fd.enum_type)
        if value not in names:
            choices = ", ".join(names.values())
            raise RecordError(f"{self.name(field)} must be one of {choices}: got {value}")
        return value

    def date(self, field: str, *, required: bool = True) -> dt.date | None:
        if not self.msg.HasField(field):
            if required:
                raise RecordError(f"{self.name(field)} is not set")
            return None
        return _real_date(self.get(field), self.name(field))

    def arrears(self, months_field: str = "arrears_months", fen_field: str = "arrears_fen") -> None:
        months = self.at_least(months_field, 0)
        fen = self.at_least(fen_field, 0)
        if (months == 0) != (fen == 0):
            raise RecordError(
                f"{self.name(months_field)} and {self.name(fen_field)} must both be zero or both "
                f"be positive: got {months} months and {fen} fen"
            )


def _text(value: str, name: str, *, required: bool) -> str:
    if required and not value.strip():
        raise RecordError(f"{name} is empty")
    if len(value) > MAX_TEXT:
        raise RecordError(f"{name} is longer than {MAX_TEXT} characters: {len(value)}")
    if not value.isprintable():
        raise RecordError(f"{name} has unprintable characters: {value!r}")
    return value


def _real_date(value: common_pb2.Date, name: str) -> dt.date:
    try:
        day = dt.date(value.year, value.month, value.day)
    except ValueError:
        raise RecordError(
            f"{name} is not a real date: {value.year:04d}-{value.month:02d}-{value.day:02d}"
        ) from None
    if day < EARLIEST_DATE:
        raise RecordError(f"{name} is before {EARLIEST_DATE}: {day}")
    return day


def _check_utility(f: _Fields, record_date: dt.date) -> None:
    f.enum("kind")
    f.text("account_id")
    start, end = f.date("period_start"), f.date("period_end")
    assert start is not None and end is not None
    if start > end:
        raise RecordError(f"utility.period_start must not be after utility.period_end: {start} > {end}")
    if (end - start).days >= MAX_BILLING_DAYS:
        raise RecordError(f"utility billing period is longer than a year: {start} to {end}")
    if start > record_date:
        raise RecordError(f"utility.period_start is after record_date: {start} > {record_date}")
    f.at_least("amount_due_fen", 0)
    f.at_least("amount_paid_fen", 0)
    f.arrears()


def _check_contributions(headcount_field: str) -> Callable[[_Fields, dt.date], None]:
    def check(f: _Fields, record_date: dt.date) -> None:
        period = f.date("period")
        assert period is not None
        if period > record_date:
            raise RecordError(f"{f.name('period')} is after record_date: {period} > {record_date}")
        f.at_least(headcount_field, 0)
        f.at_least("contribution_fen", 0)
        f.arrears()

    return check


def _check_logistics(f: _Fields, record_date: dt.date) -> None:
    kind = f.enum("kind")
    f.text("reference")
    f.text("goods")
    f.text("warehouse", required=kind != records_pb2.LOGISTICS_KIND_SHIPMENT)
    f.at_least("value_fen", 0)
    pledged = bool(f.get("pledged"))
    pledgee = f.text("pledgee", required=pledged)
    if kind == records_pb2.LOGISTICS_KIND_PLEDGE and not pledged:
        raise RecordError("logistics.pledged must be true for a pledge")
    if pledgee and not pledged:
        raise RecordError("logistics.pledgee is set but logistics.pledged is false")


def _check_tax(f: _Fields, record_date: dt.date) -> None:
    year: int = f.get("year")
    if not EARLIEST_TAX_YEAR <= year <= record_date.year:
        raise RecordError(
            f"tax.year must be between {EARLIEST_TAX_YEAR} and the record_date's year "
            f"{record_date.year}: got {year}"
        )
    f.enum("grade")
    f.at_least("tax_paid_fen", 0)
    f.at_least("arrears_fen", 0)


def _check_judicial(f: _Fields, record_date: dt.date) -> None:
    f.text("case_number")
    f.text("court")
    role = f.enum("role")
    f.text("cause")
    f.at_least("amount_fen", 0)
    f.enum("status")
    if f.get("dishonest_debtor") and role != records_pb2.JUDICIAL_ROLE_DEFENDANT:
        raise RecordError("judicial.dishonest_debtor is only possible for the defendant (role defendant)")


def _check_penalty(f: _Fields, record_date: dt.date) -> None:
    f.text("decision_number")
    f.text("authority")
    f.text("violation")
    f.at_least("fine_fen", 0)


def _check_loan(f: _Fields, record_date: dt.date) -> None:
    f.text("lender")
    f.text("contract_id")
    principal = f.at_least("principal_fen", 1)
    balance = f.at_least("balance_fen", 0)
    if balance > principal:
        raise RecordError(f"loan.balance_fen must not exceed loan.principal_fen: {balance} > {principal}")
    status = f.enum("status")
    days = f.at_least("days_overdue", 0)
    if status == records_pb2.LOAN_STATUS_OVERDUE and days == 0:
        raise RecordError("loan.days_overdue must be ≥ 1 for an overdue loan")
    if status in (records_pb2.LOAN_STATUS_CURRENT, records_pb2.LOAN_STATUS_SETTLED) and days:
        raise RecordError(
            f"loan.days_overdue must be 0 unless the loan is overdue or written off: got {days}"
        )
    if status == records_pb2.LOAN_STATUS_SETTLED and balance:
        raise RecordError(f"loan.balance_fen must be 0 for a settled loan: got {balance}")
    f.date("maturity", required=False)


def _check_ip(f: _Fields, record_date: dt.date) -> None:
    kind = f.enum("kind")
    f.text("registration_number")
    f.text("title")
    amount = f.at_least("pledge_amount_fen", 0)
    if kind == records_pb2.IP_KIND_IP_PLEDGE:
        if amount == 0:
            raise RecordError("ip.pledge_amount_fen must be ≥ 1 for an IP pledge")
        f.text("pledgee")
    elif amount or f.get("pledgee"):
        raise RecordError("ip.pledge_amount_fen and ip.pledgee apply only to an IP pledge (kind ip_pledge)")


_CHECKS: dict[Category, Callable[[_Fields, dt.date], None]] = {
    Category.UTILITY: _check_utility,
    Category.SOCIAL_INSURANCE: _check_contributions("insured_headcount"),
    Category.HOUSING_FUND: _check_contributions("contributor_headcount"),
    Category.LOGISTICS: _check_logistics,
    Category.TAX: _check_tax,
    Category.JUDICIAL: _check_judicial,
    Category.PENALTY: _check_penalty,
    Category.LOAN: _check_loan,
    Category.IP: _check_ip,
}


# ---------------------------------------------------------------------------
# the human JSON form


# The protobuf stubs type the pure-Python and the upb descriptors as unrelated
# classes, and messages hand out either; both have the attributes used here.
_EnumDesc: TypeAlias = EnumDescriptor | Any

_SHORT_NAMES: dict[str, dict[int, str]] = {}
_FROM_SHORT: dict[str, dict[str, int]] = {}


def _enum_short_names(enum: _EnumDesc) -> dict[int, str]:
    """Number -> short lower-case name, without the UNSPECIFIED zero value."""
    names = _SHORT_NAMES.get(enum.full_name)
    if names is None:
        prefix = _enum_prefix(enum)
        names = {v.number: v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0}
        _SHORT_NAMES[enum.full_name] = names
        lookup = {short: n for n, short in names.items()}
        lookup.update({v.name.lower(): v.number for v in enum.values})
        _FROM_SHORT[enum.full_name] = lookup
    return names


def _enum_prefix(enum: _EnumDesc) -> str:
    # proto style prefixes every value with the enum's name in UPPER_SNAKE.
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _enum_json(enum: _EnumDesc, value: int) -> str | int:
    return _enum_short_names(enum).get(value, value)


def _date_json(value: common_pb2.Date) -> str | dict[str, int]:
    try:
        return dt.date(value.year, value.month, value.day).isoformat()
    except ValueError:
        return {"year": value.year, "month": value.month, "day": value.day}


def _message_json(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None:
            if not msg.HasField(fd.name):
                continue
            out[fd.name] = (
                _date_json(value) if fd.message_type.full_name == _DATE_TYPE else _message_json(value)
            )
        elif fd.enum_type is not None:
            out[fd.name] = _enum_json(fd.enum_type, value)
        else:
            out[fd.name] = value
    return out


def record_to_json(rec: records_pb2.CreditRecord) -> dict[str, Any]:
    """The human JSON form: short enum names, ISO dates, integers as numbers.

    Every field of the detail is present (zeros included); ``provider_id``
    only when set. :func:`record_from_json` reads it back.
    """
    out: dict[str, Any] = {
        "record_id": rec.record_id,
        "enterprise_uscc": rec.enterprise_uscc,
        "city": rec.city,
        "source": rec.source,
    }
    if rec.provider_id:
        out["provider_id"] = rec.provider_id
    if rec.HasField("record_date"):
        out["record_date"] = _date_json(rec.record_date)
    field = rec.WhichOneof("detail")
    if field is not None:
        out["category"] = field
        out[field] = _message_json(getattr(rec, field))
    return out


def record_from_json(obj: object) -> records_pb2.CreditRecord:
    """Build a record from its JSON form (either the human form or the protobuf mapping)."""
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object, got {_json_type(obj)}")
    data = dict(obj)
    category = data.pop("category", None)
    normal = _normalise(data, records_pb2.CreditRecord.DESCRIPTOR, "")
    rec = records_pb2.CreditRecord()
    try:
        json_format.ParseDict(normal, rec)
    except json_format.ParseError as exc:
        raise RecordError(str(exc).split(" at ", 1)[0].removeprefix("Failed to parse ")) from None
    if category is not None:
        if not isinstance(category, str):
            raise RecordError(f"category must be a name such as utility, got {_json_type(category)}")
        try:
            declared = Category.parse(category)
        except ValueError as exc:
            raise RecordError(f"category: {exc}") from None
        actual = rec.WhichOneof("detail")
        if actual != declared.oneof_field:
            raise RecordError(
                f"category says {declared.value} but the record's detail is {actual or 'missing'}"
            )
    if rec.city:
        # A city name ("hefei") where a code belongs is told at once, not
        # left for validation to find.
        try:
            City(rec.city)
        except ValueError as exc:
            raise RecordError(f"city must be a city's six-digit division code: {exc}") from None
    if rec.enterprise_uscc and uscc_mod.is_valid(rec.enterprise_uscc):
        rec.enterprise_uscc = uscc_mod.validate(rec.enterprise_uscc)
    return rec


def _json_type(value: object) -> str:
    match value:
        case dict():
            return "an object"
        case list():
            return "an array"
        case str():
            return "a string"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case None:
            return "null"
    return type(value).__name__


def _normalise(obj: dict[str, Any], desc: Descriptor, path: str) -> dict[str, Any]:
    """Turn the human conveniences into the protobuf JSON mapping, with clear errors."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        fd = desc.fields_by_name.get(key) or desc.fields_by_camelcase_name.get(key)
        if fd is None:
            known = ", ".join(f.name for f in desc.fields)
            where = f" in {path.rstrip('.')}" if path else ""
            raise RecordError(f"unknown field {key!r}{where}; expected one of: {known}")
        name = path + fd.name
        if value is None:
            continue
        if fd.is_repeated:
            raise RecordError(f"{name}: repeated fields are not supported")
        if fd.message_type is not None:
            if fd.message_type.full_name == _DATE_TYPE:
                out[fd.name] = _date_value(value, name)
            elif isinstance(value, dict):
                out[fd.name] = _normalise(value, fd.message_type, name + ".")
            else:
                raise RecordError(f"{name} must be an object, got {_json_type(value)}")
        elif fd.enum_type is not None:
            out[fd.name] = _enum_value(fd.enum_type, value, name)
        elif fd.cpp_type in _INT_TYPES:
            out[fd.name] = _int_value(value, name)
        elif fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            out[fd.name] = _bool_value(value, name)
        elif fd.cpp_type == FieldDescriptor.CPPTYPE_STRING:
            if not isinstance(value, str):
                raise RecordError(f"{name} must be a string, got {_json_type(value)}")
            out[fd.name] = value
        else:
            out[fd.name] = value
    return out


def _date_value(value: object, name: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            day = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise RecordError(f"{name} is not a real date: {value}") from None
        return {"year": day.year, "month": day.month, "day": day.day}
    raise RecordError(f"{name} must be a date written YYYY-MM-DD: got {value!r}")


def _enum_value(enum: _EnumDesc, value: object, name: str) -> int:
    names = _enum_short_names(enum)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        number = _FROM_SHORT[enum.full_name].get(value.strip().lower().replace("-", "_"))
        if number is not None:
            return number
    raise RecordError(f"{name} must be one of {', '.join(names.values())}: got {value!r}")


def _int_value(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise RecordError(f"{name} must be an integer: got {value!r}")


_TRUE = frozenset({"true", "1", "yes", "y"})
_FALSE = frozenset({"false", "0", "no", "n"})


def _bool_value(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise RecordError(f"{name} must be true or false: got {value!r}")


# ---------------------------------------------------------------------------
# CSV layout

COMMON_COLUMNS: Final = ("record_id", "enterprise_uscc", "city", "source", "record_date", "category")
OPTIONAL_COLUMNS: Final = ("provider_id",)


def _detail_columns() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    seen: dict[str, None] = {}
    per_category: dict[str, tuple[str, ...]] = {}
    for field in _DETAIL_FIELDS:
        desc = records_pb2.CreditRecord.DESCRIPTOR.fields_by_name[field].message_type
        assert desc is not None
        names = tuple(f.name for f in desc.fields)
        per_category[field] = names
        seen.update(dict.fromkeys(names))
    clash = set(seen) & set(COMMON_COLUMNS + OPTIONAL_COLUMNS)
    assert not clash, f"detail fields clash with common CSV columns: {clash}"
    return tuple(seen), per_category


DETAIL_COLUMNS, _CATEGORY_COLUMNS = _detail_columns()
CSV_COLUMNS: Final = COMMON_COLUMNS + OPTIONAL_COLUMNS + DETAIL_COLUMNS
_KNOWN_COLUMNS = frozenset(CSV_COLUMNS)


def _cell(fd: FieldDescriptor, value: Any) -> str:
    if fd.message_type is not None:
        date = _date_json(value)
        return date if isinstance(date, str) else f"{date['year']:04d}-{date['month']:02d}-{date['day']:02d}"
    if fd.enum_type is not None:
        return str(_enum_json(fd.enum_type, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _csv_row(rec: records_pb2.CreditRecord) -> list[str]:
    cells = dict.fromkeys(CSV_COLUMNS, "")
    cells["record_id"] = rec.record_id
    cells["enterprise_uscc"] = rec.enterprise_uscc
    cells["city"] = rec.city
    cells["source"] = rec.source
    cells["provider_id"] = rec.provider_id
    if rec.HasField("record_date"):
        cells["record_date"] = _cell(
            records_pb2.CreditRecord.DESCRIPTOR.fields_by_name["record_date"], rec.record_date
        )
    field = rec.WhichOneof("detail")
    if field is not None:
        cells["category"] = field
        detail = getattr(rec, field)
        for fd in detail.DESCRIPTOR.fields:
            if fd.message_type is not None and not detail.HasField(fd.name):
                continue
            cells[fd.name] = _cell(fd, getattr(detail, fd.name))
    return list(cells.values())


def _check_header(header: list[str], source: str) -> list[str]:
    names = [h.strip() for h in header]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RecordError(f"{source}: the CSV header repeats column(s) {', '.join(dupes)}")
    unknown = [n for n in names if n not in _KNOWN_COLUMNS]
    if unknown:
        raise RecordError(
            f"{source}: unknown CSV column(s) {', '.join(map(repr, unknown))}; the columns are "
            f"{', '.join(COMMON_COLUMNS)}, optionally provider_id, and the detail fields "
            f"{', '.join(DETAIL_COLUMNS)}"
        )
    missing = [n for n in COMMON_COLUMNS if n not in names]
    if missing:
        raise RecordError(
            f"{source}: the CSV header lacks column(s) {', '.join(missing)}; the first line must "
            f"name the columns, at least {', '.join(COMMON_COLUMNS)}"
        )
    return names


def _csv_record(header: list[str], row: list[str]) -> records_pb2.CreditRecord:
    if len(row) != len(header):
        raise RecordError(f"expected {len(header)} columns as in the header, got {len(row)}")
    cells = dict(zip(header, row, strict=True))
    category_text = cells["category"].strip()
    if not category_text:
        raise RecordError("category is empty")
    try:
        category = Category.parse(category_text)
    except ValueError as exc:
        raise RecordError(f"category: {exc}") from None
    own = _CATEGORY_COLUMNS[category.oneof_field]
    absent = [c for c in own if c not in cells]
    if absent:
        raise RecordError(f"the CSV has no column(s) {', '.join(absent)} for {category.value} records")
    foreign = [c for c in DETAIL_COLUMNS if c not in own and cells.get(c, "").strip()]
    if foreign:
        raise RecordError(f"column(s) {', '.join(foreign)} do not apply to a {category.value} record")
    data: dict[str, Any] = {
        c: cells[c] for c in (*COMMON_COLUMNS, *OPTIONAL_COLUMNS) if c in cells and c != "category"
    }
    for key in ("city", "record_date"):
        if not data[key].strip():
            data[key] = None
    data[category.oneof_field] = {c: cells[c] for c in own if cells[c].strip()}
    return record_from_json(data)


# ---------------------------------------------------------------------------
# reading and writing files


def iter_file(path: Path, *, validate: bool = True, today: dt.date | None = None) -> Iterator[ParsedRow]:
    """Stream the rows of a JSONL or CSV record file.

    Raises RecordError at once if the file is not a JSONL or CSV text file
    (unknown extension, binary content, unusable CSV header). Afterwards
    every line yields a ParsedRow; a line that cannot be parsed, or (with
    `validate`) holds a record :func:`validate_record` rejects, yields an
    error row with its line number. Blank lines are skipped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise RecordError(
            f"{path}: unknown record file type {suffix or '(no extension)'!r}; "
            "expected .jsonl (one JSON object per line) or .csv"
        )
    if path.is_dir():
        raise RecordError(f"{path} is a directory, not a record file")
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    _check_text(head, path)
    check = (lambda rec: validate_record(rec, today=today)) if validate else None
    if suffix in CSV_SUFFIXES:
        first_line = head.split(b"\n", 1)[0].decode("utf-8", "replace").removeprefix("\ufeff")
        if not first_line.strip():
            raise RecordError(f"{path}: the CSV file has no header line")
        header = _check_header(next(csv.reader([first_line])), str(path))
        return _iter_csv(path, header, check)
    return _iter_jsonl(path, check)


def _check_text(head: bytes, path: Path) -> None:
    if b"\x00" in head:
        raise RecordError(f"{path} is a binary file, not JSONL or CSV text")
    text = head.decode("utf-8", "replace")
    # A short tail of replacements may be a character cut by the read; more
    # than that in the first bytes means the file is not UTF-8 text at all.
    if text.count("\ufffd") > max(3, len(text) // 10):
        raise RecordError(f"{path} is not UTF-8 text, so not a JSONL or CSV record file")


def _row(
    line: int, rec: records_pb2.CreditRecord, check: Callable[[records_pb2.CreditRecord], object] | None
) -> ParsedRow:
    if check is not None:
        try:
            check(rec)
        except RecordError as exc:
            return ParsedRow(line, None, str(exc))
    return ParsedRow(line, rec, None)


def _iter_jsonl(
    path: Path, check: Callable[[records_pb2.CreditRecord], object] | None
) -> Iterator[ParsedRow]:
    with path.open("rb") as fh:
        line = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            line += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := fh.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield ParsedRow(line, None, f"line is longer than {MAX_LINE_BYTES} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield ParsedRow(line, None, f"not UTF-8 text: invalid byte at column {exc.start + 1}")
                continue
            if line == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield ParsedRow(line, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            except RecursionError:
                yield ParsedRow(line, None, "not valid JSON: nested too deeply")
                continue
            try:
                rec = record_from_json(obj)
            except RecordError as exc:
                yield ParsedRow(line, None, str(exc))
                continue
            yield _row(line, rec, check)


def _iter_csv(
    path: Path, header: list[str], check: Callable[[records_pb2.CreditRecord], object] | None
) -> Iterator[ParsedRow]:
    # surrogateescape keeps undecodable bytes visible per row instead of
    # aborting the whole file on the first bad byte.
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            next(reader)
        except (StopIteration, csv.Error):
            return
        ended = reader.line_num
        while True:
            start = ended + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                ended = reader.line_num
                yield ParsedRow(start, None, f"broken CSV: {exc}")
                continue
            ended = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                "".join(row).encode("utf-8")
            except UnicodeEncodeError:
                yield ParsedRow(start, None, "not UTF-8 text")
                continue
            try:
                rec = _csv_record(header, row)
            except RecordError as exc:
                yield ParsedRow(start, None, str(exc))
                continue
            yield _row(start, rec, check)


def write_jsonl(records: Iterable[records_pb2.CreditRecord], fp: IO[str]) -> int:
    """Write records one JSON object per line (the human form); return how many."""
    n = 0
    for rec in records:
        fp.write(json.dumps(record_to_json(rec), ensure_ascii=False))
        fp.write("\n")
        n += 1
    return n


def write_csv(records: Iterable[records_pb2.CreditRecord], fp: IO[str]) -> int:
    """Write records as CSV with every column of :data:`CSV_COLUMNS`; return how many."""
    writer = csv.writer(fp, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for rec in records:
        writer.writerow(_csv_row(rec))
        n += 1
    return n
