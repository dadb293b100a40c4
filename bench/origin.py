"""The origin's Phase 1 gateway (PyPI ``cmcp-runtime``), run side by side with ours.

* Installed by the harness into its own virtual environment,
  ``~/.cache/cmcp-bench/origin-venv-<version>`` (keyed by version; reused when
  ``cmcp --version`` already reports that version).
* Run in its dev mode (``CMCP_DEV_MODE=1``: software-only attestation, no
  pinned bundle/catalog hash, no bearer token, loopback only) with
  ``cmcp start --config cmcp-config.yaml``.
* Bundle: the origin's own ``examples/minimal/policies`` (allow-all permit),
  copied from ``/work/shared/fixtures/origin-minimal-bundle`` or our test data.
* Catalog: one entry for the benchmark tool pointing at the shared upstream.
  The origin compares the upstream's advertised definition (``tools/list``)
  with the catalog's ``approved_definition`` and fails closed on drift, so the
  entry is built from what the upstream actually advertises.
* Enforcement mode ``enforcing``; upstream over plain ``http://`` (the origin
  warns that TLS pinning is impossible; we use plain HTTP for every path).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO_ROOT
from cmcp_devkit import procs
from cmcp_devkit.upstream import BENCH_TOOL as TOOL_NAME

ORIGIN_PACKAGE = "cmcp-runtime"
ORIGIN_VERSION = "0.7.1"
CACHE_DIR = Path(os.environ.get("CMCP_BENCH_CACHE", str(Path.home() / ".cache" / "cmcp-bench")))

_BUNDLE_CANDIDATES = (
    Path("/work/shared/fixtures/origin-minimal-bundle"),
    REPO_ROOT.parent / "shared" / "fixtures" / "origin-minimal-bundle",
    REPO_ROOT / "tests" / "data" / "origin-minimal-bundle",
    REPO_ROOT / "examples" / "origin-minimal-bundle",
)
# The origin's placeholder meaning "no TLS pin recorded" (it warns and proceeds).
_PLACEHOLDER_FINGERPRINT = "SHA256:" + "A" * 43 + "="


def venv_dir(version: str = ORIGIN_VERSION) -> Path:
    return CACHE_DIR / f"origin-venv-{version}"


def _venv_python(vdir: Path) -> Path:
    return vdir / "bin" / "python"


def installed_version(vdir: Path) -> str | None:
    py = _venv_python(vdir)
    if not py.exists():
        return None
    out = subprocess.run(
        [str(py), "-c", f"import importlib.metadata as m; print(m.version({ORIGIN_PACKAGE!r}))"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_installed(version: str = ORIGIN_VERSION, log: Any = print) -> Path:
    """Create the origin venv and ``pip install cmcp-runtime==version`` unless already there."""
    vdir = venv_dir(version)
    if installed_version(vdir) == version:
        return vdir
    log(f"installing {ORIGIN_PACKAGE}=={version} into {vdir} ...")
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(vdir)], check=True, timeout=300)
    subprocess.run(
        [str(_venv_python(vdir)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{ORIGIN_PACKAGE}=={version}"],
        check=True, timeout=900,
    )
    got = installed_version(vdir)
    if got != version:
        raise RuntimeError(f"origin venv reports {ORIGIN_PACKAGE} {got!r}, wanted {version}")
    return vdir


def origin_packages(vdir: Path) -> dict[str, str]:
    """``pip freeze``-style versions of the origin venv (for the result file)."""
    out = subprocess.run(
        [str(_venv_python(vdir)), "-c",
         "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version "
         "for d in m.distributions()}))"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if out.returncode != 0:
        return {}
    data: dict[str, str] = json.loads(out.stdout)
    keep = ("cmcp-runtime", "cedarpy", "starlette", "uvicorn", "httpx", "cryptography",
            "pydantic", "agentrust-trace", "rfc8785")
    return {k: v for k, v in sorted(data.items()) if k.lower() in keep}


def find_bundle() -> Path:
    for cand in _BUNDLE_CANDIDATES:
        if (cand / "manifest.json").is_file():
            return cand
    raise FileNotFoundError("origin minimal bundle not found in: "
                            + ", ".join(str(c) for c in _BUNDLE_CANDIDATES))


def advertised_tool(upstream_url: str, tool: str = TOOL_NAME) -> dict[str, Any]:
    """The tool definition the upstream advertises, asked the way the origin asks (2026-07-28)."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "cmcp-bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": "1", "method": "tools/list", "params": {"_meta": meta}}
    resp = httpx.post(upstream_url, json=body, timeout=10, headers={
        "accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list"})
    resp.raise_for_status()
    for t in resp.json()["result"]["tools"]:
        if t["name"] == tool:
            return dict(t)
    raise RuntimeError(f"upstream does not advertise {tool}")


def catalog_entry(upstream_url: str, tool_def: dict[str, Any]) -> dict[str, Any]:
    approved = {
        "description": tool_def.get("description", ""),
        "input_schema": tool_def.get("inputSchema", {}),
        "output_schema": tool_def.get("outputSchema"),
    }
    canonical = json.dumps(approved, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {
        "tool_name": tool_def["name"],
        "server": {
            "display_name": "cmcp-bench upstream",
            "url": upstream_url,
            "tls_fingerprint": _PLACEHOLDER_FINGERPRINT,
            "transport": "streamable-http",
        },
        "approved_definition": approved,
        "definition_hash": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
        "compliance_domain": "external",
        "requires_baa": False,
        "sensitivity_level": "public",
        "added_at": "2026-01-01T00:00:00Z",
        "approved_by": "cmcp-bench",
    }


def prepare_workdir(workdir: Path, upstream_url: str, port: int) -> Path:
    """Write bundle, catalog and config for one origin gateway; returns the config path."""
    workdir.mkdir(parents=True, exist_ok=True)
    pol = workdir / "policies"
    if pol.exists():
        shutil.rmtree(pol)
    shutil.copytree(find_bundle(), pol)
    entry = catalog_entry(upstream_url, advertised_tool(upstream_url))
    (workdir / "catalog.json").write_text(json.dumps([entry], indent=2) + "\n", encoding="utf-8")
    for old in workdir.glob("audit.db*"):
        old.unlink()
    cfg = workdir / "cmcp-config.yaml"
    cfg.write_text(
        "attestation:\n"
        "  provider: software-only\n"
        "  enforcement_mode: enforcing\n"
        "policy_bundle_path: policies\n"
        "catalog_path: catalog.json\n"
        f"listen_addr: 127.0.0.1:{port}\n"
        "audit_db_path: audit.db\n",
        encoding="utf-8",
    )
    return cfg


def start_gateway(vdir: Path, workdir: Path, upstream_url: str, log_dir: Path,
                  *, name: str = "origin-gateway", argv_prefix: list[str] | None = None) -> procs.Proc:
    port = procs.free_port()
    cfg = prepare_workdir(workdir, upstream_url, port)
    cmcp = str(vdir / "bin" / "cmcp")
    argv = [*(argv_prefix or []), cmcp, "start", "--config", cfg.name]
    env: dict[str, str | None] = {"CMCP_DEV_MODE": "1", "PYTHONPATH": None}
    for key in ("CMCP_BEARER_TOKEN", "CMCP_OPERATOR_TOKEN", "CMCP_POLICY_HASH", "CMCP_CATALOG_HASH",
                "CMCP_POLICY_SIGNING_KEY", "VIRTUAL_ENV"):
        env[key] = None
    p = procs.start(name, argv, log_dir, env=env, cwd=workdir, port=port)
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=p.popen)
    except Exception as exc:
        p.stop()
        raise RuntimeError(f"origin gateway did not start: {exc}\n{p.log_tail()}") from exc
    return p
