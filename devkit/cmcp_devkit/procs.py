"""Launching local processes: start a console script or module with its log, wait until it is ready, stop it.

Every process is tracked by its own PID and stopped by that PID (never by name); servers bind
127.0.0.1 only. The benchmarks, the demo, the conformance launcher and ``cmcpctl dev up`` share
it (with RSS and CPU readings the benchmarks need).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cmcp_devkit.ports import free_port, wait_port

# A helper server announces itself with ``READY <url> [note]`` on stdout once its socket is bound
# (:func:`cmcp_devkit.serving.run_until_stopped`); launchers wait for that line. It lives here, on
# the launcher's side, so launching does not import the server stack (uvicorn, starlette).
READY_PREFIX = "READY "


def ready_url(output: str) -> str | None:
    """The URL of the first ``READY <url>`` line in a helper process's output, if it printed one."""
    for line in output.splitlines():
        if line.startswith(READY_PREFIX):
            return line.split()[1]
    return None


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers any HTTP status below 500."""
    deadline = time.monotonic() + timeout
    last: str = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=1.0)
            if r.status_code < 500:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})")


@dataclass
class Proc:
    """A child process with its stdout and stderr in one log file.

    ``stop_signal``: how :meth:`stop` asks it to end before killing it (the benchmarks interrupt
    their servers; the local stack terminates its components, as a process manager would)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    extra: dict[str, object] = field(default_factory=dict)
    stop_signal: int = signal.SIGINT
    stop_timeout: float = 10.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_bytes(self) -> int:
        """Resident set size of this process (not children), from /proc."""
        return rss_of(self.pid)

    def stop(self, timeout: float | None = None) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout=self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(timeout=5)

    def output(self, limit: int = 4000) -> str:
        """The last ``limit`` characters of its log (the clue to why it did not come up)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def rss_of(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by ``pid`` (0.0 when the process is gone)."""
    if pid == os.getpid():
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def start(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    pythonpath: Sequence[str | Path] = (),
    user: str | None = None,
) -> Proc:
    """Start ``argv`` with stdout+stderr to ``log_dir/name.log`` (``env`` values of None unset).

    ``user``: run as that system user and its group (a server that refuses root, when we are root).

    ``pythonpath`` is prepended to the child's ``PYTHONPATH`` (the benchmarks' ``python -m bench.*``
    children need the repository root)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = dict(os.environ)
    if pythonpath:
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (*map(str, pythonpath), full_env.get("PYTHONPATH", "")) if p
        )
    for key, value in (env or {}).items():  # None unsets
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    fh = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    popen = subprocess.Popen(
        list(argv), stdout=fh, stderr=subprocess.STDOUT, env=full_env,
        cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL, user=user, group=_group_of(user),
    )
    fh.close()
    return Proc(name=name, popen=popen, log_path=log_path, port=port)


def _group_of(user: str | None) -> int | None:
    return None if user is None else pwd.getpwnam(user).pw_gid


def console_script(name: str) -> str:
    """The console script ``name`` next to this interpreter (a venv), else whatever PATH finds."""
    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"console script {name!r} not found; is its distribution installed?")
    return found


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Stop every process in ``procs`` (in reverse order) on exit."""
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.stop()


__all__ = [
    "READY_PREFIX",
    "Proc",
    "console_script",
    "cpu_seconds",
    "cpu_snapshot",
    "free_port",
    "python_module",
    "ready_url",
    "rss_of",
    "running",
    "start",
    "wait_http",
    "wait_port",
]
