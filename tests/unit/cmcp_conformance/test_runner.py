"""The runner's bookkeeping: the per-ID report, MUST semantics, and the catalogue/suite agreement.

These run without any deployment: a synthetic suite (``tests/helpers/synthetic_suite.py``)
exercises the report. The plugin's own folding is in ``test_plugin.py``, the catalogue and its
README table in ``test_catalogue.py``, and the CLI in ``tests/unit/cmcp_ctl/test_conformance_cmd.py``.
"""

from __future__ import annotations

from pathlib import Path

from cmcp_conformance import catalogue, runner
from tests.helpers.synthetic_suite import SYNTHETIC, run_synthetic


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

