"""Gateway + enclave overhead over a direct upstream call, and throughput at 16 concurrent clients.

Everything runs as real processes on loopback: the enclave (simulated TEE, examples/minimal),
the guarded upstream and an unguarded twin (:mod:`cmcp_devkit.upstream`, ``test`` profile), and
``cmcp-gateway``.
The load generator speaks raw stateless MCP (2026-07-28) JSON-RPC over one pooled httpx client
per worker, identical for both targets, so the difference is what the gateway path adds:
auth, limits, Decide over gRPC + signature check, the permit check in the guard, Complete.

    python bench/gateway.py [--calls 2000] [--concurrency 16] [--out bench/results/gateway.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_json  # noqa: E402
from cmcp_devkit.enclave import EnclaveProcess, start_enclave  # noqa: E402
from cmcp_devkit.ports import free_port  # noqa: E402
from cmcp_devkit.release import DevRelease, write_dev_release  # noqa: E402

AUDIENCE = "urn:cmcp:bench-upstream"
TOKEN = "bench-token"
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "echo",
}


def body(i: int) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": f"hello {i}"}, "_meta": META},
        }
    ).encode()


def start_upstream(
    port: int, guard_enclave: EnclaveProcess | None, log: Path, release: DevRelease | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "cmcp_devkit.upstream", "--listen", f"127.0.0.1:{port}"]
    if guard_enclave is not None and release is not None:
        cmd += ["--guard-audience", AUDIENCE, "--guard-enclave", guard_enclave.address, "--allow-simulated",
                "--expected-bundle-hash", guard_enclave.bundle_hash, *release.argv()]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        raise RuntimeError(f"upstream did not start: {line!r} {log.read_text()[-2000:]}")
    return proc


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sequential(url: str, headers: dict[str, str], calls: int, warmup: int) -> list[float]:
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as client:
        for i in range(warmup):
            (await client.post(url, content=body(i))).raise_for_status()
        out: list[float] = []
        for i in range(calls):
            payload = body(i)
            t0 = time.perf_counter()
            resp = await client.post(url, content=payload)
            out.append(time.perf_counter() - t0)
            if resp.status_code != 200 or "result" not in resp.json():
                raise RuntimeError(f"call failed: {resp.status_code} {resp.text[:300]}")
        return out


async def throughput(url: str, headers: dict[str, str], concurrency: int, calls: int) -> dict[str, float]:
    counter = iter(range(calls))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        async with httpx.AsyncClient(headers=headers, timeout=60.0) as client:
            for i in counter:
                resp = await client.post(url, content=body(i))
                if resp.status_code != 200 or "result" not in resp.json():
                    errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "calls": calls,
        "seconds": round(elapsed, 3),
        "calls_per_second": round(calls / elapsed, 1),
        "errors": errors,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc): a load-independent view of who pays."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 0.50), 3),
        "p90_ms": round(pct(ms, 0.90), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    procs: list[Any] = []
    try:
        enclave = start_enclave(ROOT / "examples/minimal", work / "enclave", audience=AUDIENCE)
        procs.append(enclave)
        guarded_port, direct_port, gw_port = free_port(), free_port(), free_port()
        release = write_dev_release(work / "release")
        guarded = start_upstream(guarded_port, enclave, work / "guarded.log", release)
        direct_up = start_upstream(direct_port, None, work / "direct.log")
        procs += [guarded, direct_up]
        (work / "tokens.yaml").write_text(f"{TOKEN}: bench-agent\n")
        (work / "gateway.yaml").write_text(
            json.dumps(
                {
                    "listen": f"127.0.0.1:{gw_port}",
                    "state_dir": str(work / "state"),  # the audit store: this run's own
                    "allow_simulated": True,
                    "release": release.config(),
                    "auth": {"tokens_file": str(work / "tokens.yaml")},
                    "limits": {"max_concurrent_per_agent": 1024},
                    "routes": [
                        {
                            "name": "bench",
                            "upstream": f"http://127.0.0.1:{guarded_port}/mcp",
                            "audience": AUDIENCE,
                            "enclaves": [enclave.address],
                            "expected_bundle_hashes": [enclave.bundle_hash],
                        }
                    ],
                }
            )
        )
        gw_log = (work / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cmcp_gateway.main",
                "--config",
                str(work / "gateway.yaml"),
                "--log-level",
                args.log_level,
            ],
            cwd=ROOT,
            stderr=gw_log,
        )
        procs.append(gateway)
        gw_url = f"http://127.0.0.1:{gw_port}/mcp"
        wait_http(gw_url)
        direct_url = f"http://127.0.0.1:{direct_port}/mcp"
        gw_headers = {**HEADERS, "authorization": f"Bearer {TOKEN}"}

        # interleave the two targets in rounds so drift on a shared machine hits both alike
        async def measure() -> tuple[list[float], list[float], dict[str, float], dict[str, float]]:
            direct: list[float] = []
            through: list[float] = []
            rounds = 4
            for _ in range(rounds):
                direct += await sequential(direct_url, HEADERS, args.calls // rounds, args.warmup // rounds)
                through += await sequential(gw_url, gw_headers, args.calls // rounds, args.warmup // rounds)
            pids = {
                "gateway": gateway.pid,
                "enclave": enclave.process.pid,
                "guarded_upstream": guarded.pid,
                "direct_upstream": direct_up.pid,
            }
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            tp_d = await throughput(direct_url, HEADERS, args.concurrency, args.tp_calls)
            middle = {k: cpu_seconds(p) for k, p in pids.items()}
            tp_g = await throughput(gw_url, gw_headers, args.concurrency, args.tp_calls)
            after = {k: cpu_seconds(p) for k, p in pids.items()}
            per_call = 1000 / args.tp_calls
            tp_d["cpu_ms_per_call"] = {
                "direct_upstream": round(
                    (middle["direct_upstream"] - before["direct_upstream"]) * per_call, 3
                )
            }
            tp_g["cpu_ms_per_call"] = {
                k: round((after[k] - middle[k]) * per_call, 3)
                for k in ("gateway", "enclave", "guarded_upstream")
            }
            return direct, through, tp_d, tp_g

        direct, through, tp_direct, tp_gateway = asyncio.run(measure())
        d, g = summary(direct), summary(through)
        return {
            "benchmark": "gateway",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other sessions share the box
            },
            "setup": {
                "bundle": "examples/minimal",
                "tool": "echo",
                "protocol": "2026-07-28 (stateless)",
                "gateway_log_level": args.log_level,
                "processes": "enclave, gateway, guarded upstream, "
                "direct upstream, load generator: all separate, loopback",
            },
            "sequential": {
                "direct": d,
                "gateway": g,
                "overhead_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3),
                "overhead_p99_ms": round(g["p99_ms"] - d["p99_ms"], 3),
                "targets": {"overhead_p50_ms": 1.0, "overhead_p99_ms": 3.0},
            },
            "throughput": {
                "concurrency": args.concurrency,
                "direct": tp_direct,
                "gateway": tp_gateway,
                "gateway_over_direct": round(
                    tp_gateway["calls_per_second"] / tp_direct["calls_per_second"], 3
                ),
            },
        }
    finally:
        for proc in reversed(procs):
            if hasattr(proc, "stop"):
                proc.stop()
            else:
                proc.terminate()
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tp-calls", type=int, default=3000)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--out", default=str(ROOT / "bench/results/gateway.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
