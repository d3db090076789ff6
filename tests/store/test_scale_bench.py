"""The scale benchmark builds the same store on both databases and measures it."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditnet_devkit.bench.scale import Load, run_scale
from tests.store.conftest import require_postgres


def test_records_are_spread_evenly_over_the_enterprises() -> None:
    spec = Load(enterprises=400, records=2000)
    seen_profiles = 0
    for profiles, recs in spec.batches():
        seen_profiles += len(profiles)
        # Never more than one enterprise's records ahead of its share.
        assert spec.records_done + len(recs) <= 2000 * (seen_profiles / 400) + 60
    assert seen_profiles == spec.profiles_done == 400
    # Whole enterprises only: the target is met to within one enterprise.
    assert 2000 <= spec.records_done < 2060
    assert 0 < spec.with_records < 400 and len(spec.sample) == spec.with_records


@pytest.mark.postgres
def test_both_backends_get_the_same_store_and_flat_memory(tmp_path: Path) -> None:
    said: list[str] = []
    result = run_scale(300, 3000, ["sqlite", "postgresql"], tmp_path, progress=said.append)
    if "postgresql" in result["skipped"]:
        require_postgres(result["skipped"]["postgresql"])
    load = result["load"]
    assert load["records"] >= 3000 and load["enterprises"] == 300
    assert [m["fraction"] for m in load["rss"]] == [0.1, 0.5, 1.0]
    sqlite, postgresql = result["sqlite"], result["postgresql"]
    # The same enterprises, asked the same way, find the same records.
    assert sqlite["reads"]["records_per_query"] == postgresql["reads"]["records_per_query"] > 0
    assert sqlite["reads"]["queries"] == postgresql["reads"]["queries"] == load["enterprises_with_records"]
    for b in (sqlite, postgresql):
        assert b["rows_per_second"] > 0 and len(b["segments"]) == 3
    assert any(line.startswith("100%:") for line in said)


def test_a_store_without_records_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--enterprises and --records must be positive, not 10 and 0"):
        run_scale(10, 0, ["sqlite"], tmp_path)
