"""The directory benchmark runs and reports sizes, times and ratios (at toy sizes here)."""

from __future__ import annotations

from pathlib import Path

from creditnet_devkit.bench.directory import bench_directory, main


def test_the_directory_benchmark_reports_size_time_and_ratios_per_city_count() -> None:
    result = bench_directory([2, 3], repeat=1)
    assert result["ecdsa_verify_us"] > 0
    assert [r["cities"] for r in result["runs"]] == [2, 3]
    small, large = result["runs"]
    assert large["payload_bytes"] > small["payload_bytes"]
    assert small["verify_ratio_vs_5"] == 1.0
    assert all(r["verify_ratio_vs_ecdsa"] > 1 for r in result["runs"])


def test_the_directory_benchmark_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench-directory.json"
    assert main(["--sizes", "1", "--repeat", "1", "--out", str(out)]) == 0
    assert '"runs"' in out.read_text()


def test_the_revocation_benchmark_reports_time_to_refusal_in_refresh_intervals() -> None:
    import datetime as dt

    from creditnet_devkit.bench.revocation import bench_revocation

    result = bench_revocation(runs=1, refresh=dt.timedelta(seconds=1))
    assert result["refresh_interval_s"] == 1.0
    for case in ("published", "missed", "restarted"):
        assert result[case]["median_s"] > 0
        assert result[case]["median_intervals"] == result[case]["median_s"] / 1.0
