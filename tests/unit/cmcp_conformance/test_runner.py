"""The runner's bookkeeping: per-ID folding, the catalogue/README/suite agreement, and the CLI contract.

These run without any deployment: a synthetic suite exercises the plugin, and the CLI is driven
against a target that does not exist (everything that needs it must FAIL or SKIP, never PASS).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from cmcp_conformance import catalogue, runner
from cmcp_conformance.bundle import write as write_bundle
from cmcp_conformance.plugin import CheckResult, ConformancePlugin
from cmcp_conformance.target import TargetDeployment
from cmcp_core.bundle import load_bundle
from cmcp_core.validation import validate_bundle
from tests.paths import ROOT

README = ROOT / "conformance" / "README.md"
SUMMARY = re.compile(r"^conformance: (\d+) passed, (\d+) failed, (\d+) skipped$")

SYNTHETIC = """
import pytest

@pytest.mark.conformance("ATTEST-001")
def test_pass(target):
    assert target.name == "synthetic"

@pytest.mark.conformance("ATTEST-002")
def test_pass_too(target):
    pass

@pytest.mark.conformance("ATTEST-002")
def test_fails(target):
    assert 1 == 2, "the property is broken"

@pytest.mark.conformance("ATTEST-003")
def test_skipped(target):
    pytest.skip("needs an enclave")

@pytest.mark.conformance("ATTEST-004")
def test_partial_pass(target):
    pass

@pytest.mark.conformance("ATTEST-004")
def test_partial_skip(target):
    pytest.skip("needs local powers")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown blew up")

@pytest.mark.conformance("AUDIT-004")
def test_teardown_error(target, broken_teardown):
    pass

@pytest.mark.conformance("POLICY-001")
def test_setup_error(target, missing_fixture):
    pass
"""


def run_synthetic(tmp_path: Path, source: str, ids: list[str]) -> ConformancePlugin:
    # a fresh module name per run: pytest would otherwise reuse an earlier run's module
    (tmp_path / f"test_synthetic_{uuid.uuid4().hex}.py").write_text(textwrap.dedent(source))
    plugin = ConformancePlugin(TargetDeployment(name="synthetic", mcp_url="http://127.0.0.1:9/"), ids)
    pytest.main(
        [
            str(tmp_path),
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-p",
            "no:terminal",
            "--import-mode=importlib",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
        ],
        plugins=[plugin, plugin.fixtures()],
    )
    return plugin


def test_outcomes_fold_per_id(tmp_path: Path) -> None:
    ids = ["ATTEST-001", "ATTEST-002", "ATTEST-003", "ATTEST-004", "ATTEST-005", "AUDIT-004", "POLICY-001"]
    plugin = run_synthetic(tmp_path, SYNTHETIC, ids)
    got = {rid: (r.outcome, r.reason) for rid, r in plugin.results.items()}
    assert got["ATTEST-001"][0] is CheckResult.PASS
    assert got["ATTEST-002"][0] is CheckResult.FAIL and "the property is broken" in got["ATTEST-002"][1]
    assert got["ATTEST-003"] == (CheckResult.SKIP, "needs an enclave")
    assert got["ATTEST-004"][0] is CheckResult.PASS and "1/2 checks ran" in got["ATTEST-004"][1]
    assert got["ATTEST-005"] == (CheckResult.FAIL, "no test collected for this ID")  # nothing behind it
    assert got["AUDIT-004"][0] is CheckResult.FAIL and "teardown" in got["AUDIT-004"][1]
    assert got["POLICY-001"][0] is CheckResult.FAIL and "setup" in got["POLICY-001"][1]


def test_unmarked_or_unknown_tests_are_suite_errors(tmp_path: Path) -> None:
    source = """
    import pytest

    def test_unmarked(target):
        pass

    @pytest.mark.conformance("NOPE-001")
    def test_unknown(target):
        pass
    """
    plugin = run_synthetic(tmp_path, source, ["ATTEST-001"])
    assert any("no conformance ID marker" in e for e in plugin.collection_errors)
    assert any("unknown conformance ID 'NOPE-001'" in e for e in plugin.collection_errors)
    report = runner.Report(results=list(plugin.results.values()), collection_errors=plugin.collection_errors)
    assert not report.ok


def test_unknown_selected_id_is_refused() -> None:
    with pytest.raises(KeyError, match="POLICY-999"):
        ConformancePlugin(TargetDeployment(name="x", mcp_url="http://x/"), ["POLICY-999"])


def test_report_lines_and_must_semantics(tmp_path: Path) -> None:
    plugin = run_synthetic(tmp_path, SYNTHETIC, ["ATTEST-001", "ATTEST-003", "AUDIT-004"])
    report = runner.Report(results=list(plugin.results.values()))
    lines = report.lines()
    assert lines[-1] == "conformance: 1 passed, 1 failed, 1 skipped"
    assert lines[0].startswith("PASS ATTEST-001") and lines[1].startswith("SKIP ATTEST-003")
    assert report.ok, "only a SHOULD (AUDIT-004) failed: the run must still succeed"
    plugin = run_synthetic(tmp_path, SYNTHETIC, ["ATTEST-002"])
    assert not runner.Report(results=list(plugin.results.values())).ok, "a MUST failed"


def test_every_catalogue_id_has_tests_in_the_suite() -> None:
    found = runner.collect()
    missing = [rid for rid, tests in found.items() if not tests]
    assert not missing, f"catalogue IDs with no test: {missing}"
    assert set(found) == {r.id for r in catalogue.active()}


def test_readme_lists_exactly_the_catalogue() -> None:
    rows = re.findall(
        r"^\| ([A-Z]+(?:-TEE)?-\d{3}) \| (MUST|SHOULD) \|",
        README.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    assert rows == [(r.id, r.level.value) for r in catalogue.REQUIREMENTS]
    assert "cmcpctl conformance --target https://" in README.read_text(encoding="utf-8"), (
        "README must show how to run against a user's cluster"
    )


def test_ids_are_unique_and_well_formed() -> None:
    ids = [r.id for r in catalogue.REQUIREMENTS]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"(ATTEST|POLICY|AUDIT|FAIL|TRACE|POLICY-TEE)-\d{3}", i) for i in ids)
    expected = {
        f"{group}-{n:03d}"
        for group, count in (
            ("ATTEST", 5),
            ("POLICY", 5),
            ("AUDIT", 5),
            ("FAIL", 3),
            ("TRACE", 3),
            ("POLICY-TEE", 5),
        )
        for n in range(1, count + 1)
    }
    assert set(ids) == expected


def test_conformance_bundle_is_valid_and_stable(tmp_path: Path) -> None:
    enforce = load_bundle(write_bundle(tmp_path / "a"))
    again = load_bundle(write_bundle(tmp_path / "b"))
    advisory = load_bundle(write_bundle(tmp_path / "c", mode="advisory"))
    assert validate_bundle(enforce) == [] and validate_bundle(advisory) == []
    assert enforce.bundle_hash == again.bundle_hash != advisory.bundle_hash
    assert "shadow_tool" not in enforce.catalog_by_tool(), (
        "the uncatalogued tool must stay out of the catalog"
    )
    assert any(not name.isascii() for name in enforce.catalog_by_tool())


def cmcpctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmcp_ctl.main", "conformance", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )


def test_cli_usage_errors_exit_2() -> None:
    assert cmcpctl().returncode == 2
    assert cmcpctl("--target", "ftp://nowhere").returncode == 2
    assert cmcpctl("--target", "local", "--id", "POLICY-999").returncode == 2
    # the outage power scales an McpRoute: without one to scale it is a usage error
    no_route = cmcpctl("--target", "http://127.0.0.1:9/mcp/x", "--allow-disruption")
    assert no_route.returncode == 2 and "--allow-disruption needs --route" in no_route.stderr


def test_cli_list_and_write_bundle(tmp_path: Path) -> None:
    listed = cmcpctl("--list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [r.id for r in catalogue.REQUIREMENTS]
    out = cmcpctl("--write-bundle", str(tmp_path / "bundle"))
    assert out.returncode == 0 and validate_bundle(load_bundle(tmp_path / "bundle")) == []
    out = cmcpctl("--write-bundle", str(tmp_path / "advisory"), "--bundle-mode", "advisory")
    advisory = load_bundle(tmp_path / "advisory")
    assert out.returncode == 0 and validate_bundle(advisory) == []
    assert advisory.enforcement_mode == "advisory"
    assert advisory.bundle_hash != load_bundle(tmp_path / "bundle").bundle_hash


def test_cli_against_an_absent_gateway_fails_musts_and_never_passes(tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    ids = ["POLICY-001", "POLICY-002", "FAIL-002", "ATTEST-001", "POLICY-TEE-004"]
    out = cmcpctl(
        "--target",
        "http://127.0.0.1:9/mcp/none",
        *[a for i in ids for a in ("--id", i)],
        "--junit",
        str(junit),
    )
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 1, out.stdout + out.stderr
    summary = SUMMARY.match(lines[-1])
    assert summary and summary.group(1) == "0", lines[-1]
    per_id = {line.split()[1]: line.split()[0] for line in lines if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert set(per_id) == set(ids) and "PASS" not in per_id.values()
    assert per_id["POLICY-001"] == "FAIL" and per_id["ATTEST-001"] == "SKIP"
    assert 'name="conformance_id" value="POLICY-001"' in junit.read_text()
