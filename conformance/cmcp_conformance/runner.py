"""Run the suite programmatically against a :class:`~cmcp_conformance.target.TargetDeployment`.

The suite is a set of ordinary pytest modules shipped inside the package
(``cmcp_conformance/suite``); the runner invokes pytest in-process with the
:class:`~cmcp_conformance.plugin.ConformancePlugin`, isolated from whatever pytest
configuration the current directory carries (a user's repository must not change what the
suite does), and returns one outcome per catalogue ID.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cmcp_conformance import catalogue
from cmcp_conformance.plugin import CheckResult, ConformancePlugin, IdResult
from cmcp_conformance.target import TargetDeployment

SUITE_DIR = Path(__file__).resolve().parent / "suite"


@dataclass
class Report:
    """Per-ID results in catalogue order, plus anything that went wrong around the tests."""

    results: list[IdResult]
    collection_errors: list[str] = field(default_factory=list)
    pytest_exit: int = 0

    def count(self, outcome: CheckResult) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    def outcome_of(self, requirement_id: str) -> CheckResult:
        for result in self.results:
            if result.requirement.id == requirement_id:
                return result.outcome
        raise KeyError(requirement_id)

    @property
    def must_failures(self) -> list[IdResult]:
        return [
            r
            for r in self.results
            if r.outcome is CheckResult.FAIL and r.requirement.level is catalogue.Level.MUST
        ]

    @property
    def ok(self) -> bool:
        """True when no MUST failed and the suite itself collected cleanly."""
        return not self.must_failures and not self.collection_errors

    def lines(self) -> list[str]:
        """One line per ID, then the summary line ``conformance: N passed, M failed, K skipped``."""
        out = []
        for r in self.results:
            out.append(
                f"{r.outcome.value:<4} {r.requirement.id:<15} {r.requirement.level.value:<6} "
                f"{r.requirement.title} -- {r.reason}"
            )
        out.extend(f"ERROR suite: {err}" for err in self.collection_errors)
        out.append(
            f"conformance: {self.count(CheckResult.PASS)} passed, {self.count(CheckResult.FAIL)} failed, "
            f"{self.count(CheckResult.SKIP)} skipped"
        )
        return out


def pytest_args(*, junit: Path | None = None, verbose: bool = False, extra: Sequence[str] = ()) -> list[str]:
    """The isolated pytest command line the runner uses (exposed for tests and debugging)."""
    # no ini file and our own rootdir: the caller's pytest configuration must not leak in
    args = [str(SUITE_DIR), "-c", os.devnull, "--rootdir", str(SUITE_DIR)]
    args += ["-p", "no:cacheprovider", "-p", "no:randomly"]
    args += ["-o", "asyncio_default_fixture_loop_scope=function", "-W", "ignore::pytest.PytestConfigWarning"]
    # the per-ID lines are the output; pytest's own report only when asked for
    args += ["-v", "-rfEs"] if verbose else ["-p", "no:terminal"]
    if junit is not None:
        args += [f"--junitxml={junit}", "-o", "junit_family=xunit2"]
        args += ["-o", "junit_suite_name=cmcp-conformance"]
    args += list(extra)
    return args


def run(
    target: TargetDeployment,
    *,
    ids: Iterable[str] | None = None,
    junit: Path | None = None,
    verbose: bool = False,
    extra_args: Sequence[str] = (),
) -> Report:
    """Run the suite (or the selected IDs) against ``target`` and return the per-ID report."""
    plugin = ConformancePlugin(target, ids)
    code = int(
        pytest.main(
            pytest_args(junit=junit, verbose=verbose, extra=extra_args), plugins=[plugin, plugin.fixtures()]
        )
    )
    errors = list(plugin.collection_errors)
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
        errors.append(f"pytest exited with {pytest.ExitCode(code).name} ({code}); see its output above")
    return Report(results=list(plugin.results.values()), collection_errors=errors, pytest_exit=code)


def collect(ids: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Which tests stand behind each ID (nothing runs); used to keep catalogue and suite in step."""
    plugin = ConformancePlugin(
        TargetDeployment(name="collect-only", mcp_url="http://127.0.0.1:9/unused"), ids
    )
    pytest.main(pytest_args(extra=["--collect-only"]), plugins=[plugin, plugin.fixtures()])
    found: dict[str, list[str]] = {rid: [] for rid in plugin.results}
    for nodeid, rid in plugin.item_ids.items():
        found[rid].append(nodeid)
    if plugin.collection_errors:
        raise RuntimeError("; ".join(plugin.collection_errors))
    return found
