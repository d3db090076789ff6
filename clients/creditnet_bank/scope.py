"""Every city of the effective scope accounted for, and nothing else taken.

The aggregator decides which sections reach the bank; it could leave a city
out, add one nobody asked, or send a city twice hoping the bank keeps the
copy it prefers. So the bank lays out the report from the scope it computes
itself (docs/protocol.md, "What the bank accounts for"), not from the
sections it received:

- a city of the scope without a section is reported `MISSING`;
- a city of the scope with more than one section is `INVALID`, none of them used;
- a section for a city outside the scope (or, with a directory, for a city
  that is not a member) is `INVALID` and marked out of scope; it is never opened;
- a section naming no valid city refuses the whole answer (`AnswerInvalid`):
  there is no city to report it under.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence

from creditnet.domain import City
from creditnet.v2 import aggregator_pb2
from creditnet_bank.verify import AnswerInvalid, Section, SectionStatus

__all__ = [
    "NO_SECTION",
    "OUTSIDE_SCOPE",
    "account",
]

NO_SECTION = "the aggregator returned no section for this city"
OUTSIDE_SCOPE = "the aggregator returned a section for a city outside the query's scope; it was not opened"


def account(
    raw_sections: Sequence[aggregator_pb2.CitySection],
    scope: Sequence[City],
    check: Callable[[aggregator_pb2.CitySection], Section],
    *,
    members: Collection[City] | None = None,
    directory_version: int = 0,
) -> list[Section]:
    """One section per city of `scope` (in its order), then the out-of-scope ones, INVALID.

    `check` verifies one section (`verify_section`); it is called only for a
    city of the scope that has exactly one section. An empty `scope` means
    the bank cannot know it (no directory, and neither the query nor the
    consent names a city): every city the aggregator answers for is taken.
    """
    by_city: dict[City, list[aggregator_pb2.CitySection]] = defaultdict(list)
    for raw in raw_sections:
        try:
            by_city[City.from_proto(raw.city)].append(raw)
        except ValueError:
            raise AnswerInvalid("the aggregator returned a section for an unknown city") from None
    cities = list(scope) or sorted(by_city)
    sections = [_one(c, by_city.get(c, []), check, members, directory_version) for c in cities]
    outside = sorted(set(by_city) - set(cities))
    return sections + [
        Section(city=c, status=SectionStatus.INVALID, reason=OUTSIDE_SCOPE, in_scope=False) for c in outside
    ]


def _one(
    city: City,
    raws: list[aggregator_pb2.CitySection],
    check: Callable[[aggregator_pb2.CitySection], Section],
    members: Collection[City] | None,
    version: int,
) -> Section:
    if members is not None and city not in members:
        # The bank named a city its directory does not list: nobody can answer for it.
        reason = f"not a member of the network directory (version {version})"
        if raws:
            reason += "; the aggregator's section for it was not opened"
        return Section(city=city, status=SectionStatus.UNAVAILABLE, reason=reason)
    if not raws:
        return Section(city=city, status=SectionStatus.MISSING, reason=NO_SECTION)
    if len(raws) > 1:
        return Section(
            city=city,
            status=SectionStatus.INVALID,
            reason=f"the aggregator returned {len(raws)} sections for this city; none is used",
        )
    return check(raws[0])
