"""National networks: choosing the cities (`--cities all|N|codes`) and their skewed synthetic data."""

from __future__ import annotations

import collections

import pytest

from creditnet import divisions, pilot
from creditnet.domain import City
from creditnet.network import default_nodes_per_process, select_cities
from creditnet_devkit import synthetic


def test_cities_all_is_every_prefecture_level_city_and_municipality_by_code() -> None:
    every = select_cities("all")
    assert len(every) == len(divisions.cities()) > 330
    assert list(every) == sorted(every) and City("310000") in every and City("320500") in every


def test_cities_n_is_the_first_n_by_code_and_codes_and_the_default_still_work() -> None:
    assert select_cities("50") == select_cities("all")[:50]
    assert select_cities(" ALL ") == select_cities("all")
    assert select_cities("320500,310000") == (City("320500"), City("310000"))
    assert select_cities("") == pilot.CITIES


@pytest.mark.parametrize("bad", ["0", "400", "-3", "32050", "999999", "340102"])
def test_a_bad_cities_argument_is_refused_clearly(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        select_cities(bad)
    assert str(err.value)


def test_small_networks_run_a_process_per_node_and_large_ones_pack_them() -> None:
    assert default_nodes_per_process(5) == 1
    per = default_nodes_per_process(333)
    assert per > 1 and -(-333 // per) <= 16


def test_big_cities_register_more_enterprises_in_a_national_network_and_the_pilot_is_unchanged() -> None:
    national = select_cities("all")
    assert synthetic.enterprises_in(City("310000"), 10, national) == 40  # a municipality
    assert synthetic.enterprises_in(City("320100"), 10, national) == 20  # a provincial capital
    assert synthetic.enterprises_in(City("320500"), 10, national) == 20  # sub-provincial Suzhou
    assert synthetic.enterprises_in(City("320600"), 10, national) == 10
    assert all(synthetic.enterprises_in(c, 10, pilot.CITIES) == 10 for c in pilot.CITIES)


def test_enterprises_elsewhere_favour_big_cities_and_their_own_province() -> None:
    national = select_cities("all")
    home = City("320600")  # Nantong, Jiangsu
    others: collections.Counter[City] = collections.Counter()
    active = 0
    for i in range(3000):
        plan = synthetic.plan_enterprise(1, home, i, network=national)
        assert 0 <= len(plan.presences) <= 3 and home not in {p.city for p in plan.presences}
        active += bool(plan.presences)
        others.update(p.city for p in plan.presences)
    assert 0.2 < active / 3000 < 0.36
    in_province = sum(n for c, n in others.items() if c.code[:2] == "32")
    # Jiangsu's 12 other cities are 3.6% of the rest of the network; they draw over twice that.
    assert in_province / sum(others.values()) > 2 * 12 / (len(national) - 1)
    assert others[City("310000")] > others[City("620200")]


def test_cities_without_districts_get_records() -> None:
    dongguan = City("441900")
    items = list(synthetic.generate(3, 2, (dongguan, City("440100"))))
    assert any(getattr(i, "city", None) is not None and City.from_proto(i.city) == dongguan for i in items)
