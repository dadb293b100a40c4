"""``python -m cmcp_devkit.mcp_conformance``: install once, print where; ``run`` prints the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_devkit import mcp_conformance
from cmcp_devkit.mcp_conformance import Install, ScenarioResult, SuiteRun
from cmcp_devkit.mcp_conformance import __main__ as cli


def _install(tmp_path: Path) -> Install:
    return Install(root=tmp_path, node=tmp_path / "node", cli=tmp_path / "index.js")


def test_without_arguments_prints_the_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "ensure_installed", lambda: _install(tmp_path))
    assert cli.main([]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"node={tmp_path / 'node'}", f"cli={tmp_path / 'index.js'}", f"root={tmp_path}",
    ]


def test_run_exits_1_when_a_scenario_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = mcp_conformance.Check(id="ping", status="FAILURE", message="no pong")
    seen: list[str] = []

    def fake_run(url: str, version: str, **_: object) -> SuiteRun:
        seen.append(version)
        results = {"ping": ScenarioResult("ping", (failing,) if version == "2025-06-18" else ())}
        return SuiteRun(url=url, spec_version=version, results=results, seconds=0.1, returncode=1, output="")

    monkeypatch.setattr(cli, "ensure_installed", lambda: _install(tmp_path))
    monkeypatch.setattr(cli, "run_suite_blocking", fake_run)
    assert cli.main(["run", "--url", "http://127.0.0.1:1/mcp"]) == 1
    assert seen == ["2025-11-25", "2025-06-18"]
    assert "ping: no pong" in capsys.readouterr().out


def test_an_install_failure_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> Install:
        raise mcp_conformance.ConformanceError("npm is needed")

    monkeypatch.setattr(cli, "ensure_installed", broken)
    assert cli.main([]) == 2
    assert "npm is needed" in capsys.readouterr().err
