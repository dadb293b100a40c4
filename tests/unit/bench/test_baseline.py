"""bench.baseline: the commit that set issue 16's target is found in the clone or the path is
skipped with the reason (a shallow clone), its tree is unpacked once, whole, from git, and the
harness reads the target against that path's added latency in the same run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import baseline, harness
from bench.common import Skip
from bench.loadgen import Samples


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "ours.py").write_text("STACK = 'old'\n", encoding="utf-8")
    _git(root.parent, "init", "-q", str(root))
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "baseline")
    monkeypatch.setattr(baseline, "REPO_ROOT", root)
    monkeypatch.setattr(baseline, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(baseline, "BASELINE_REV", _git(root, "rev-parse", "HEAD"))
    return root


def test_the_baseline_tree_is_the_commits_own_files_unpacked_once(repo: Path) -> None:
    rev = baseline.full_rev()
    tree = baseline.ensure_tree(rev, log=lambda _msg: None)
    assert (tree / "bench" / "ours.py").read_text(encoding="utf-8") == "STACK = 'old'\n"
    assert (tree / ".complete").read_text(encoding="utf-8").strip() == rev
    (tree / "bench" / "ours.py").write_text("changed\n", encoding="utf-8")
    assert baseline.ensure_tree(rev, log=lambda _msg: None) == tree  # kept, not unpacked again
    assert (tree / "bench" / "ours.py").read_text(encoding="utf-8") == "changed\n"


def test_an_unfinished_tree_is_unpacked_again(repo: Path) -> None:
    rev = baseline.full_rev()
    tree = baseline.CACHE_DIR / f"baseline-{rev[:12]}"
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "ours.py").write_text("half\n", encoding="utf-8")  # no .complete marker
    assert baseline.ensure_tree(rev, log=lambda _msg: None) == tree
    assert (tree / "bench" / "ours.py").read_text(encoding="utf-8") == "STACK = 'old'\n"


def test_a_clone_without_the_commit_skips_the_path_with_the_reason(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baseline, "BASELINE_REV", "0" * 40)
    with pytest.raises(Skip, match="not in this clone"):
        baseline.full_rev()


def _samples(p50: float) -> Samples:
    return Samples(call_ms=[p50 - 0.2, p50 - 0.1, p50, p50 + 0.1, p50 + 0.2] * 20)


@pytest.mark.parametrize(("ours_ms", "met"), [(3.4, True), (3.9, False)])
def test_the_issue_16_target_is_read_against_the_baseline_of_the_same_run(ours_ms: float, met: bool) -> None:
    seq = {"direct": _samples(2.0), "ours": _samples(ours_ms), "baseline": _samples(3.5)}
    overhead = harness.overhead(seq)
    assert overhead["baseline"]["p50_ms"] == pytest.approx(1.5)
    assert overhead["ours_minus_baseline"]["p50_ms"] == pytest.approx(ours_ms - 3.5)
    rows = {r["target"]: r for r in harness.targets_table({"overhead": overhead})}
    same_run = next(r for t, r in rows.items() if "in this run" in t)
    assert same_run["limit_ms"] == pytest.approx(1.5)
    assert same_run["met"] is met
    assert same_run["miss_by_ms"] == pytest.approx(0.0 if met else ours_ms - 3.5)
    absolute = next(r for t, r in rows.items() if "as read at" in t)
    assert absolute["limit_ms"] == baseline.BASELINE_ADDED_P50_MS
    assert absolute["met"] is (ours_ms - 2.0 <= baseline.BASELINE_ADDED_P50_MS)


def test_without_a_baseline_path_only_the_absolute_reading_is_made() -> None:
    overhead = harness.overhead({"direct": _samples(2.0), "ours": _samples(3.4)})
    assert "ours_minus_baseline" not in overhead
    targets = [r["target"] for r in harness.targets_table({"overhead": overhead})]
    assert not any("in this run" in t for t in targets)
    assert any("as read at" in t for t in targets)
