"""pytest plugin: hands the target to the suite and folds per-test outcomes into per-ID outcomes.

Each suite test carries ``@pytest.mark.conformance("<ID>")``. An ID passes when at least one of
its tests passed and none failed; it fails when any of its tests failed or errored (a broken
fixture is a failure, not a skip: a check that cannot run must not look like a pass); it is
skipped only when every one of its tests skipped. Selected IDs with no collected test fail,
so a catalogue entry can never pass by having nothing behind it.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import pytest

from cmcp_conformance import catalogue
from cmcp_conformance.target import TargetDeployment

MARKER = "conformance"


class CheckResult(StrEnum):
    """The result of one conformance test, and of a requirement ID over its tests."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass
class TestResult:
    nodeid: str
    outcome: CheckResult
    reason: str = ""


@dataclass
class IdResult:
    requirement: catalogue.Requirement
    tests: list[TestResult] = field(default_factory=list)

    @property
    def outcome(self) -> CheckResult:
        outcomes = {t.outcome for t in self.tests}
        if not self.tests or CheckResult.FAIL in outcomes:
            return CheckResult.FAIL
        return CheckResult.PASS if CheckResult.PASS in outcomes else CheckResult.SKIP

    @property
    def reason(self) -> str:
        if not self.tests:
            return "no test collected for this ID"
        failed = [t for t in self.tests if t.outcome is CheckResult.FAIL]
        if failed:
            return f"{_short(failed[0].nodeid)}: {failed[0].reason}"
        skipped = [t for t in self.tests if t.outcome is CheckResult.SKIP]
        if self.outcome is CheckResult.SKIP:
            return skipped[0].reason
        if skipped:
            return (
                f"{len(self.tests) - len(skipped)}/{len(self.tests)} checks ran; skipped: {skipped[0].reason}"
            )
        return f"{len(self.tests)} check(s)"


def _short(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return _first_line(str(crash.message))
    return _first_line(str(longrepr))


class ConformancePlugin:
    """Registered with ``pytest.main(plugins=[...])`` by the runner; holds the target and results."""

    def __init__(self, target: TargetDeployment, selected: Iterable[str] | None = None) -> None:
        self._target = target
        wanted = list(selected) if selected is not None else [r.id for r in catalogue.active()]
        for rid in wanted:
            catalogue.get(rid)  # unknown IDs are a usage error, raised before anything runs
        order = {r.id: i for i, r in enumerate(catalogue.REQUIREMENTS)}
        wanted = sorted(set(wanted), key=order.__getitem__)
        self.results: dict[str, IdResult] = {rid: IdResult(catalogue.get(rid)) for rid in wanted}
        self.item_ids: dict[str, str] = {}
        self._recorded: dict[str, TestResult] = {}
        self.collection_errors: list[str] = []

    # --- fixtures offered to the suite ---------------------------------------------------
    def fixtures(self) -> types.ModuleType:
        """A plugin module holding the ``target`` fixture (a closure: no state on a class)."""
        target = self._target

        @pytest.fixture(scope="session", name="target")
        def target_fixture() -> TargetDeployment:
            """The deployment under test."""
            return target

        module = types.ModuleType("cmcp_conformance_target_fixture")
        module.target_fixture = target_fixture  # type: ignore[attr-defined]
        return module

    # --- hooks ---------------------------------------------------------------------------
    @pytest.hookimpl
    def pytest_configure(self, config: pytest.Config) -> None:
        config.addinivalue_line("markers", f"{MARKER}(id): the catalogue ID this test checks")

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collection_errors.append(f"{report.nodeid}: {_first_line(str(report.longrepr))}")

    @pytest.hookimpl
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        keep: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            marker = item.get_closest_marker(MARKER)
            if marker is None or not marker.args:
                self.collection_errors.append(f"{item.nodeid}: test has no conformance ID marker")
                dropped.append(item)
                continue
            rid = str(marker.args[0])
            if rid not in catalogue.BY_ID:
                self.collection_errors.append(f"{item.nodeid}: unknown conformance ID {rid!r}")
                dropped.append(item)
                continue
            if rid not in self.results:
                dropped.append(item)
                continue
            self.item_ids[item.nodeid] = rid
            item.user_properties.append(("conformance_id", rid))
            keep.append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rid = self.item_ids.get(report.nodeid)
        if rid is None:
            return
        previous = self._recorded.get(report.nodeid)
        if report.failed:
            result = TestResult(
                report.nodeid,
                CheckResult.FAIL,
                f"{report.when}: {_reason(report)}" if report.when != "call" else _reason(report),
            )
        elif report.skipped:
            result = TestResult(report.nodeid, CheckResult.SKIP, _reason(report))
        elif report.when == "call":
            result = TestResult(report.nodeid, CheckResult.PASS)
        else:
            return
        # the first failure of a test wins (a teardown error after a failed call keeps the call's reason)
        if previous is not None and previous.outcome is CheckResult.FAIL:
            return
        if (
            previous is not None
            and result.outcome is CheckResult.PASS
            and previous.outcome is CheckResult.SKIP
        ):
            return
        self._recorded[report.nodeid] = result

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for nodeid, result in self._recorded.items():
            self.results[self.item_ids[nodeid]].tests.append(result)
