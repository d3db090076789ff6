"""Division codes from the data package: lookups, the city of a region code, refusals."""

from __future__ import annotations

import pytest

from creditnet import divisions
from creditnet.divisions import DivisionError, Level
from creditnet.domain import City, sorted_cities

PILOTS = {"310000": "上海市", "320100": "南京市", "330100": "杭州市", "340100": "合肥市", "330400": "嘉兴市"}


def test_the_pilot_cities_and_suzhou_are_network_cities_with_both_names() -> None:
    for code, name in {**PILOTS, "320500": "苏州市"}.items():
        div = divisions.city(code)
        assert (div.code, div.name_zh) == (code, name)
    assert divisions.lookup("320500").name_en == "Suzhou"
    assert divisions.lookup("310000").name_en == "Shanghai"
    assert divisions.lookup("320500").province == "320000"
    assert divisions.lookup("310000").is_municipality


def test_there_are_333_prefecture_level_divisions_and_four_municipalities() -> None:
    prefectures = divisions.prefectures()
    assert len(prefectures) == 333
    assert all(d.level is Level.PREFECTURE and d.code.endswith("00") for d in prefectures)
    municipalities = [d.code for d in divisions.cities() if d.is_municipality]
    assert municipalities == ["110000", "120000", "310000", "500000"]
    assert len(divisions.cities()) == 337


def test_english_names_use_place_name_readings_and_apostrophes() -> None:
    # The default character readings would give Zhangzhi, Tahe and Zhaoyang.
    assert divisions.lookup("140400").name_en == "Changzhi"
    assert divisions.lookup("411100").name_en == "Luohe"
    assert divisions.lookup("211300").name_en == "Chaoyang"
    assert divisions.lookup("610100").name_en == "Xi'an"
    assert divisions.lookup("152200").name_en == "Xing'an Meng"
    assert divisions.lookup("542500").name_en == "Ali Diqu"


@pytest.mark.parametrize(
    ("region", "city"),
    [
        ("320582", "320500"),  # Zhangjiagang, a county-level city of Suzhou
        ("320508", "320500"),  # Gusu District
        ("320500", "320500"),
        ("310115", "310000"),  # Pudong New Area, a district of a municipality
        ("310000", "310000"),
        ("500229", "500000"),  # Chengkou County, Chongqing
        ("340102", "340100"),
    ],
)
def test_a_region_code_belongs_to_its_prefecture_or_municipality(region: str, city: str) -> None:
    assert divisions.city_of_region(region).code == city


@pytest.mark.parametrize(
    ("region", "rule"),
    [
        ("320000", "division.no_city"),  # a province
        ("429004", "division.no_city"),  # Xiantao, administered directly by Hubei
        ("810000", "division.no_city"),  # Hong Kong
        ("320599", "division.unknown"),
        ("000000", "division.unknown"),
        ("32058", "division.malformed"),
        ("32058x", "division.malformed"),
        ("３２０５８２", "division.malformed"),  # full-width digits
    ],
)
def test_a_region_code_outside_any_city_is_refused_with_its_rule(region: str, rule: str) -> None:
    with pytest.raises(DivisionError) as err:
        divisions.city_of_region(region)
    assert err.value.rule == rule


def test_a_county_is_not_a_network_city() -> None:
    with pytest.raises(DivisionError) as err:
        divisions.city("320582")
    assert err.value.rule == "division.not_city"
    with pytest.raises(DivisionError) as err:
        divisions.city("320000")
    assert err.value.rule == "division.not_city"


def test_every_county_of_a_prefecture_shares_its_first_four_digits() -> None:
    for div in divisions.iter_all():
        if div.level is Level.COUNTY and div.prefecture is not None:
            assert div.code[:4] == div.prefecture[:4]
        assert div.code[:2] == div.province[:2]


def test_cities_hash_compare_and_sort_by_their_code() -> None:
    hefei, shanghai, nanjing = City("340100"), City("310000"), City("320100")
    assert City.from_proto("340100") == hefei and hash(City.from_proto("340100")) == hash(hefei)
    assert {hefei: 1}[City("340100")] == 1
    assert shanghai < nanjing < hefei and hefei > nanjing >= nanjing and shanghai <= shanghai
    assert sorted([hefei, shanghai, nanjing]) == [shanghai, nanjing, hefei]
    assert sorted_cities({hefei, shanghai, nanjing}) == (shanghai, nanjing, hefei)
    with pytest.raises(TypeError):
        _ = hefei < "340100"  # type: ignore[operator]
    assert hefei != "340100"
