"""The network's vocabulary: cities, credit categories and purposes.

These enums are the one place that maps between the names people type
(``hefei``, ``social_insurance``, ``loan_application``), the protobuf enum
numbers, and facts such as a city's registering-region codes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Self, TypeVar

from creditnet.v1 import common_pb2


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


class City(_Named):
    SHANGHAI = "shanghai"
    NANJING = "nanjing"
    HANGZHOU = "hangzhou"
    HEFEI = "hefei"
    JIAXING = "jiaxing"

    @property
    def proto(self) -> common_pb2.City.ValueType:
        return common_pb2.City.Value(f"CITY_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> City:
        desc = common_pb2.City.DESCRIPTOR.values_by_number.get(value)
        name = desc.name if desc is not None else ""
        if not name or value == common_pb2.CITY_UNSPECIFIED:
            raise ValueError(f"unknown city number {value}")
        return cls[name.removeprefix("CITY_")]

    @property
    def display(self) -> str:
        return _CITY_DISPLAY[self]

    @property
    def region_prefix(self) -> str:
        """Leading digits of the registering-region code (USCC positions 3-8)."""
        return _CITY_REGION[self]

    @classmethod
    def from_region_code(cls, region: str) -> City | None:
        """The pilot city a six-digit administrative division code belongs to, if any."""
        # Longest prefix first: Shanghai is the whole province-level 31, the
        # others are prefecture-level cities inside 32, 33 and 34.
        for city in sorted(cls, key=lambda c: -len(c.region_prefix)):
            if region.startswith(city.region_prefix):
                return city
        return None


_CITY_DISPLAY = {
    City.SHANGHAI: "Shanghai 上海",
    City.NANJING: "Nanjing 南京",
    City.HANGZHOU: "Hangzhou 杭州",
    City.HEFEI: "Hefei 合肥",
    City.JIAXING: "Jiaxing 嘉兴",
}

_CITY_REGION = {
    City.SHANGHAI: "31",
    City.NANJING: "3201",
    City.HANGZHOU: "3301",
    City.HEFEI: "3401",
    City.JIAXING: "3304",
}


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


def distinct_from_proto(
    from_proto: Callable[[int], E], values: Sequence[int], limit: int, what: str
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


ALL_CITIES: tuple[City, ...] = tuple(City)
ALL_CATEGORIES: tuple[Category, ...] = tuple(Category)
