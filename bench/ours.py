"""Path (2): our gateway + enclave (simulated TEE) + upstream guard, as local processes.

Topology (all 127.0.0.1)::

    load generator -> cmcp-gateway --lean decide hop--> cmcp-enclave (simulated TDX quote)
                           |
                           +--HTTP + permit--> upstream (same app as direct) + guard middleware

* The bundle is generated: native request model, ``enforce`` mode, one allow-all
  ``permit (principal, action, resource);`` (the same policy text as the origin's
  minimal bundle) and a catalog with the benchmark tool.
* The enclave is started with :mod:`cmcp_devkit.enclave` (the launcher
  measures the initdata into the simulated MRCONFIGID, as an honest node does).
* The guarded upstream is a second :mod:`cmcp_devkit.upstream` (``bench`` profile) process with
  ``--guard-audience``; the guard attests the enclave itself.
* The gateway gets a one-route config (``open: true`` route, so no agent token,
  like the origin in dev mode; ``allow_simulated: true``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cmcp_core.digest import jcs as _jcs
from cmcp_core.digest import tagged_sha256
from cmcp_core.native_schema import native_schema
from cmcp_devkit import procs
from cmcp_devkit.enclave import EnclaveProcess, EnclaveRefused, render_initdata, start_enclave
from cmcp_devkit.release import write_dev_release
from cmcp_devkit.upstream import BENCH_TOOL as TOOL_NAME
from cmcp_devkit.upstream import BENCH_TOOL_DESCRIPTION as TOOL_DESCRIPTION
from cmcp_enclave.simulated import launcher_env

AUDIENCE = "urn:cmcp:bench-upstream"
ROUTE = "bench"

ALLOW_ALL = """// Allow-all, the same policy text as the origin's examples/minimal bundle.
@id("allow-all")
permit (principal, action, resource);
"""

SCHEMA = native_schema({"seq": "Long"})


def write_bundle(root: Path, tool_def: dict[str, Any] | None = None) -> Path:
    """An allow-all bundle in our format cataloguing one tool: ``tool_def`` as the upstream advertises
    it (its name, description and input schema), by default the benchmark tool ``bench_echo``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / "allow-all.cedar").write_text(ALLOW_ALL, encoding="utf-8")
    (root / "schema.cedarschema").write_text(SCHEMA, encoding="utf-8")
    manifest = {"version": "1.0.0", "authored_at": "2026-11-25T00:00:00Z",
                "author_identity": "cmcp-bench", "commit_sha": "bench",
                "enforcement_mode": "enforce", "request_model": "native"}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    default_schema = {"type": "object", "properties": {"seq": {"type": "integer"}}}
    approved = {"description": (tool_def or {}).get("description", TOOL_DESCRIPTION),
                "inputSchema": (tool_def or {}).get("inputSchema", default_schema)}
    entry = {"tool_name": (tool_def or {}).get("name", TOOL_NAME), "server": "bench-upstream",
             "approved_definition": approved,
             "definition_hash": tagged_sha256(_jcs(approved)), "sensitivity_level": "public",
             "compliance_domain": "", "destination": "internal"}
    (root / "catalog.json").write_text(json.dumps([entry], indent=2) + "\n", encoding="utf-8")
    return root


@dataclass
class OursStack:
    enclave: Any  # cmcp_devkit.enclave.EnclaveProcess
    upstream: procs.Proc
    gateway: procs.Proc
    url: str
    bundle_hash: str
    metrics_url: str | None = None
    notes: list[str] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        return {"gateway": self.gateway.pid, "enclave": int(self.enclave.process.pid),
                "guarded-upstream": self.upstream.pid}

    def stop(self) -> None:
        self.gateway.stop()
        self.upstream.stop()
        with contextlib.suppress(Exception):
            self.enclave.stop()


def gateway_available() -> str | None:
    """None if our gateway/enclave can be started, else the reason they cannot."""
    try:  # importing the entry points is the probe, so these stay here
        import cmcp_enclave.main  # noqa: F401
        import cmcp_gateway.main  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _start_enclave_prefixed(bundle: Path, workdir: Path, prefix: list[str], extra_args: tuple[str, ...],
                            timeout: float = 90.0) -> Any:
    """``cmcp_devkit.enclave.start_enclave`` with a command prefix (e.g. a profiler).

    Same initdata, same simulated measurement (``launcher_env``), same ready-file protocol;
    only the interpreter command differs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = render_initdata(bundle, audience=AUDIENCE, route=f"bench/{ROUTE}")
    init_path, ready_path, err_path = (workdir / "initdata.toml", workdir / "ready.json",
                                       workdir / "enclave.log")
    init_path.write_bytes(data)
    env = {**os.environ, **launcher_env(data)}
    cmd = [*prefix, "-m", "cmcp_enclave.main", "--bundle", str(bundle), "--initdata", str(init_path),
           "--tee", "simulated", "--listen", "127.0.0.1:0", "--decide-listen", "127.0.0.1:0",
           "--ready-file", str(ready_path), *extra_args]
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + timeout
    while not ready_path.exists():
        if proc.poll() is not None:
            raise EnclaveRefused(int(proc.returncode), err_path.read_text(errors="replace"))
        if time.monotonic() > deadline:
            proc.kill()
            raise EnclaveRefused(-1, "timed out waiting for the ready file")
        time.sleep(0.05)
    return EnclaveProcess(process=proc, ready=json.loads(ready_path.read_text()), initdata=data,
                          audience=AUDIENCE, workdir=workdir, _stderr_path=err_path)


def start_stack(workdir: Path, log_dir: Path, *, tool_def: dict[str, Any] | None = None,
                enclave_args: tuple[str, ...] = (), gateway_limits: dict[str, Any] | None = None,
                gateway_argv_prefix: list[str] | None = None,
                enclave_argv_prefix: list[str] | None = None, audit_store: str | None = None,
                name: str = "ours", sse: bool = False) -> OursStack:
    """Enclave, guarded upstream and gateway; the gateway's audit trail on ``audit_store``
    (default: a SQLite file in ``workdir``, the product's default); the guarded upstream answers
    in SSE when ``sse``."""
    bundle = write_bundle(workdir / "bundle", tool_def)
    if enclave_argv_prefix:
        enclave = _start_enclave_prefixed(bundle, workdir / "enclave", enclave_argv_prefix, enclave_args)
    else:
        enclave = start_enclave(bundle, workdir / "enclave", audience=AUDIENCE, route=f"bench/{ROUTE}",
                                extra_args=enclave_args, timeout=60)
    try:
        release = write_dev_release(workdir / "release")
        up_port = procs.free_port()
        up = procs.start(f"{name}-upstream", procs.python_module(
            "cmcp_devkit.upstream", "--profile", "bench", "--listen", f"127.0.0.1:{up_port}",
            "--guard-audience", AUDIENCE,
            "--guard-enclave", enclave.address, "--allow-simulated",
            "--expected-bundle-hash", enclave.bundle_hash, *release.argv(), *(["--sse"] if sse else [])),
            log_dir, port=up_port)
        procs.wait_port(up_port, timeout=60, proc=up.popen)
    except Exception:
        enclave.stop()
        raise
    gw_port = procs.free_port()
    metrics_port = procs.free_port()
    cfg = {
        "listen": f"127.0.0.1:{gw_port}",
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "allow_simulated": True,
        "release": release.config(),
        "limits": gateway_limits or {},
        "audit": {"store": audit_store or f"sqlite:{workdir / 'audit.sqlite'}"},
        "routes": [{"name": ROUTE, "upstream": f"http://127.0.0.1:{up_port}/mcp", "audience": AUDIENCE,
                    "enclaves": [enclave.address], "expected_bundle_hashes": [enclave.bundle_hash],
                    "open": True}],
    }
    cfg_path = workdir / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    argv = [*(gateway_argv_prefix or [sys.executable]), "-m", "cmcp_gateway.main", "--config", str(cfg_path)]
    gw = procs.start(f"{name}-gateway", argv, log_dir, port=gw_port)
    try:
        procs.wait_port(gw_port, timeout=60, proc=gw.popen)
    except Exception as exc:
        gw.stop()
        up.stop()
        enclave.stop()
        raise RuntimeError(f"gateway did not start: {exc}\n{gw.log_tail()}") from exc
    return OursStack(enclave=enclave, upstream=up, gateway=gw,
                     url=f"http://127.0.0.1:{gw_port}/mcp/{ROUTE}", bundle_hash=enclave.bundle_hash,
                     metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")


_HISTOGRAMS = ("cmcp_gateway_request_duration_seconds", "cmcp_gateway_decision_duration_seconds",
               "cmcp_gateway_upstream_duration_seconds")


def scrape(metrics_url: str | None) -> dict[str, tuple[float, float]]:
    """``{histogram: (sum_seconds, count)}`` for the gateway's timing histograms ({} if unavailable)."""
    if not metrics_url:
        return {}
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, tuple[float, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in _HISTOGRAMS:
            total = count = 0.0
            for sample in fam.samples:
                if sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = sample.value
            out[fam.name] = (total, count)
    return out


def breakdown(before: dict[str, tuple[float, float]],
              after: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Mean milliseconds per observation of each gateway histogram between two scrapes."""
    out: dict[str, Any] = {}
    for name in _HISTOGRAMS:
        if name in before and name in after:
            ds = after[name][0] - before[name][0]
            dc = after[name][1] - before[name][1]
            short = name.removeprefix("cmcp_gateway_").removesuffix("_duration_seconds")
            out[short] = {"mean_ms": (ds / dc * 1000.0) if dc else None, "count": dc}
    return out
