"""The consent policy: whether a consent lets a query be answered, and the scope it grants.

Every participant decides what a consent allows here and nowhere else (its
signature and form are `creditnet.consent`): nodes and the aggregator
through `query.authorize` (`permit`), the aggregator to know which cities
to ask (`Grant.scope`), the bank's SDK to know what an answer may hold
(`bound`). What only a database can decide —
how often the consent was used at a node, whether it was revoked there — is
the store's claim, which takes its limit from the Grant (`Grant.max_uses`).

The rules, in the order `permit` checks them, are docs/protocol.md
("Consent policy"); the first one broken is the refusal, so the order is
part of the contract. Pure: no I/O, no clock but the `now` it is given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from creditnet.consent import ConsentTerms
from creditnet.domain import Category, City, Purpose, sorted_cities
from creditnet.errors import FailedPrecondition, PermissionDenied
from creditnet.v2 import query_pb2

__all__ = [
    "Asked",
    "Grant",
    "asked_by",
    "bound",
    "check_parties",
    "check_window",
    "permit",
]


class Asked(Protocol):
    """What a query asks for, as far as the consent policy reads it (`query.QueryTerms` is one)."""

    @property
    def enterprise_uscc(self) -> str: ...
    @property
    def bank_code(self) -> str: ...
    @property
    def purpose(self) -> Purpose: ...
    @property
    def categories(self) -> tuple[Category, ...]: ...
    @property
    def cities(self) -> tuple[City, ...]: ...


@dataclass(frozen=True, slots=True)
class _Asked:
    enterprise_uscc: str
    bank_code: str
    purpose: Purpose
    categories: tuple[Category, ...]
    cities: tuple[City, ...]


def asked_by(msg: query_pb2.CreditQuery) -> Asked:
    """What a parsed `CreditQuery` asks (ValueError on an unknown purpose, category or city)."""
    return _Asked(
        enterprise_uscc=msg.enterprise_uscc,
        bank_code=msg.bank_code,
        purpose=Purpose.from_proto(msg.purpose),
        categories=tuple(Category.from_proto(c) for c in msg.categories),
        cities=tuple(City.from_proto(c) for c in msg.cities),
    )


@dataclass(frozen=True, slots=True)
class Grant:
    """The scope a consent grants one query: all a node may disclose for it, and under which limits."""

    consent_id: str
    enterprise_uscc: str
    bank_code: str
    purpose: Purpose
    # In protocol order.
    categories: tuple[Category, ...]
    # The cities whose nodes may answer, by code; None: every member city of the network.
    cities: tuple[City, ...] | None
    # The period of data, inclusive: records dated outside it are never disclosed.
    data_from: dt.date
    data_to: dt.date
    # The consent's window of use, inclusive.
    valid_from: dt.datetime
    valid_until: dt.datetime
    # Queries each node may answer under the consent; 0: no limit.
    max_uses: int

    def covers(self, city: City) -> bool:
        """Whether `city`'s node may answer."""
        return self.cities is None or city in self.cities

    def scope(self, members: Iterable[City]) -> tuple[City, ...]:
        """The cities to ask, by code, given the network's member cities."""
        return self.cities if self.cities is not None else sorted_cities(set(members))


def check_parties(consent: ConsentTerms, asked: Asked) -> None:
    """Whether the consent is the named enterprise's grant to the asking bank (the first two rules).

    Apart from `permit` because a refusal after these is an access to the
    enterprise's data, logged in its history; one before is not.
    """
    if consent.enterprise_uscc != asked.enterprise_uscc:
        raise PermissionDenied("consent.enterprise_mismatch", "the consent is for a different enterprise")
    if consent.bank_code != asked.bank_code:
        raise PermissionDenied("consent.bank_mismatch", "the consent was not granted to this bank")


def check_window(consent: ConsentTerms, now: dt.datetime) -> None:
    """Whether `now` lies in the consent's window of use (inclusive at both ends, no clock skew)."""
    if now < consent.not_before:
        raise FailedPrecondition("consent.not_yet_valid", "the consent is not valid yet")
    if now > consent.not_after:
        raise FailedPrecondition(
            "consent.expired", "the consent has expired; ask the enterprise for a new one"
        )


def permit(consent: ConsentTerms, asked: Asked, *, city: City | None, now: dt.datetime) -> Grant:
    """Every rule of the consent policy, in order; the scope granted, or the first rule broken.

    `city` is the answering node's (None: the aggregator, which answers for
    no city). The consent's signature and form are checked before (`consent.verify_consent`).
    """
    check_parties(consent, asked)
    if consent.purpose is not asked.purpose:
        raise PermissionDenied("consent.purpose_mismatch", "the consent does not cover this purpose")
    check_window(consent, now)
    outside = [c.value for c in asked.categories if c not in consent.categories]
    if outside:
        raise PermissionDenied(
            "consent.category_not_covered", f"categories not in the consent: {', '.join(outside)}"
        )
    outside = [c.value for c in asked.cities if not _covered(consent, c)]
    if outside:
        raise PermissionDenied("consent.city_not_covered", f"cities not in the consent: {', '.join(outside)}")
    granted = bound(consent, asked)
    if city is not None and not granted.covers(city):
        raise PermissionDenied("query.city_not_in_scope", f"the query does not ask the {city.value} node")
    return granted


def bound(consent: ConsentTerms, asked: Asked) -> Grant:
    """The most any answer to `asked` may hold under `consent`; refuses nothing.

    For a query `permit` accepts this is its Grant. For one it refuses, the
    query only narrows the consent, never widens it: the categories and
    cities asked that the consent holds (nothing asked: the consent's). The
    bank bounds every answer by this, whether or not the nodes refused.
    """
    named = set(asked.categories)
    categories = tuple(c for c in Category if c in consent.categories and (not named or c in named))
    cities: tuple[City, ...] | None
    if asked.cities:
        cities = tuple(sorted(c for c in set(asked.cities) if _covered(consent, c)))
    else:
        # No cities named means every member city: of the consent, the
        # consent's list; of the query, the consent's scope.
        cities = tuple(sorted(consent.cities)) if consent.cities else None
    return Grant(
        consent_id=consent.consent_id,
        enterprise_uscc=consent.enterprise_uscc,
        bank_code=consent.bank_code,
        purpose=consent.purpose,
        categories=categories,
        cities=cities,
        data_from=consent.data_from,
        data_to=consent.data_to,
        valid_from=consent.not_before,
        valid_until=consent.not_after,
        max_uses=consent.max_uses,
    )


def _covered(consent: ConsentTerms, city: City) -> bool:
    # A consent naming no city covers every member city.
    return not consent.cities or city in consent.cities
