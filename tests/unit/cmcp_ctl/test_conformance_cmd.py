"""``cmcpctl conformance``: usage errors, ``--list``, ``--write-bundle``, the remote target it builds,
and a run against a gateway that does not exist (every check must FAIL or SKIP, never PASS)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cmcp_conformance import catalogue
from cmcp_core.bundle import load_bundle
from cmcp_core.validation import validate_bundle
from cmcp_ctl import conformance_cmd
from cmcp_ctl.main import build_parser
from cmcp_ctl.main import main as cmcpctl_main
from cmcp_devkit.release import DevRelease, write_dev_release
from tests.paths import ROOT

SUMMARY = re.compile(r"^conformance: (\d+) passed, (\d+) failed, (\d+) skipped$")


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
        *write_dev_release(tmp_path).argv(),
    )
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 1, out.stdout + out.stderr
    summary = SUMMARY.match(lines[-1])
    assert summary and summary.group(1) == "0", lines[-1]
    per_id = {line.split()[1]: line.split()[0] for line in lines if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert set(per_id) == set(ids) and "PASS" not in per_id.values()
    assert per_id["POLICY-001"] == "FAIL" and per_id["ATTEST-001"] == "SKIP"
    assert 'name="conformance_id" value="POLICY-001"' in junit.read_text()


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["conformance", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--target local|<gateway route URL> is required"),
        (["--target", "ftp://nowhere"], "--target must be 'local' or an http(s) URL, got 'ftp://nowhere'"),
        (["--target", "local", "--id", "POLICY-999"], "unknown conformance ID 'POLICY-999'"),
        (["--target", "http://127.0.0.1:9/mcp/x", "--allow-disruption"], "--allow-disruption needs --route"),
    ],
)
def test_usage_errors_say_what_is_wrong_in_process(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl_main(["conformance", *argv]) == 2
    out, err = capsys.readouterr()
    assert message in err and "PASS" not in out


def test_bundle_mode_is_restricted_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cmcpctl_main(["conformance", "--write-bundle", "x", "--bundle-mode", "audit"])
    assert caught.value.code == 2
    assert "invalid choice: 'audit'" in capsys.readouterr().err


def test_list_in_process_prints_id_level_title(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl_main(["conformance", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(catalogue.active())
    for line, req in zip(lines, catalogue.active(), strict=True):
        assert line.split(maxsplit=2) == [req.id, req.level.value, req.title]


def test_write_bundle_in_process_names_mode_and_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["conformance", "--write-bundle", str(tmp_path / "b"), "--bundle-mode", "advisory"]
    assert cmcpctl_main(argv) == 0
    assert capsys.readouterr().out.strip() == f"conformance bundle (advisory) written to {tmp_path / 'b'}"
    assert load_bundle(tmp_path / "b").enforcement_mode == "advisory"


@pytest.fixture
def signed(tmp_path: Path) -> DevRelease:
    return write_dev_release(tmp_path)


def test_remote_target_carries_every_endpoint_flag(signed: DevRelease) -> None:
    target = conformance_cmd._remote_target(_args(
        *signed.argv(),
        "--target", "https://gw.example/mcp/conf", "--token=-tok", "--enclave", "10.0.0.1:50051",
        "--advisory-url", "https://gw.example/mcp/adv", "--advisory-enclave", "10.0.0.2:50051",
        "--upstream", "http://up.example/mcp", "--upstream-counter", "http://up.example/calls",
        "--audience", "aud-1", "--allow-simulated",
    ))
    assert (target.name, target.mcp_url, target.token) == ("cluster", "https://gw.example/mcp/conf", "-tok")
    assert (target.enclave_address, target.advisory_enclave_address) == ("10.0.0.1:50051", "10.0.0.2:50051")
    assert target.advisory_mcp_url == "https://gw.example/mcp/adv"
    assert (target.upstream_url, target.upstream_counter_url) == ("http://up.example/mcp",
                                                                  "http://up.example/calls")
    assert target.upstream_audience == "aud-1" and target.allow_simulated is True
    # no --route: no cluster access, no outage power, no route status or expected hash
    assert target.cluster is None and target.outage is None and target.powers is None
    assert target.route_status is None and target.expected_bundle_hash is None and target.notes == []
    assert target.appraisal.releases == (signed.release,), "the suite appraises against the given release"


def test_remote_target_needs_a_signed_release(signed: DevRelease, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="REFERENCE_VALUES_MISSING"):
        conformance_cmd._remote_target(_args("--target", "http://127.0.0.1:9/mcp/x"))
    other = write_dev_release(tmp_path / "other")
    foreign = ["--release-manifest", str(signed.manifest), "--release-key", str(other.key)]
    with pytest.raises(ValueError, match="RELEASE_MANIFEST_INVALID"):
        conformance_cmd._remote_target(_args("--target", "http://127.0.0.1:9/mcp/x", *foreign))


def test_remote_target_defaults_grant_nothing(signed: DevRelease) -> None:
    target = conformance_cmd._remote_target(_args("--target", "http://127.0.0.1:9/mcp/x", *signed.argv()))
    assert target.token is None and target.auth_headers() == {}
    assert target.enclave_address is None and target.upstream_url is None
    assert target.allow_simulated is False, "software-only evidence must be opted into"


def test_a_malformed_route_reference_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["conformance", "--target", "http://127.0.0.1:9/mcp/x", "--route", "no-namespace"]
    assert cmcpctl_main(argv) == 2
    assert capsys.readouterr().err.startswith("cmcpctl conformance: ")
