"""Unified Social Credit Codes (统一社会信用代码, GB 32100-2015).

18 characters: registering authority, entity type, the six-digit
registering-region code (positions 3-8), the nine-character organisation code
and a check character. The check character is computed by python-stdnum.
"""

from __future__ import annotations

import random

from stdnum.cn import uscc as _std
from stdnum.exceptions import InvalidChecksum, InvalidFormat, InvalidLength, ValidationError

from creditnet.domain import City

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"

# Real district codes of each pilot city, used when generating codes.
DISTRICTS: dict[City, tuple[str, ...]] = {
    City.SHANGHAI: (
        "310101",
        "310104",
        "310105",
        "310106",
        "310107",
        "310109",
        "310110",
        "310112",
        "310113",
        "310115",
    ),
    City.NANJING: ("320102", "320104", "320105", "320106", "320111", "320113", "320114", "320115", "320116"),
    City.HANGZHOU: ("330102", "330105", "330106", "330108", "330109", "330110", "330111", "330112"),
    City.HEFEI: ("340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124"),
    City.JIAXING: ("330402", "330411", "330421", "330424", "330481", "330482", "330483"),
}


class InvalidUSCC(ValueError):
    """A code that is not a valid Unified Social Credit Code; the message says why."""


def validate(text: str) -> str:
    """Return the canonical (compact, upper-case) code, or raise InvalidUSCC."""
    if not isinstance(text, str):
        raise InvalidUSCC("a USCC must be text")
    code = _std.compact(text).upper()
    try:
        return str(_std.validate(code))
    except InvalidLength:
        raise InvalidUSCC(f"a USCC has 18 characters, got {len(code)}") from None
    except InvalidChecksum:
        raise InvalidUSCC("the USCC's check character (position 18) is wrong") from None
    except InvalidFormat:
        raise InvalidUSCC(
            "a USCC uses digits and the letters A-Y except I, O, S, V, Z; positions 3-8 are digits"
        ) from None
    except ValidationError as exc:
        raise InvalidUSCC(f"not a valid USCC: {exc}") from None


def is_valid(text: str) -> bool:
    try:
        validate(text)
    except InvalidUSCC:
        return False
    return True


def region_code(uscc: str) -> str:
    """The registering-region code (positions 3-8)."""
    return validate(uscc)[2:8]


def home_city(uscc: str) -> City | None:
    """The pilot city the enterprise is registered in, or None if it is elsewhere."""
    return City.from_region_code(region_code(uscc))


def require_pilot_city(uscc: str) -> City:
    city = home_city(uscc)
    if city is None:
        raise InvalidUSCC(f"the USCC's region code {region_code(uscc)} is not in a pilot city")
    return city


def make_uscc(rng: random.Random, city: City, *, entity: str = "91") -> str:
    """A valid code registered in a district of `city` (for synthetic data and tests)."""
    base = entity + rng.choice(DISTRICTS[city]) + "".join(rng.choice(ALPHABET) for _ in range(9))
    return base + str(_std.calc_check_digit(base))
