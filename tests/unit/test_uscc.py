"""Unified Social Credit Codes: validation, regions and the generator."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import uscc as stdnum_uscc

from creditnet import pilot, uscc
from creditnet.domain import City

# Published codes of real enterprises (each on its business licence).
SPDB_SHANGHAI = "9131000013221158XC"
ALIBABA_HANGZHOU = "91330100716105852F"
IFLYTEK_ANHUI = "91340000711771143J"  # registered at province level, 340000
BEIJING = "91110000600037341L"


@pytest.mark.parametrize(
    ("code", "city"),
    [(SPDB_SHANGHAI, pilot.SHANGHAI), (ALIBABA_HANGZHOU, pilot.HANGZHOU)],
)
def test_real_codes_are_valid_and_located(code: str, city: City) -> None:
    assert uscc.validate(code) == code
    assert uscc.is_valid(code)
    assert uscc.home_city(code) == city
    assert uscc.require_home_city(code) == city


def test_region_code_is_positions_3_to_8() -> None:
    assert uscc.region_code(ALIBABA_HANGZHOU) == "330100"
    assert uscc.region_code(SPDB_SHANGHAI) == "310000"


def test_normalises_case_spaces_and_dashes() -> None:
    assert uscc.validate("  9131 0000 1322-1158xc ") == SPDB_SHANGHAI
    assert uscc.region_code("91330100716105852f") == "330100"


def test_wrong_check_character_names_the_expected_one() -> None:
    with pytest.raises(uscc.InvalidUSCC, match=r"check character \(position 18\).*should be 'C'"):
        uscc.validate(SPDB_SHANGHAI[:-1] + "D")
    assert not uscc.is_valid(SPDB_SHANGHAI[:-1] + "D")


@pytest.mark.parametrize("code", [SPDB_SHANGHAI[:-1], SPDB_SHANGHAI + "1", "", "12345"])
def test_wrong_length(code: str) -> None:
    with pytest.raises(uscc.InvalidUSCC, match=f"18 characters, got {len(code)}"):
        uscc.validate(code)


@pytest.mark.parametrize(("char", "pos"), [("I", 9), ("O", 10), ("S", 12), ("V", 17), ("Z", 1), ("中", 3)])
def test_characters_outside_the_alphabet(char: str, pos: int) -> None:
    code = SPDB_SHANGHAI[: pos - 1] + char + SPDB_SHANGHAI[pos:]
    with pytest.raises(uscc.InvalidUSCC, match=f"at position {pos}.*not allowed"):
        uscc.validate(code)


def test_region_code_must_be_digits() -> None:
    base = "91A10000600037341"
    code = base + stdnum_uscc.calc_check_digit(base)
    with pytest.raises(uscc.InvalidUSCC, match=r"positions 3-8.*registering-region code"):
        uscc.validate(code)


def test_letters_are_allowed_in_the_first_two_positions() -> None:
    # N2: a rural collective economic organisation, registered by agriculture.
    base = "N2340104MA2N0U3E6"
    code = base + stdnum_uscc.calc_check_digit(base)
    assert uscc.validate(code) == code
    assert uscc.home_city(code) == pilot.HEFEI


def test_not_text() -> None:
    with pytest.raises(uscc.InvalidUSCC, match="must be text"):
        uscc.validate(913100001322115800)  # type: ignore[arg-type]


def test_a_municipality_is_a_city_outside_the_pilot_too() -> None:
    assert uscc.home_city(BEIJING) == City("110000")


def test_a_province_level_registration_is_in_no_city() -> None:
    assert uscc.is_valid(IFLYTEK_ANHUI)
    assert uscc.home_city(IFLYTEK_ANHUI) is None
    with pytest.raises(uscc.InvalidUSCC, match="region 340000, which is in no prefecture-level city"):
        uscc.require_home_city(IFLYTEK_ANHUI)


def test_a_county_level_city_belongs_to_its_prefecture() -> None:
    # 320582 Zhangjiagang is a county-level city of 320500 Suzhou.
    base = "91320582MA1MXXXXX"[:8] + "MA1N0U3E6"[:8]
    base = base + uscc.org_code_check(base[8:16])
    code = base + stdnum_uscc.calc_check_digit(base)
    assert uscc.home_city(code) == City("320500")


def test_invalid_code_is_refused_before_the_region_is_read() -> None:
    with pytest.raises(uscc.InvalidUSCC, match="check character"):
        uscc.home_city(ALIBABA_HANGZHOU[:-1] + "0")


def test_organisation_code_check_matches_real_codes() -> None:
    # Positions 9-17 of codes converted from pre-2015 organisation codes end
    # in their GB 11714 check character.
    for code in (SPDB_SHANGHAI, ALIBABA_HANGZHOU, IFLYTEK_ANHUI, BEIJING):
        assert uscc.org_code_check(code[8:16]) == code[16]
    with pytest.raises(ValueError, match="8 USCC characters"):
        uscc.org_code_check("1234567")


@pytest.mark.parametrize("city", [*pilot.CITIES, City("320500"), City("110000")])
def test_a_citys_regions_come_from_the_division_data(city: City) -> None:
    regions = uscc.districts(city)
    assert regions[0].code == city.code and len(regions) > 1
    for d in regions:
        assert City.of_region(d.code) == city, d
        assert d.weight > 0
    assert next(d.name for d in uscc.districts(pilot.SHANGHAI) if d.code == "310115") == "浦东新区"
    assert uscc.district(ALIBABA_HANGZHOU) == uscc.District("330100", "杭州市", 4)
    assert uscc.district(IFLYTEK_ANHUI) is None


@pytest.mark.parametrize("city", pilot.CITIES)
@pytest.mark.parametrize("legacy", [False, True])
def test_make_uscc_gives_valid_codes_of_the_city(city: City, legacy: bool) -> None:
    rng = random.Random(f"{city}-{legacy}")
    codes = [uscc.make_uscc(rng, city, legacy=legacy) for _ in range(300)]
    codes_by_district = {d.code for d in uscc.districts(city)}
    for code in codes:
        assert uscc.validate(code) == code
        assert stdnum_uscc.is_valid(code)
        assert code.startswith("91")
        assert uscc.require_home_city(code) == city
        assert code[2:8] in codes_by_district
        assert uscc.org_code_check(code[8:16]) == code[16]
        if legacy:
            assert code[8:16].isdigit()
        else:
            assert code[8:10] == "MA"
    # Weighted, but every region of a city shows up in 300 draws.
    assert len({c[2:8] for c in codes}) > len(codes_by_district) // 2


def test_make_uscc_is_deterministic_and_honours_the_entity_type() -> None:
    a = [uscc.make_uscc(random.Random(5), pilot.JIAXING, entity="93") for _ in range(3)]
    b = [uscc.make_uscc(random.Random(5), pilot.JIAXING, entity="93") for _ in range(3)]
    assert a == b
    assert all(c.startswith("93") and uscc.is_valid(c) for c in a)
    with pytest.raises(ValueError, match="two USCC characters"):
        uscc.make_uscc(random.Random(5), pilot.JIAXING, entity="9")


@pytest.mark.parametrize("legacy", [False, True])
def test_serials_never_collide(legacy: bool) -> None:
    rng = random.Random(1)
    # The organisation code alone is distinct for distinct serials, whatever
    # district the random draw picks.
    bodies = {uscc.make_uscc(rng, pilot.HEFEI, serial=i, legacy=legacy)[8:17] for i in range(20_000)}
    assert len(bodies) == 20_000
    with pytest.raises(ValueError, match="serial must be in"):
        uscc.make_uscc(rng, pilot.HEFEI, serial=-1)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=0, max_value=17),
    st.sampled_from(uscc.ALPHABET),
)
def test_any_single_substitution_is_detected(seed: int, pos: int, char: str) -> None:
    code = uscc.make_uscc(random.Random(seed), pilot.NANJING)
    if code[pos] == char:
        return
    changed = code[:pos] + char + code[pos + 1 :]
    assert not uscc.is_valid(changed)
