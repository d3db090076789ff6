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

import random
from dataclasses import dataclass

from stdnum.cn import uscc as _std

from creditnet.domain import City

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
LENGTH = 18
_ALLOWED = frozenset(ALPHABET)


class InvalidUSCC(ValueError):
    """A code that is not a valid Unified Social Credit Code; the message says why."""


@dataclass(frozen=True, slots=True)
class District:
    """A county-level administrative division of a pilot city."""

    code: str
    name: str
    # Relative share of newly generated enterprises registered here.
    weight: int = 1


# Real division codes. The city-level code (e.g. 340100) appears in real codes
# of enterprises registered with the city's own market regulator.
DISTRICTS: dict[City, tuple[District, ...]] = {
    City.SHANGHAI: (
        District("310000", "上海市", 6),
        District("310101", "黄浦区", 3),
        District("310104", "徐汇区", 3),
        District("310105", "长宁区", 2),
        District("310106", "静安区", 3),
        District("310107", "普陀区", 2),
        District("310109", "虹口区", 2),
        District("310110", "杨浦区", 2),
        District("310112", "闵行区", 5),
        District("310113", "宝山区", 3),
        District("310114", "嘉定区", 5),
        District("310115", "浦东新区", 12),
        District("310116", "金山区", 2),
        District("310117", "松江区", 4),
        District("310118", "青浦区", 3),
        District("310120", "奉贤区", 3),
        District("310151", "崇明区", 2),
    ),
    City.NANJING: (
        District("320100", "南京市", 4),
        District("320102", "玄武区", 2),
        District("320104", "秦淮区", 2),
        District("320105", "建邺区", 3),
        District("320106", "鼓楼区", 3),
        District("320111", "浦口区", 3),
        District("320113", "栖霞区", 3),
        District("320114", "雨花台区", 3),
        District("320115", "江宁区", 6),
        District("320116", "六合区", 2),
        District("320117", "溧水区", 1),
        District("320118", "高淳区", 1),
    ),
    City.HANGZHOU: (
        District("330100", "杭州市", 4),
        District("330102", "上城区", 3),
        District("330105", "拱墅区", 3),
        District("330106", "西湖区", 4),
        District("330108", "滨江区", 5),
        District("330109", "萧山区", 5),
        District("330110", "余杭区", 6),
        District("330111", "富阳区", 2),
        District("330112", "临安区", 1),
        District("330113", "临平区", 2),
        District("330114", "钱塘区", 2),
        District("330122", "桐庐县", 1),
        District("330127", "淳安县", 1),
        District("330182", "建德市", 1),
    ),
    City.HEFEI: (
        District("340100", "合肥市", 5),
        District("340102", "瑶海区", 2),
        District("340103", "庐阳区", 2),
        District("340104", "蜀山区", 5),
        District("340111", "包河区", 4),
        District("340121", "长丰县", 1),
        District("340122", "肥东县", 2),
        District("340123", "肥西县", 2),
        District("340124", "庐江县", 1),
        District("340181", "巢湖市", 1),
    ),
    City.JIAXING: (
        District("330400", "嘉兴市", 3),
        District("330402", "南湖区", 3),
        District("330411", "秀洲区", 3),
        District("330421", "嘉善县", 2),
        District("330424", "海盐县", 1),
        District("330481", "海宁市", 3),
        District("330482", "平湖市", 2),
        District("330483", "桐乡市", 3),
    ),
}

_DISTRICT_BY_CODE = {d.code: d for ds in DISTRICTS.values() for d in ds}
_DISTRICT_WEIGHTS = {city: [d.weight for d in ds] for city, ds in DISTRICTS.items()}


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
    """The pilot city the enterprise is registered in, or None if it is registered elsewhere."""
    return City.from_region_code(region_code(uscc))


def require_pilot_city(uscc: str) -> City:
    """The home city of an enterprise that must be registered in a pilot city."""
    city = home_city(uscc)
    if city is None:
        raise InvalidUSCC(
            f"{validate(uscc)} is registered in region {region_code(uscc)}, which is not in a "
            "pilot city (Shanghai 31, Nanjing 3201, Hangzhou 3301, Hefei 3401, Jiaxing 3304)"
        )
    return city


def district(uscc: str) -> District | None:
    """The pilot-city district a code is registered in, if it is one this module knows."""
    return _DISTRICT_BY_CODE.get(region_code(uscc))


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
    region = rng.choices(DISTRICTS[city], weights=_DISTRICT_WEIGHTS[city])[0].code
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
