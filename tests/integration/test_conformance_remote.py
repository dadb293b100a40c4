"""The remote-target path of ``cmcpctl conformance``, pointed at a running local deployment.

A user's cluster is reached only through URLs and addresses, with no power over its processes.
Driving the CLI that way against local processes checks the remote code path end to end: tests
that need local powers SKIP with their reason, everything reachable still runs and passes, and
the per-ID lines and summary have the documented shape.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cmcp_conformance.local import LocalDeployment, local_deployment
from cmcp_ctl.main import build_parser
from cmcp_devkit.release import write_dev_release
from tests.paths import ROOT

LINE = re.compile(r"^(PASS|FAIL|SKIP) +([A-Z-]+-\d{3}) +(MUST|SHOULD) +.+ -- .+$")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    with local_deployment(tmp_path_factory.mktemp("remote")) as d:
        yield d


def test_remote_target_runs_what_it_can_and_skips_local_powers(deployment: LocalDeployment) -> None:
    t = deployment.target()
    assert t.upstream_url and t.upstream_counter_url and t.advisory_mcp_url and t.upstream_audience
    ids = [
        "ATTEST-001",
        "ATTEST-006",
        "POLICY-001",
        "POLICY-004",
        "POLICY-005",
        "FAIL-001",
        "POLICY-TEE-002",
        "POLICY-TEE-004",
        "POLICY-TEE-006",
    ]
    argv = [
        sys.executable,
        "-m",
        "cmcp_ctl.main",
        "conformance",
        "--target",
        t.mcp_url,
        f"--token={t.token}",  # one word: a token may start with "-"
        "--enclave",
        str(t.enclave_address),
        "--gateway-key",  # the checks that play a compromised gateway hold its key
        str(deployment.gateway_key_file),
        "--upstream",
        t.upstream_url,
        "--upstream-counter",
        t.upstream_counter_url,
        "--audience",
        t.upstream_audience,
        "--advisory-url",
        t.advisory_mcp_url,
        "--allow-simulated",
        *deployment.release.argv(),
    ]
    for rid in ids:
        argv += ["--id", rid]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=280, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    results = {m.group(2): m.group(1) for m in map(LINE.match, lines) if m}
    assert set(results) == set(ids), out.stdout + out.stderr
    assert results["POLICY-005"] == "SKIP" and results["FAIL-001"] == "SKIP", out.stdout
    assert "not available on a remote target" in out.stdout
    # stopping the enclave is offered on a cluster, by opt-in: the skip says how
    assert "pass --allow-disruption" in next(line for line in lines if " FAIL-001 " in line)
    # ATTEST-006 without powers: the suite plays the host and signs a forged simulated guest's quote
    for rid in ("ATTEST-001", "ATTEST-006", "POLICY-001", "POLICY-004", "POLICY-TEE-002", "POLICY-TEE-004",
                "POLICY-TEE-006"):
        assert results[rid] == "PASS", out.stdout + out.stderr
    assert "POLICY-TEE-002" in next(line for line in lines if "POLICY-TEE-002" in line)
    assert "checks ran; skipped" in next(line for line in lines if " POLICY-TEE-002 " in line)
    assert lines[-1] == "conformance: 7 passed, 0 failed, 2 skipped"
    assert out.returncode == 0


def test_generated_token_starting_with_dash_is_one_argument() -> None:
    """A random token can begin with "-"; passed as ``--token=VALUE`` argparse keeps it whole."""
    args = build_parser().parse_args(["conformance", "--target", "http://x/mcp/r", "--token=-Zq3_dash"])
    assert args.token == "-Zq3_dash"


def test_remote_target_needs_a_signed_release(deployment: LocalDeployment) -> None:
    """No manifest, or one the given key did not sign: a usage error naming the code, no run."""
    t = deployment.target()
    base = [sys.executable, "-m", "cmcp_ctl.main", "conformance", "--target", t.mcp_url, "--allow-simulated",
            "--id", "ATTEST-001"]
    out = subprocess.run(base, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "REFERENCE_VALUES_MISSING" in out.stderr, out.stdout + out.stderr
    other = write_dev_release(deployment.workdir / "other-release", name="other")
    foreign = ["--release-manifest", str(deployment.release.manifest), "--release-key", str(other.key)]
    out = subprocess.run([*base, *foreign], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "RELEASE_MANIFEST_INVALID" in out.stderr, out.stdout + out.stderr
