"""A synthetic conformance suite run through the real :class:`ConformancePlugin`, for unit tests.

The plugin's tests (per-ID folding) and the runner's tests (report lines, MUST semantics) both
drive pytest in-process on this small suite instead of the shipped one, so no deployment is needed.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest

from cmcp_conformance.plugin import ConformancePlugin
from cmcp_conformance.target import TargetDeployment

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


def run_synthetic(
    tmp_path: Path, source: str, ids: list[str], target: TargetDeployment | None = None
) -> ConformancePlugin:
    # a fresh module name per run: pytest would otherwise reuse an earlier run's module
    (tmp_path / f"test_synthetic_{uuid.uuid4().hex}.py").write_text(textwrap.dedent(source))
    target = target or TargetDeployment(name="synthetic", mcp_url="http://127.0.0.1:9/")
    plugin = ConformancePlugin(target, ids)
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

