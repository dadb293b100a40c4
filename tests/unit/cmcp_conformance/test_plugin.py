"""The conformance plugin: per-test outcomes folded into per-ID outcomes, and what it refuses.

A synthetic suite (``tests/helpers/synthetic_suite.py``) runs through the real plugin in an
in-process pytest; no deployment is needed. The rule under test: an ID passes only when a test
of it passed and none failed, a broken fixture is a failure, and an ID with nothing behind it fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_conformance import catalogue, runner
from cmcp_conformance.plugin import CheckResult, ConformancePlugin, IdResult
from cmcp_conformance.plugin import TestResult as CheckRecord  # not a pytest class
from cmcp_conformance.target import TargetDeployment
from tests.helpers.synthetic_suite import SYNTHETIC, run_synthetic

TARGET = TargetDeployment(name="synthetic", mcp_url="http://127.0.0.1:9/")


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


def test_selected_ids_are_deduplicated_and_kept_in_catalogue_order() -> None:
    plugin = ConformancePlugin(TARGET, ["AUDIT-001", "ATTEST-002", "AUDIT-001", "ATTEST-001"])
    assert list(plugin.results) == ["ATTEST-001", "ATTEST-002", "AUDIT-001"]
    everything = ConformancePlugin(TARGET)
    assert list(everything.results) == [r.id for r in catalogue.active()]


def test_tests_of_unselected_ids_are_deselected_not_errors(tmp_path: Path) -> None:
    plugin = run_synthetic(tmp_path, SYNTHETIC, ["ATTEST-003"])
    assert list(plugin.results) == ["ATTEST-003"]
    assert [nodeid.rsplit("::", 1)[-1] for nodeid in plugin.item_ids] == ["test_skipped"]
    # POLICY-001's test has a missing fixture, but it was not selected: it never ran
    assert plugin.collection_errors == []


def test_target_fixture_hands_the_suite_this_target(tmp_path: Path) -> None:
    source = """
    import pytest

    @pytest.mark.conformance("ATTEST-001")
    def test_sees_target(target):
        assert (target.name, target.mcp_url) == ("elsewhere", "http://127.0.0.1:9/mcp/x")
    """
    elsewhere = TargetDeployment(name="elsewhere", mcp_url="http://127.0.0.1:9/mcp/x")
    assert run_synthetic(tmp_path, source, ["ATTEST-001"], elsewhere).results["ATTEST-001"].outcome is (
        CheckResult.PASS)
    assert run_synthetic(tmp_path, source, ["ATTEST-001"], TARGET).results["ATTEST-001"].outcome is (
        CheckResult.FAIL)


def test_a_failed_call_keeps_its_reason_over_a_later_teardown_error(tmp_path: Path) -> None:
    source = """
    import pytest

    @pytest.fixture
    def broken_teardown():
        yield
        raise RuntimeError("teardown blew up")

    @pytest.mark.conformance("ATTEST-001")
    def test_call_fails_first(target, broken_teardown):
        assert False, "the call's own reason"
    """
    plugin = run_synthetic(tmp_path, source, ["ATTEST-001"])
    result = plugin.results["ATTEST-001"]
    assert result.outcome is CheckResult.FAIL
    assert result.reason == "test_call_fails_first: AssertionError: the call's own reason"


def test_a_long_failure_message_is_cut_to_one_short_line(tmp_path: Path) -> None:
    source = """
    import pytest

    @pytest.mark.conformance("ATTEST-001")
    def test_long(target):
        raise AssertionError("x" * 1000 + "\\nsecond line")
    """
    plugin = run_synthetic(tmp_path, source, ["ATTEST-001"])
    reason = plugin.results["ATTEST-001"].reason
    assert reason.startswith("test_long: ")
    message = reason.removeprefix("test_long: ")
    assert len(message) == 300 and message.endswith("...") and "second line" not in message


def test_a_module_that_does_not_import_is_a_suite_error(tmp_path: Path) -> None:
    plugin = run_synthetic(tmp_path, "import no_such_module_for_conformance\n", ["ATTEST-001"])
    [error] = plugin.collection_errors
    assert error.startswith("test_synthetic_") and "ImportError while importing test module" in error
    assert plugin.results["ATTEST-001"].outcome is CheckResult.FAIL  # and nothing stands behind the ID


def _id_result(*tests: CheckRecord) -> IdResult:
    return IdResult(catalogue.get("ATTEST-001"), list(tests))


def test_id_outcome_and_reason_fold_rules() -> None:
    ok = CheckRecord("suite/test_a.py::test_ok", CheckResult.PASS)
    ok2 = CheckRecord("suite/test_a.py::test_ok2", CheckResult.PASS)
    skip = CheckRecord("suite/test_a.py::test_skip", CheckResult.SKIP, "needs an enclave")
    skip2 = CheckRecord("suite/test_a.py::test_skip2", CheckResult.SKIP, "needs powers")
    bad = CheckRecord("suite/test_a.py::test_bad", CheckResult.FAIL, "boom")

    assert (_id_result().outcome, _id_result().reason) == (CheckResult.FAIL, "no test collected for this ID")
    assert (_id_result(ok, ok2).outcome, _id_result(ok, ok2).reason) == (CheckResult.PASS, "2 check(s)")
    assert (_id_result(skip, skip2).outcome, _id_result(skip, skip2).reason) == (
        CheckResult.SKIP, "needs an enclave")
    mixed = _id_result(ok, skip)
    assert (mixed.outcome, mixed.reason) == (CheckResult.PASS, "1/2 checks ran; skipped: needs an enclave")
    for tests in ((ok, bad), (bad, ok), (skip, bad)):
        failed = _id_result(*tests)
        assert (failed.outcome, failed.reason) == (CheckResult.FAIL, "test_bad: boom")


def test_report_of_a_plugin_run_is_not_ok_when_a_must_has_no_test(tmp_path: Path) -> None:
    plugin = run_synthetic(tmp_path, SYNTHETIC, ["ATTEST-005"])
    report = runner.Report(results=list(plugin.results.values()))
    assert report.must_failures and not report.ok


@pytest.mark.parametrize("unknown", ["attest-001", "ATTEST-1", ""])
def test_any_id_not_spelled_as_in_the_catalogue_is_refused(unknown: str) -> None:
    with pytest.raises(KeyError, match="unknown conformance ID"):
        ConformancePlugin(TARGET, [unknown])
