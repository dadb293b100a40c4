"""SIGTERM and SIGINT end a console script with 0 before its serving loop takes over, also as
PID 1, where the kernel drops a signal the process has no handler for."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmcp_core.stop_signals import GRACE_SECONDS, STOP_SIGNALS, exit_on_stop_signals
from tests.helpers.pid1 import needs_pid_namespaces, start_as_pid1


@pytest.fixture
def restored() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_a_stop_signal_exits_with_0(sig: signal.Signals, restored: None) -> None:
    exit_on_stop_signals()
    with pytest.raises(SystemExit) as stopped:
        signal.raise_signal(sig)
    assert stopped.value.code == 0


def test_the_grace_ends_before_the_kubelets_default_sigkill() -> None:
    assert 0 < GRACE_SECONDS < 30  # terminationGracePeriodSeconds' default


WAITS = "import time; print('up', flush=True); time.sleep(600)"


@needs_pid_namespaces
@pytest.mark.parametrize(("installs", "stops"), [(True, True), (False, False)])
def test_as_pid1_only_a_process_with_the_handlers_stops(installs: bool, stops: bool, tmp_path: Path) -> None:
    """The weakened variant (no handlers) keeps running as PID 1 until the bounded wait gives up."""
    code = ("from cmcp_core.stop_signals import exit_on_stop_signals; exit_on_stop_signals(); " if installs
            else "") + WAITS
    log = tmp_path / "out.log"
    proc = start_as_pid1([sys.executable, "-c", code], log=log)
    while "up" not in log.read_text():
        assert proc.launcher.poll() is None, log.read_text()
    assert proc.stop(within=10.0) == (0 if stops else None)


def test_outside_a_pid_namespace_the_default_already_kills() -> None:
    """Why PID 1 is the case to test: an ordinary process dies of SIGTERM without any handler."""
    proc = subprocess.Popen([sys.executable, "-c", WAITS], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.terminate()
    assert proc.wait(timeout=10) == -signal.SIGTERM
