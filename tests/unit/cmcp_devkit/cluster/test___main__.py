"""``python -m cmcp_devkit.cluster``: the module entry point is the control plane's CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CMCP_E2E_CACHE": str(tmp_path / "cache")}  # no cluster recorded there
    return subprocess.run([sys.executable, "-m", "cmcp_devkit.cluster", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_unknown_command_exits_2_with_usage(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--frobnicate")
    assert proc.returncode == 2
    assert "usage: python -m cmcp_devkit.cluster up [--real-node]|down|kubeconfig|status|import-image" in (
        proc.stderr
    )


def test_status_without_a_cluster_says_down(tmp_path: Path) -> None:
    proc = _run(tmp_path, "status")
    assert (proc.returncode, proc.stdout.strip()) == (1, "down")
    kubeconfig = _run(tmp_path, "kubeconfig")
    assert kubeconfig.returncode == 1 and "no cluster up" in kubeconfig.stderr
