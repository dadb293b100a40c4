"""The trail's commit probe: timed after the WAL wraps, beside the disk's own flush, and read back."""

from __future__ import annotations

from pathlib import Path

from bench import harness, report


def test_the_probe_times_commits_and_the_bare_flush_and_leaves_nothing(tmp_path: Path) -> None:
    probe = harness.trail_commit_probe_ms(tmp_path, n=20, warmup=5)
    assert set(probe) == {"p50_ms", "p90_ms", "flush_p50_ms", "flush_p90_ms"}
    assert all(v > 0 for v in probe.values())
    assert 0 < probe["p50_ms"] <= probe["p90_ms"] and 0 < probe["flush_p50_ms"] <= probe["flush_p90_ms"]
    assert list(tmp_path.iterdir()) == []


def _result(probe: dict[str, float]) -> dict[str, object]:
    return {"paths": {"ours": {"trail_commit_probe": probe}}}


def test_the_report_names_the_flush_floor_when_the_run_measured_it() -> None:
    line = report._trail_commit(_result({"p50_ms": 0.331, "p90_ms": 0.4, "flush_p50_ms": 0.21,
                                         "flush_p90_ms": 0.25}))
    assert "0.331 ms p50" in line and "`fdatasync`, no SQLite) takes 0.210 ms p50, 0.250 ms p90" in line


def test_a_result_from_before_the_flush_probe_still_reads() -> None:
    line = report._trail_commit(_result({"p50_ms": 0.451, "p90_ms": 0.521}))
    assert "0.451 ms p50, 0.521 ms p90" in line and "no SQLite" not in line
    assert report._trail_commit({"paths": {}}) == ""
