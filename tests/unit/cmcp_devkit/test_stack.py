"""cmcp_devkit.stack: the local stack's launchers (argv, config, waiting, enclave start and restart)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from cmcp_core.bundle import load_bundle
from cmcp_devkit.initdata import render_initdata
from cmcp_devkit.stack import AGENT, AUDIENCE, PERMIT_TTL, EnclaveHandle, LaunchError, LocalStack, _bin
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "realistic"


def _flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_enclave_argv_runs_the_simulated_tee_with_the_stack_ttl(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, permit_ttl=7)
    argv = stack.enclave_argv(BUNDLE, tmp_path / "i.toml", "127.0.0.1:0", tmp_path / "r.json")
    assert Path(argv[0]).name == "cmcp-enclave"
    assert _flag_values(argv, "--tee") == ["simulated"]
    assert _flag_values(argv, "--permit-ttl") == ["7"]
    assert _flag_values(argv, "--ready-file") == [str(tmp_path / "r.json")]
    assert LocalStack(tmp_path).permit_ttl == PERMIT_TTL


def test_guard_argv_pins_every_enclave_hash_and_mode(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, audience="urn:aud")
    argv = stack.guard_argv("127.0.0.1:1", "http://up", ["127.0.0.1:2", "127.0.0.1:3"], ["h1", "h2"])
    assert _flag_values(argv, "--audience") == ["urn:aud"]
    assert _flag_values(argv, "--enclave") == ["127.0.0.1:2", "127.0.0.1:3"]
    assert _flag_values(argv, "--expected-bundle-hash") == ["h1", "h2"]
    assert _flag_values(argv, "--expected-mode") == ["enforce"]  # no enclave yet: enforce
    assert _flag_values(argv, "--release-manifest") == [str(stack.release.manifest)]
    assert _flag_values(argv, "--release-key") == [str(stack.release.key)]


def test_release_is_written_once_per_stack(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    first = stack.release
    assert stack.release is first and first.manifest.parent == tmp_path


def test_bin_names_a_missing_script() -> None:
    with pytest.raises(LaunchError, match="no-such-cmcp-script"):
        _bin("no-such-cmcp-script")


def test_wait_for_returns_the_first_truthy_value(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    try:
        proc = stack.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        values = iter([None, 0, "", "found"])
        assert stack.wait_for(proc, lambda: next(values), "a value") == "found"
    finally:
        stack.close()
    assert not proc.alive() and stack.procs == []


def test_wait_for_fails_with_the_output_of_a_dead_process(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    proc = stack.spawn("dying", [sys.executable, "-c", "print('the clue'); raise SystemExit(5)"])
    proc.popen.wait(timeout=30)
    with pytest.raises(LaunchError, match=r"dying exited \(5\) before its ready file") as info:
        stack.wait_for(proc, lambda: None, "its ready file")
    assert "the clue" in str(info.value)


def test_wait_for_times_out(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    try:
        proc = stack.spawn("idle", [sys.executable, "-c", "import time; time.sleep(60)"])
        with pytest.raises(LaunchError, match="idle: timed out waiting for READY"):
            stack.wait_for(proc, lambda: None, "READY", timeout=0.2)
    finally:
        stack.close()


def test_spawn_runs_unbuffered_in_the_work_folder(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    code = "import os; print(os.getcwd(), os.environ['PYTHONUNBUFFERED'])"
    proc = stack.spawn("where", [sys.executable, "-c", code])
    proc.popen.wait(timeout=30)
    assert proc.output().split() == [str(tmp_path), "1"]


def test_enclave_start_restart_and_gateway_config(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, audience="urn:cmcp:stack-test", agent="alice")
    try:
        handle = stack.start_enclave_on("enforce", BUNDLE, render_initdata(BUNDLE, audience=stack.audience))
        assert handle.ready["bundle_hash"] == load_bundle(BUNDLE).bundle_hash
        assert stack.modes() == [handle.ready["enforcement_mode"]]
        stack.upstream_url = "http://127.0.0.1:9/mcp"
        config = stack.gateway_config(4242)
        assert config["listen"] == "127.0.0.1:4242"
        assert config["release"] == stack.release.config()
        (route,) = config["routes"]
        assert route == {
            "name": "enforce", "upstream": "http://127.0.0.1:9/mcp", "audience": "urn:cmcp:stack-test",
            "enclaves": [handle.address], "expected_bundle_hashes": [handle.ready["bundle_hash"]],
            "expected_catalog_hashes": [handle.ready["catalog_hash"]],
            "enforcement_modes": [handle.ready["enforcement_mode"]],
        }
        tokens = yaml.safe_load(Path(config["auth"]["tokens_file"]).read_text())
        assert tokens == {stack.token: "alice"}

        stack.stop_enclave()
        assert not handle.proc.alive()
        stack.restart_enclave()
        again = stack.enclaves["enforce"]
        assert again.proc.alive() and again.address == handle.address  # same address, new process
        assert again.proc.pid != handle.proc.pid
    finally:
        stack.close()
    assert not any(p.alive() for p in (handle.proc, again.proc))


def test_an_enclave_given_unmeasured_initdata_is_a_launch_error(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    try:
        proc, _, _ = stack._enclave_proc("bad", BUNDLE, render_initdata(BUNDLE, audience="urn:swapped"),
                                         "127.0.0.1:0", measured=render_initdata(BUNDLE))
        with pytest.raises(LaunchError, match="INITDATA_MISMATCH"):
            stack.wait_for(proc, lambda: None, "its ready file")
    finally:
        stack.close()


def test_defaults() -> None:
    stack = LocalStack(Path("/nonexistent"))
    assert (stack.audience, stack.agent, stack.upstream_profile) == (AUDIENCE, AGENT, "test")
    assert len(stack.token) >= 32 and stack.token != LocalStack(Path("/x")).token


def test_pools_serve_one_route_from_several_enclaves_to_every_replica(tmp_path: Path) -> None:
    """Replicas share routes, enclaves and tokens; a pool is one route over several enclaves."""
    stack = LocalStack(tmp_path, agent="alice", tokens={"tok-bob": "bob"}, pools={"pair": ["one", "two"]},
                       gateway_limits={"max_sessions_per_agent": 3})
    for n, name in enumerate(("solo", "one", "two")):
        ready = {"bundle_hash": f"h{n % 2}", "catalog_hash": "c", "enforcement_mode": "enforce"}
        stack.enclaves[name] = EnclaveHandle(None, f"127.0.0.1:{n + 1}", BUNDLE, tmp_path, ready)  # type: ignore[arg-type]
    config = stack.gateway_config(4242)
    assert {r["name"]: r["enclaves"] for r in config["routes"]} == {
        "solo": ["127.0.0.1:1"], "pair": ["127.0.0.1:2", "127.0.0.1:3"]}
    pair = next(r for r in config["routes"] if r["name"] == "pair")
    assert pair["expected_bundle_hashes"] == ["h0", "h1"] and pair["enforcement_modes"] == ["enforce"]
    assert config["limits"]["max_sessions_per_agent"] == 3
    assert config["limits"]["decide_timeout_seconds"] == 2.0
    tokens = yaml.safe_load(Path(config["auth"]["tokens_file"]).read_text())
    assert tokens == {stack.token: "alice", "tok-bob": "bob"}


def test_kill_ends_a_process_without_asking(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    try:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        proc = stack.spawn("stubborn", [sys.executable, "-c", code])
        stack.kill(proc)
        assert proc.popen.returncode == -9
    finally:
        stack.close()
