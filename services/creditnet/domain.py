"""The network's vocabulary: cities, credit categories and purposes.

Categories and purposes are enums: the one place that maps between the names
people type (``social_insurance``, ``loan_application``) and the protobuf
enum numbers. Cities are not enumerated: a `City` is a division code, and the
signed network directory says which cities are members.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Self, TypeVar

from creditnet import divisions
from creditnet.v2 import common_pb2

__all__ = [
    "ALL_CATEGORIES",
    "MAX_SCOPE_CITIES",
    "Category",
    "City",
    "Purpose",
    "distinct_from_proto",
    "sorted_cities",
]


class _Named(enum.Enum):
    """An enum whose value is its lower-case wire name."""

    @classmethod
    def parse(cls, text: str) -> Self:
        key = text.strip().lower().replace("-", "_")
        for member in cls:
            if member.value == key:
                return member
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown {cls.__name__.lower()} {text!r}; expected one of: {choices}")

    @classmethod
    def parse_many(cls, text: str | Iterable[str]) -> tuple[Self, ...]:
        parts = text.split(",") if isinstance(text, str) else list(text)
        seen: dict[Self, None] = {}
        for part in parts:
            if part.strip():
                seen[cls.parse(part)] = None
        return tuple(seen)

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True, slots=True)
class City:
    """A network city, by its six-digit GB/T 2260 administrative-division code.

    Only prefecture-level divisions and municipalities are cities
    (`creditnet.divisions`); which of them are members of the network is the
    signed directory's business, never this class's. Cities order by code,
    which is the order every list of cities on the wire and in the chain uses.
    """

    code: str

    # Hashed and ordered by the code itself rather than through a tuple of
    # it, as a dataclass would: a national answer looks up and sorts hundreds
    # of cities.
    def __hash__(self) -> int:
        return hash(self.code)

    def __lt__(self, other: object) -> bool:
        return self.code < other.code if isinstance(other, City) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.code <= other.code if isinstance(other, City) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.code > other.code if isinstance(other, City) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.code >= other.code if isinstance(other, City) else NotImplemented

    def __post_init__(self) -> None:
        try:
            divisions.city(self.code)
        except divisions.DivisionError as exc:
            raise ValueError(f"city {self.code!r}: {exc.message}") from None

    @property
    def value(self) -> str:
        """The code: what role URIs, TLS server names, log origins and file names use."""
        return self.code

    @property
    def proto(self) -> str:
        return self.code

    @classmethod
    def from_proto(cls, value: str) -> City:
        # A national answer names every city in scope (hundreds) in each
        # section; a code checked once is not checked again. Only valid codes
        # are kept, so the cache holds at most the ~340 cities there are.
        city = _CHECKED.get(value)
        if city is None:
            city = cls(value)
            _CHECKED[value] = city
        return city

    @classmethod
    def parse(cls, text: str) -> City:
        """A six-digit code, or a city's Chinese name with or without its 市 (合肥, 合肥市)."""
        key = text.strip()
        if key.isascii():
            return cls(key)
        matches = [d.code for d in divisions.cities() if key in (d.name_zh, d.name_zh.removesuffix("市"))]
        if len(matches) != 1:
            raise ValueError(f"{text!r} names {'no' if not matches else 'more than one'} city; give its code")
        return cls(matches[0])

    @classmethod
    def parse_many(cls, text: str | Iterable[str]) -> tuple[City, ...]:
        parts = text.split(",") if isinstance(text, str) else list(text)
        seen: dict[City, None] = {}
        for part in parts:
            if part.strip():
                seen[cls.parse(part)] = None
        return tuple(seen)

    @property
    def name_zh(self) -> str:
        return divisions.lookup(self.code).name_zh

    @property
    def display(self) -> str:
        return f"{self.name_zh} {self.code}"

    @classmethod
    def of_region(cls, region: str) -> City:
        """The city a six-digit registering-region code (USCC characters 3-8) belongs to.

        ValueError if the region belongs to no city (docs/directory.md, "Division codes").
        """
        try:
            return cls(divisions.city_of_region(region).code)
        except divisions.DivisionError as exc:
            raise ValueError(exc.message) from None

    def __str__(self) -> str:
        return self.code


_CODE = operator.attrgetter("code")


def sorted_cities(cities: Iterable[City]) -> tuple[City, ...]:
    """`cities` by code, as `sorted` would give them, compared as plain strings (hundreds at a time
    in a national network: every query's scope, every answer's accounting)."""
    return tuple(sorted(cities, key=_CODE))


_CHECKED: dict[str, City] = {}


class Category(_Named):
    UTILITY = "utility"
    SOCIAL_INSURANCE = "social_insurance"
    HOUSING_FUND = "housing_fund"
    LOGISTICS = "logistics"
    TAX = "tax"
    JUDICIAL = "judicial"
    PENALTY = "penalty"
    LOAN = "loan"
    IP = "ip"

    @property
    def proto(self) -> common_pb2.Category.ValueType:
        return common_pb2.Category.Value(f"CATEGORY_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> Category:
        desc = common_pb2.Category.DESCRIPTOR.values_by_number.get(value)
        name = desc.name if desc is not None else ""
        if not name or value == common_pb2.CATEGORY_UNSPECIFIED:
            raise ValueError(f"unknown category number {value}")
        return cls[name.removeprefix("CATEGORY_")]

    @property
    def oneof_field(self) -> str:
        """Name of the CreditRecord.detail field that holds this category."""
        return self.value

    @classmethod
    def from_oneof_field(cls, field: str) -> Category:
        return cls(field)


class Purpose(_Named):
    LOAN_APPLICATION = "loan_application"
    POST_LOAN_MONITORING = "post_loan_monitoring"
    GUARANTEE = "guarantee"
    SUPPLY_CHAIN_FINANCE = "supply_chain_finance"

    @property
    def proto(self) -> common_pb2.Purpose.ValueType:
        return common_pb2.Purpose.Value(f"PURPOSE_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> Purpose:
        desc = common_pb2.Purpose.DESCRIPTOR.values_by_number.get(value)
        name = desc.name if desc is not None else ""
        if not name or value == common_pb2.PURPOSE_UNSPECIFIED:
            raise ValueError(f"unknown purpose number {value}")
        return cls[name.removeprefix("PURPOSE_")]


E = TypeVar("E", bound=Hashable)
W = TypeVar("W")

# The most cities a consent or a query may name: every network city China
# has (333 prefecture-level divisions and 4 municipalities), with room to spare.
MAX_SCOPE_CITIES = 400


def distinct_from_proto(
    from_proto: Callable[[W], E], values: Sequence[W], limit: int, what: str
) -> tuple[E, ...]:
    """Decode a repeated enum field, refusing more than `limit` values or any value twice.

    The length is checked before any value is looked at: a field of a
    million repeated values costs one comparison, not a million lookups.
    """
    if len(values) > limit:
        raise ValueError(f"{what}: at most {limit} values, got {len(values)}")
    decoded = tuple(from_proto(v) for v in values)
    if len(set(decoded)) != len(decoded):
        raise ValueError(f"{what}: a value is repeated")
    return decoded


ALL_CATEGORIES: tuple[Category, ...] = tuple(Category)
