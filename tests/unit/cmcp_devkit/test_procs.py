"""cmcp_devkit.procs: launching local processes with their log, waiting for them, stopping them by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmcp_devkit.ports import free_port
from cmcp_devkit.procs import (
    READY_PREFIX,
    console_script,
    cpu_seconds,
    cpu_snapshot,
    descendants,
    python_module,
    ready_url,
    rss_of,
    running,
    start,
    wait_http,
)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_url_is_the_first_ready_line() -> None:
    out = f"starting\n{READY_PREFIX}http://127.0.0.1:1/mcp demo\n{READY_PREFIX}http://127.0.0.1:2/mcp\n"
    assert ready_url(out) == "http://127.0.0.1:1/mcp"
    assert ready_url("no ready line\n  READY http://indented/\n") is None
    assert ready_url("") is None


def test_start_writes_stdout_and_stderr_to_the_log(tmp_path: Path) -> None:
    proc = start("child", _py("import sys; print('out'); print('err', file=sys.stderr)"), tmp_path / "logs")
    assert proc.popen.wait(timeout=30) == 0
    assert proc.log_path == tmp_path / "logs" / "child.log"
    text = proc.output()
    assert "out" in text and "err" in text
    assert proc.log_tail(1) in {"out", "err"}
    assert not proc.alive()


def test_output_keeps_the_last_characters(tmp_path: Path) -> None:
    proc = start("long", _py("print('a' * 100 + 'END')"), tmp_path)
    proc.popen.wait(timeout=30)
    assert proc.output(limit=4) == "END\n"


def test_env_sets_and_none_unsets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMCP_TEST_GONE", "present")
    code = "import os; print(os.environ.get('CMCP_TEST_SET'), os.environ.get('CMCP_TEST_GONE'))"
    proc = start("env", _py(code), tmp_path, env={"CMCP_TEST_SET": "yes", "CMCP_TEST_GONE": None})
    proc.popen.wait(timeout=30)
    assert proc.output().strip() == "yes None"


def test_pythonpath_is_prepended(tmp_path: Path) -> None:
    proc = start("pp", _py("import os; print(os.environ['PYTHONPATH'])"), tmp_path, pythonpath=["/first"])
    proc.popen.wait(timeout=30)
    assert proc.output().strip().split(os.pathsep)[0] == "/first"


def test_stop_sends_the_stop_signal_first(tmp_path: Path) -> None:
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
            "print('armed', flush=True)\n"
            "time.sleep(60)\n")
    proc = start("term", _py(code), tmp_path)
    proc.stop_signal = signal.SIGTERM
    while "armed" not in proc.output():
        assert proc.alive(), proc.output()
        time.sleep(0.02)
    proc.stop()
    assert proc.popen.returncode == 7


def test_stop_kills_a_process_that_ignores_the_signal(tmp_path: Path) -> None:
    code = ("import signal, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "print('armed', flush=True)\n"
            "time.sleep(60)\n")
    proc = start("stubborn", _py(code), tmp_path)
    while "armed" not in proc.output():
        assert proc.alive(), proc.output()
        time.sleep(0.02)
    proc.stop(timeout=0.2)
    assert proc.popen.returncode == -signal.SIGKILL
    proc.stop()  # a second stop of an ended process is a no-op


def test_running_stops_every_process(tmp_path: Path) -> None:
    procs = [start(f"p{i}", _py("import time; time.sleep(60)"), tmp_path) for i in range(2)]
    with running(procs):
        assert all(p.alive() for p in procs)
    assert not any(p.alive() for p in procs)


def test_rss_and_cpu_of_this_process_and_of_a_gone_one(tmp_path: Path) -> None:
    assert rss_of(os.getpid()) > 0
    assert cpu_seconds(os.getpid()) > 0.0
    proc = start("gone", _py("pass"), tmp_path)
    proc.popen.wait(timeout=30)
    assert rss_of(proc.pid) == 0 and proc.rss_bytes() == 0
    assert cpu_seconds(proc.pid) == 0.0
    assert cpu_snapshot({"me": os.getpid(), "gone": proc.pid})["gone"] == 0.0


def test_console_script_finds_the_venv_script_or_says_which_is_missing() -> None:
    assert Path(console_script("cmcp-enclave")).name == "cmcp-enclave"
    with pytest.raises(FileNotFoundError, match="no-such-cmcp-script"):
        console_script("no-such-cmcp-script")


def test_python_module_runs_under_this_interpreter() -> None:
    assert python_module("bench.x", "--a") == [sys.executable, "-m", "bench.x", "--a"]


def test_wait_http_fails_early_when_the_process_exits(tmp_path: Path) -> None:
    proc = start("dead", _py("raise SystemExit(4)"), tmp_path)
    proc.popen.wait(timeout=30)
    with pytest.raises(RuntimeError, match="exited with 4"):
        wait_http(f"http://127.0.0.1:{free_port()}/", timeout=30.0, proc=proc.popen)


def test_wait_http_times_out_naming_the_last_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:  # bound, never listening
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/"
        with pytest.raises(TimeoutError, match=r"did not answer within 0s \(ConnectError"):
            wait_http(url, timeout=0.3)


def test_wait_http_returns_on_a_4xx_answer(tmp_path: Path) -> None:
    port = free_port()
    code = ("import http.server\n"
            "handler = http.server.SimpleHTTPRequestHandler\n"
            f"http.server.HTTPServer(('127.0.0.1', {port}), handler).serve_forever()\n")
    proc = start("http", _py(code), tmp_path, cwd=tmp_path, port=port)
    with running([proc]):
        wait_http(f"http://127.0.0.1:{port}/no-such-file", timeout=30.0, proc=proc.popen)  # 404 < 500


def test_descendants_finds_children_and_grandchildren() -> None:
    outer = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                              "print(p.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert outer.stdout is not None
        grandchild = int(outer.stdout.readline())
        assert set(descendants(os.getpid())) >= {outer.pid, grandchild}
        assert descendants(outer.pid) == [grandchild]
    finally:
        os.kill(grandchild, signal.SIGKILL)
        outer.kill()
        outer.wait()
