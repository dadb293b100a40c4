"""Shared benchmark helpers: summary statistics, machine description, JSON output.

Used by the harness (``python -m bench run``) and by the per-component
benchmarks (``bench/enclave.py``, ``bench/gateway.py``, ...).  Nothing here
asserts a threshold: numbers are reported, never judged in CI.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


class Skip(Exception):
    """A section of the run that cannot be measured here; the reason goes into the results.

    It lives here, not in the harness, so a section module (e.g. :mod:`bench.operator_time`) can
    raise it without importing the harness that imports it."""


#: Packages whose versions go into every result file.
TRACKED_PACKAGES: tuple[str, ...] = (
    "cmcp-k8s",
    "mcp",
    "httpx",
    "uvicorn",
    "starlette",
    "cedarpy",
    "grpcio",
    "protobuf",
    "cryptography",
    "rfc8785",
    "matplotlib",
    "pyinstrument",
    "orjson",
    "sniffio",
    "httptools",
    "uvloop",
)


def summarize(samples: Sequence[float], unit: str = "ms") -> dict[str, Any]:
    """Count, mean, min, p50, p95, p99 and max of ``samples``.

    Percentiles use ``statistics.quantiles(..., method="inclusive")`` (linear
    interpolation between closest ranks, like numpy's default).  With fewer than
    two samples every percentile is the single value (or ``None`` when empty).
    """
    n = len(samples)
    if n == 0:
        return {"n": 0, "unit": unit, "mean": None, "min": None, "p50": None, "p95": None,
                "p99": None, "max": None}
    if n == 1:
        v = float(samples[0])
        return {"n": 1, "unit": unit, "mean": v, "min": v, "p50": v, "p95": v, "p99": v, "max": v}
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "n": n,
        "unit": unit,
        "mean": statistics.fmean(samples),
        "min": float(min(samples)),
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
        "max": float(max(samples)),
    }


def percentile(samples: Sequence[float], pct: float) -> float:
    """One percentile (0 < pct < 100) with the same method as :func:`summarize`."""
    if len(samples) == 1:
        return float(samples[0])
    q = statistics.quantiles(samples, n=1000, method="inclusive")
    idx = min(max(round(pct * 10) - 1, 0), len(q) - 1)
    return q[idx]


def _read_first(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_description() -> dict[str, Any]:
    """CPU model, cores, memory, kernel, Python, load and package versions."""
    mem_kib = _read_first("/proc/meminfo", "MemTotal")
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_model": _read_first("/proc/cpuinfo", "model name") or platform.processor() or None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total": mem_kib,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "loadavg_at_start": load,
        "git_revision": _git_revision(),
        "packages": package_versions(),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (atomic rename), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
