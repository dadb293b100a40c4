"""Run a command as PID 1 of a fresh PID namespace, as a container runtime does.

``unshare --pid --fork --mount-proc`` makes the command its namespace's init, for which the kernel
drops every signal it has no handler for, also one sent from the host (SIGKILL aside): exactly
what a container's process sees when the kubelet stops it. The test signals the command itself
(its host PID), never the ``unshare`` parent, which ignores SIGTERM while it waits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PID1_LAUNCHER = ("unshare", "--pid", "--fork", "--mount-proc")

needs_pid_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a PID namespace needs root and util-linux's unshare",
)


def init_of(launcher_pid: int, timeout: float = 10.0) -> int:
    """The host PID of the namespace's init: the ``unshare`` process's only child."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children.read_text().split() if children.exists() else []
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise AssertionError(f"unshare ({launcher_pid}) started no child")


@dataclass
class Pid1Process:
    launcher: subprocess.Popen[bytes]  # the unshare parent: its exit status is the init's
    host_pid: int

    def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 30.0) -> int | None:
        """Send ``sig`` to the init and wait at most ``within`` seconds: its exit status, or ``None``
        when it did not stop (then SIGKILL ends it, as the kubelet would)."""
        os.kill(self.host_pid, sig)
        try:
            return self.launcher.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.launcher.poll() is None:
            os.kill(self.host_pid, signal.SIGKILL)  # also ends every other process in the namespace
            self.launcher.wait(timeout=10)


def start_as_pid1(argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Pid1Process:
    with log.open("wb") as err:
        launcher = subprocess.Popen([*PID1_LAUNCHER, *argv], stdout=err, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd)
    return Pid1Process(launcher, init_of(launcher.pid))
