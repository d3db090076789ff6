"""Unified Social Credit Codes (统一社会信用代码, GB 32100-2015).

An 18-character code: position 1 the registering authority (9 = market
regulation), position 2 the entity type (1 = enterprise), positions 3-8 the
registering-region code (an administrative division code), positions 9-17 the
organisation code and position 18 a check character. Every character comes
from the 31-character alphabet of digits and upper-case letters without I, O,
S, V and Z. The check character is computed by python-stdnum.

python-stdnum's own ``validate`` insists on digits in positions 1-8, but the
standard lets positions 1-2 be letters (``N2`` rural collectives, ``Y1``
other authorities), so the format is checked here and only the check
character is delegated.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from stdnum.cn import uscc as _std

from creditnet import divisions
from creditnet.domain import City
from creditnet.errors import Error

__all__ = [
    "ALPHABET",
    "District",
    "InvalidUSCC",
    "canonical",
    "district",
    "districts",
    "home_city",
    "is_valid",
    "make_uscc",
    "org_code_check",
    "region_code",
    "require_home_city",
    "validate",
]

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
LENGTH = 18
_ALLOWED = frozenset(ALPHABET)


class InvalidUSCC(Error, ValueError):
    """A code that is not a valid Unified Social Credit Code; the message says why."""


@dataclass(frozen=True, slots=True)
class District:
    """A registering region of a city: the city itself or one of its county-level divisions."""

    code: str
    name: str
    # Relative share of newly generated enterprises registered here.
    weight: int = 1


# How many synthetic enterprises each pilot region gets, relative to the
# others of its city (the city-level code itself appears in real codes of
# enterprises registered with the city's own market regulator). A city or
# region not listed here gets weight 1: its regions come from the divisions
# data, so synthetic codes exist for every city.
_PILOT_WEIGHTS: dict[str, int] = {
    "310000": 6,
    "310101": 3,
    "310104": 3,
    "310105": 2,
    "310106": 3,
    "310107": 2,
    "310109": 2,
    "310110": 2,
    "310112": 5,
    "310113": 3,
    "310114": 5,
    "310115": 12,
    "310116": 2,
    "310117": 4,
    "310118": 3,
    "310120": 3,
    "310151": 2,
    "320100": 4,
    "320102": 2,
    "320104": 2,
    "320105": 3,
    "320106": 3,
    "320111": 3,
    "320113": 3,
    "320114": 3,
    "320115": 6,
    "320116": 2,
    "320117": 1,
    "320118": 1,
    "330100": 4,
    "330102": 3,
    "330105": 3,
    "330106": 4,
    "330108": 5,
    "330109": 5,
    "330110": 6,
    "330111": 2,
    "330112": 1,
    "330113": 2,
    "330114": 2,
    "330122": 1,
    "330127": 1,
    "330182": 1,
    "340100": 5,
    "340102": 2,
    "340103": 2,
    "340104": 5,
    "340111": 4,
    "340121": 1,
    "340122": 2,
    "340123": 2,
    "340124": 1,
    "340181": 1,
    "330400": 3,
    "330402": 3,
    "330411": 3,
    "330421": 2,
    "330424": 1,
    "330481": 3,
    "330482": 2,
    "330483": 3,
}


@functools.cache
def districts(city: City) -> tuple[District, ...]:
    """The registering regions of `city`: its own code and its county-level divisions, by code."""
    codes = [city.code, *(d.code for d in divisions.within(city.code))]
    return tuple(District(c, divisions.lookup(c).name_zh, _PILOT_WEIGHTS.get(c, 1)) for c in sorted(codes))


def validate(text: str) -> str:
    """Return the canonical code (no spaces or dashes, upper case), or raise InvalidUSCC."""
    if not isinstance(text, str):
        raise InvalidUSCC(f"a USCC must be text, not {type(text).__name__}")
    code = _std.compact(text)
    if len(code) != LENGTH:
        raise InvalidUSCC(f"a USCC has {LENGTH} characters, got {len(code)} in {text!r}")
    for pos, char in enumerate(code, start=1):
        if char not in _ALLOWED:
            raise InvalidUSCC(
                f"character {char!r} at position {pos} of {code} is not allowed; a USCC uses "
                "digits and the upper-case letters A-Y except I, O, S, V and Z"
            )
    if not code[2:8].isdigit():
        raise InvalidUSCC(
            f"positions 3-8 of {code} ({code[2:8]}) must be the six-digit registering-region code"
        )
    expected = _std.calc_check_digit(code[:17])
    if code[17] != expected:
        raise InvalidUSCC(
            f"the check character (position 18) of {code} is wrong: it should be {expected!r}, "
            "so the code has a typing error"
        )
    return code


def canonical(text: str) -> str:
    """Return `text` if it is a valid code written exactly in canonical form, or raise InvalidUSCC.

    Codes travel in canonical form (18 characters of the alphabet, upper case,
    nothing else) in every signed object and request: a node that normalised
    them would answer one enterprise under several spellings. People may type
    codes loosely; :func:`validate` turns what they type into this form.
    """
    code = validate(text)
    if code != text:
        raise InvalidUSCC(
            f"a USCC travels in canonical form (18 upper-case characters, no spaces or dashes): {code}"
        )
    return code


def is_valid(text: str) -> bool:
    try:
        validate(text)
    except InvalidUSCC:
        return False
    return True


def region_code(uscc: str) -> str:
    """The registering-region code (positions 3-8) of a valid code."""
    return validate(uscc)[2:8]


def home_city(uscc: str) -> City | None:
    """The city the enterprise is registered in (docs/directory.md, "Division codes"), or None.

    None when its registering region belongs to no city: a province-level
    registration, a county-level division a province administers directly, or
    a code not in the current division list. Whether the city is a member of
    the network is the directory's business.
    """
    region = region_code(uscc)
    try:
        return City.of_region(region)
    except ValueError:
        return None


def require_home_city(uscc: str) -> City:
    """The home city of an enterprise that must be registered in a city."""
    city = home_city(uscc)
    if city is None:
        raise InvalidUSCC(
            f"{validate(uscc)} is registered in region {region_code(uscc)}, which is in no "
            "prefecture-level city or municipality"
        )
    return city


def district(uscc: str) -> District | None:
    """The registering region of a code, if it is in a city."""
    city = home_city(uscc)
    if city is None:
        return None
    region = region_code(uscc)
    return next((d for d in districts(city) if d.code == region), None)


def org_code_check(body: str) -> str:
    """The GB 11714 check character of an eight-character organisation-code body."""
    if len(body) != 8 or any(c not in _ALLOWED for c in body):
        raise ValueError(f"an organisation-code body is 8 USCC characters, got {body!r}")
    weights = (3, 7, 9, 10, 5, 8, 4, 2)
    # GB 11714 values letters A=10 ... Z=35, skipping nothing.
    total = sum(int(c, 36) * w for c, w in zip(body, weights, strict=True))
    check = 11 - total % 11
    return "X" if check == 10 else "0" if check == 11 else str(check)


# Multipliers coprime to the ranges below make serial -> body a bijection,
# so distinct serials never collide and neighbouring serials look unrelated.
_LEGACY_RANGE = 10**8
_MODERN_RANGE = len(ALPHABET) ** 6
_LEGACY_MUL = 48_271_207
_MODERN_MUL = 387_420_489
# Offsets keep serial 0 from becoming an implausible 00000001.
_LEGACY_OFFSET = 31_415_926
_MODERN_OFFSET = 271_828_182


def make_uscc(
    rng: random.Random,
    city: City,
    *,
    entity: str = "91",
    serial: int | None = None,
    legacy: bool = False,
) -> str:
    """A valid code registered in a district of `city` (for synthetic data and tests).

    `entity` is positions 1-2 (``91`` a company). The organisation code is in
    the post-2015 style (``MA`` + six characters) or, with `legacy`, a
    pre-2015 eight-digit organisation code; both carry their GB 11714 check
    character. With `serial` the body is a bijection of the serial, so codes
    of one city and style with distinct serials are distinct.
    """
    if len(entity) != 2 or any(c not in _ALLOWED for c in entity):
        raise ValueError(f"entity must be two USCC characters such as '91', got {entity!r}")
    regions = districts(city)
    region = rng.choices(regions, weights=[d.weight for d in regions])[0].code
    if legacy:
        n = (
            rng.randrange(_LEGACY_RANGE)
            if serial is None
            else _scramble(serial, _LEGACY_MUL, _LEGACY_OFFSET, _LEGACY_RANGE)
        )
        body = f"{n:08d}"
    else:
        n = (
            rng.randrange(_MODERN_RANGE)
            if serial is None
            else _scramble(serial, _MODERN_MUL, _MODERN_OFFSET, _MODERN_RANGE)
        )
        body = "MA" + _base31(n, 6)
    base = entity + region + body + org_code_check(body)
    return base + str(_std.calc_check_digit(base))


def _scramble(serial: int, multiplier: int, offset: int, modulus: int) -> int:
    if not 0 <= serial < modulus:
        raise ValueError(f"serial must be in [0, {modulus}), got {serial}")
    return (serial * multiplier + offset) % modulus


def _base31(n: int, width: int) -> str:
    chars = []
    for _ in range(width):
        n, r = divmod(n, len(ALPHABET))
        chars.append(ALPHABET[r])
    return "".join(reversed(chars))
