"""Path: our product as it was when issue 16 set its latency target, measured in the same run.

Issue 16 asks that the durable audit trail keep our added p50 "at or below today's 2.3 ms". That
figure (``docs/benchmarks.md`` at :data:`BASELINE_REV`, direct p50 1.556 ms) is a reading of one
machine on one day; the machines this harness runs on have since measured the same direct call
anywhere from 1.14 to 2.85 ms, and our added latency moves with them. So a full run also starts
the product of that commit (no durable trail, gRPC decide stream) and measures it beside today's:
the target holds when today's added p50 is at or below the baseline's in the same run (ADR 0032).

The baseline's code is the commit's own tree, unpacked once with ``git archive`` under
``~/.cache/cmcp-bench/baseline-<rev>`` and run with today's interpreter and packages (its
distributions' pins are the same or older). Its own ``bench.ours.start_stack`` starts its enclave,
guarded upstream and gateway from a launcher process whose ``PYTHONPATH`` is that tree only, so
nothing of today's code runs on that path; the launcher reports the stack's URL and PIDs in a
file and stops the stack when interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Skip
from bench.origin import CACHE_DIR
from cmcp_devkit import procs

#: the commit whose benchmark page set issue 16's target (added p50 2.269 ms, direct 1.556 ms)
BASELINE_REV = "5c14bc26f5f438cfe1eed841b63b590cf64a567c"
BASELINE_ADDED_P50_MS = 2.269
BASELINE_DIRECT_P50_MS = 1.556
# where that tree keeps its packages (the commit's workspace layout)
_PACKAGE_DIRS = ("core", "enclave_pod", "gateway", "guard", "operator", "cmcpctl", "conformance")
_READY_SECONDS = 120.0

# Runs in the baseline's tree, on its own code only: start its stack, say where it is, wait until
# told to stop. Its own handlers: a process started in the background by a shell inherits SIGINT
# ignored, and Python then raises no KeyboardInterrupt, so the stack would outlive a killed launcher.
_LAUNCHER = """
import json, signal, sys
from pathlib import Path
from bench import ours

def stop(signum, frame):
    raise SystemExit(0)

work, logs, ready = map(Path, sys.argv[1:4])
stack = ours.start_stack(work, logs)
try:
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    ready.with_suffix(".part").write_text(json.dumps({"url": stack.url, "pids": stack.pids()}))
    ready.with_suffix(".part").rename(ready)
    while True:
        signal.pause()
finally:
    stack.stop()
"""


@dataclass
class BaselineStack:
    """The baseline's stack, held by its launcher process."""

    launcher: procs.Proc
    url: str
    pids: dict[str, int]
    rev: str

    def stop(self) -> None:
        self.launcher.stop()


def full_rev() -> str:
    """The baseline commit's full id; ``Skip`` where this clone does not have it (shallow)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{BASELINE_REV}^{{commit}}"],
            capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Skip(f"git is not usable here ({exc})") from exc
    if out.returncode != 0:
        raise Skip(f"commit {BASELINE_REV} is not in this clone (a shallow clone has no history): "
                   f"{out.stderr.strip()}")
    return out.stdout.strip()


def ensure_tree(rev: str, log: Any = print) -> Path:
    """The baseline's source tree, unpacked once per commit under the bench cache."""
    tree = CACHE_DIR / f"baseline-{rev[:12]}"
    if (tree / ".complete").exists():
        return tree
    log(f"   unpacking baseline {rev[:12]} into {tree}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="baseline-", dir=CACHE_DIR))
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", rev],
                       stdout=archive, check=True, timeout=120)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(staging, filter="data")
    (staging / ".complete").write_text(rev + "\n", encoding="utf-8")
    if tree.exists():  # an unfinished earlier attempt
        shutil.rmtree(tree)
    staging.rename(tree)
    return tree


def start(workdir: Path, log_dir: Path, log: Any = print) -> BaselineStack:
    """Start the baseline's stack and return once it serves."""
    rev = full_rev()
    tree = ensure_tree(rev, log)
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    pythonpath = os.pathsep.join(str(tree / d) for d in _PACKAGE_DIRS)
    argv = [sys.executable, "-c", _LAUNCHER, str(workdir), str(log_dir / "baseline"), str(ready)]
    launcher = procs.start("baseline", argv, log_dir, cwd=tree, env={"PYTHONPATH": pythonpath})
    launcher.stop_timeout = 30.0
    deadline = time.monotonic() + _READY_SECONDS
    while not ready.exists():
        if not launcher.alive() or time.monotonic() > deadline:
            launcher.stop()
            raise RuntimeError(f"the baseline stack did not start:\n{launcher.log_tail()}")
        time.sleep(0.2)
    info = json.loads(ready.read_text(encoding="utf-8"))
    return BaselineStack(launcher, info["url"], {k: int(v) for k, v in info["pids"].items()}, rev)
