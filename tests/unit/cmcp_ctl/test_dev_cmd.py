"""``cmcpctl dev up``: argument handling that stops before anything starts, and its small parts.

The whole run (a real enclave, guard and gateway in front of an SDK server the test started) is
``tests/integration/test_dev_up.py``. Here: the route and upstream rules, the bundle checks
(exit 2 and nothing started), the work folder, and the Ctrl-C/SIGTERM latch.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from cmcp_ctl import dev_cmd
from cmcp_ctl.main import main as cmcpctl
from tests.paths import EXAMPLES

BUNDLE = str(EXAMPLES / "realistic")
UPSTREAM = "http://127.0.0.1:9/mcp"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000/mcp", ("http://127.0.0.1:8000", "/mcp")),
        ("https://mcp.example:443/a/b/mcp", ("https://mcp.example:443", "/a/b/mcp")),
        ("http://localhost:8000", ("http://localhost:8000", "/")),
        ("http://[::1]:8000/mcp", ("http://[::1]:8000", "/mcp")),
    ],
)
def test_split_upstream_keeps_the_path_for_the_guard(url: str, expected: tuple[str, str]) -> None:
    assert dev_cmd._split_upstream(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:8000/mcp", "ftp://host/mcp", "http:///mcp", "", "mcp"])
def test_split_upstream_refuses_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="--upstream must be an http\\(s\\) URL"):
        dev_cmd._split_upstream(url)


def _up(tmp_path: Path, *argv: str) -> list[str]:
    return ["dev", "up", "--workdir", str(tmp_path / "work"), *argv]


@pytest.mark.parametrize("route", ["Dev", "-dev", "dev-", "dev_1", "a.b", ""])
def test_a_route_that_is_not_a_dns_label_is_a_usage_error(
        route: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl(_up(tmp_path, "--bundle", BUNDLE, "--upstream", UPSTREAM, f"--route={route}")) == 2
    assert f"--route must be a DNS label (lowercase letters, digits, '-'), got {route!r}" in (
        capsys.readouterr().err)
    assert not (tmp_path / "work").exists(), "nothing may start on a usage error"


@pytest.mark.parametrize("route", ["dev", "crm", "a", "route-2", "0"])
def test_dns_labels_are_accepted_as_routes(route: str) -> None:
    assert dev_cmd._ROUTE_NAME.match(route)


def test_a_bad_upstream_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmcpctl(_up(tmp_path, "--bundle", BUNDLE, "--upstream", "127.0.0.1:8000")) == 2
    assert capsys.readouterr().err == "error: --upstream must be an http(s) URL, got '127.0.0.1:8000'\n"
    assert not (tmp_path / "work").exists()


def test_a_missing_bundle_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-bundle"
    assert cmcpctl(_up(tmp_path, "--bundle", str(missing), "--upstream", UPSTREAM)) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot load the bundle {missing}: ")
    assert not (tmp_path / "work").exists()


def test_an_invalid_bundle_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    (bundle / "policies" / "oops.cedar").write_text(
        '@id("oops")\nforbid (principal, action, resource) when { context.nope == 1 };\n', encoding="utf-8")
    assert cmcpctl(_up(tmp_path, "--bundle", str(bundle), "--upstream", UPSTREAM)) == 2
    err = capsys.readouterr().err
    assert "validation error(s); run `cmcpctl bundle validate" in err
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("missing", ["--bundle", "--upstream"])
def test_bundle_and_upstream_are_required(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = {"--bundle": BUNDLE, "--upstream": UPSTREAM}
    del argv[missing]
    with pytest.raises(SystemExit) as caught:
        cmcpctl(["dev", "up", *[x for pair in argv.items() for x in pair]])
    assert caught.value.code == 2 and f"the following arguments are required: {missing}" in (
        capsys.readouterr().err)


def test_up_help_shows_the_ready_line_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cmcpctl(["dev", "up", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cmcpctl dev up --bundle DIR --upstream URL [flags]")
    assert '"mcp_url"' in out and '"token"' in out and "cmcpctl dev up --bundle examples/realistic" in out
    assert f"(default: {dev_cmd.DEFAULT_PERMIT_TTL})" in out


def test_the_dev_enclave_image_is_named_by_digest() -> None:
    name, _, digest = dev_cmd.DEV_ENCLAVE_IMAGE.partition("@sha256:")
    assert name and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def test_a_named_workdir_is_created_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    with dev_cmd._workdir(str(target)) as work:
        assert work == target.resolve() and work.is_dir()
        (work / "gateway.log").write_text("kept")
    assert (target / "gateway.log").read_text() == "kept"


def test_the_default_workdir_is_temporary() -> None:
    with dev_cmd._workdir(None) as work:
        assert work.is_dir() and work.name.startswith("cmcp-dev-")
        (work / "enclave.log").write_text("gone")
    assert not work.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_latches_and_restores_the_previous_handlers(signum: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with dev_cmd._StopSignal() as stop:
        assert not stop.event.is_set()
        os.kill(os.getpid(), signum)
        assert stop.event.wait(10.0), "the signal did not wake the waiting thread"
    assert {s: signal.getsignal(s) for s in before} == before
