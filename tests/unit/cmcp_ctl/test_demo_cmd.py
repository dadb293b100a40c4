"""``cmcpctl demo``: usage errors stop before anything starts, the parser, and the deployment's wiring
(the wiretap between gateway and guard).

The full demo with real processes is ``tests/integration/test_demo.py``; the cluster run is
``tests/e2e/test_demo_cluster.py``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import httpx
import pytest

from cmcp_core.evidence.gpu import gpu_evidence_file
from cmcp_ctl import demo_cmd
from cmcp_ctl.demo_cluster import DEFAULT_NAMESPACE
from cmcp_ctl.demo_story import ROUTE
from cmcp_ctl.main import build_parser
from cmcp_devkit.stack import EnclaveHandle
from tests.paths import ROOT

REPO = ROOT


def test_cluster_flag_without_a_kubeconfig_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--cluster` never falls back to ~/.kube/config: no kubeconfig is a usage error with a next step.
    (The cluster run itself: tests/e2e/test_demo_cluster.py.)"""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    stream = io.StringIO()
    args = demo_cmd.argparse.Namespace(cluster=True, out=None, bundle=None, kubeconfig=None, gpu="none")
    assert demo_cmd.run_demo(args, demo_cmd.Console(stream)) == 2
    assert "no kubeconfig" in stream.getvalue()
    assert "next: run `make demo-cluster`" in stream.getvalue() and "--kubeconfig" in stream.getvalue()


def test_a_gpu_on_the_cluster_demo_is_a_usage_error() -> None:
    stream = io.StringIO()
    args = demo_cmd.argparse.Namespace(cluster=True, out=None, bundle=None, kubeconfig="kc", gpu="simulated")
    assert demo_cmd.run_demo(args, demo_cmd.Console(stream)) == 2
    assert "--gpu is for the local demo only" in stream.getvalue()


def test_the_demo_enclave_runs_with_the_gpu_asked_for(tmp_path: Path) -> None:
    plain = demo_cmd.DemoDeployment(workdir=tmp_path)
    gpu = demo_cmd.DemoDeployment(workdir=tmp_path, gpu="simulated")
    argv = ("b", tmp_path / "i", "127.0.0.1:0", tmp_path / "r")
    assert "--gpu" not in plain.enclave_argv(*argv)  # type: ignore[arg-type]
    assert gpu.enclave_argv(*argv)[-2:] == ["--gpu", "simulated"]  # type: ignore[arg-type]


def test_missing_bundle_is_a_usage_error(tmp_path: Path) -> None:
    stream = io.StringIO()
    args = demo_cmd.argparse.Namespace(cluster=False, out=str(tmp_path / "o"), bundle=str(tmp_path / "none"),
                                         gpu="none")
    assert demo_cmd.run_demo(args, demo_cmd.Console(stream)) == 2
    assert "next:" in stream.getvalue()


def test_invalid_bundle_stops_before_starting_anything(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "examples" / "realistic", bundle)
    (bundle / "policies" / "oops.cedar").write_text(
        "forbid (principal, action, resource) when { context.nope == 1 };\n", encoding="utf-8"
    )
    stream = io.StringIO()
    args = demo_cmd.argparse.Namespace(cluster=False, out=str(tmp_path / "o"), bundle=str(bundle), gpu="none")
    assert demo_cmd.run_demo(args, demo_cmd.Console(stream)) == 2
    assert "validation error" in stream.getvalue()
    assert "next: run `cmcpctl bundle validate" in stream.getvalue()
    assert not list((tmp_path / "o" / "run").glob("*.log")), "a component started on an invalid bundle"



def test_the_parser_defaults_to_a_local_run_on_the_example_bundle() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.cluster, args.bundle, args.out, args.keep, args.gpu) == (False, None, None, False, "none")
    assert build_parser().parse_args(["demo", "--gpu", "simulated"]).gpu == "simulated"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--gpu", "nvidia"])  # the demo has no real GPU to offer
    assert args.namespace == DEFAULT_NAMESPACE and args.func is demo_cmd.run_demo
    cluster = build_parser().parse_args(["demo", "--cluster", "--kubeconfig", "kc", "--namespace", "ns"])
    assert (cluster.cluster, cluster.kubeconfig, cluster.namespace) == (True, "kc", "ns")


def test_a_bundle_folder_without_a_manifest_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bundle" / "policies").mkdir(parents=True)
    stream = io.StringIO()
    argv = ["demo", "--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "o")]
    args = build_parser().parse_args(argv)
    assert demo_cmd.run_demo(args, demo_cmd.Console(stream)) == 2
    assert f"no policy bundle at {(tmp_path / 'bundle').resolve()}" in stream.getvalue()
    assert not (tmp_path / "o").exists(), "the output folder is made only once the bundle is found"


def _handle(address: str, bundle_hash: str) -> EnclaveHandle:
    # gateway_config reads only the address and the ready file's bundle and catalog hashes and mode
    return EnclaveHandle(proc=None, address=address, bundle_dir=Path("b"),  # type: ignore[arg-type]
                         initdata_path=Path("i"),
                         ready={"bundle_hash": bundle_hash, "catalog_hash": "sha256:" + "c" * 64,
                                "enforcement_mode": "enforce"})


def test_gateway_forwards_through_the_wiretap_once_it_runs(tmp_path: Path) -> None:
    deployment = demo_cmd.DemoDeployment(workdir=tmp_path, audience="demo-upstream", agent="demo-agent",
                                         bundle_dir=REPO / "examples" / "realistic")
    deployment.enclaves[ROUTE] = _handle(
        "127.0.0.1:50051", "sha256:" + "a" * 64)
    deployment.upstream_url = "http://127.0.0.1:7001/mcp"
    [direct] = deployment.gateway_config(8080)["routes"]
    assert direct["upstream"] == "http://127.0.0.1:7001/mcp", "no wiretap yet: straight to the guard"
    deployment.tap_base = "http://127.0.0.1:7002"
    [tapped] = deployment.gateway_config(8080)["routes"]
    assert tapped["upstream"] == "http://127.0.0.1:7002/mcp"
    assert {k: v for k, v in tapped.items() if k != "upstream"} == {
        k: v for k, v in direct.items() if k != "upstream"}, "only the hop changes"
    assert tapped["audience"] == "demo-upstream" and tapped["enclaves"] == ["127.0.0.1:50051"]


def test_start_tap_spawns_a_wiretap_in_front_of_the_guard(tmp_path: Path) -> None:
    """One real process: the wiretap, forwarding to the guard's base URL (nothing listens there)."""
    deployment = demo_cmd.DemoDeployment(workdir=tmp_path, bundle_dir=REPO / "examples" / "realistic")
    deployment.upstream_url = "http://127.0.0.1:9/mcp"
    try:
        base = deployment.start_tap()
        [tap] = deployment.procs
        assert base == deployment.tap_base and base.startswith("http://127.0.0.1:")
        assert tap.name == "wiretap"
        assert httpx.get(f"{base}/_tap/permits", timeout=10.0).json() == []
        relayed = httpx.post(f"{base}/mcp", content=b"{}", timeout=10.0)
        assert relayed.status_code == 502 and "upstream unreachable" in relayed.text
    finally:
        deployment.close()
    assert not tap.alive(), "close() stops the wiretap"


def test_the_gateways_copies_must_be_the_enclaves(tmp_path: Path) -> None:
    """The demo checks what its gateway wrote to trust_record_dir: the record, and its GPU evidence."""
    record, envelopes = {"subject": "s"}, (b'{"gpu": 0}',)

    def check(files: dict[str, bytes], evidence: tuple[bytes, ...] = envelopes) -> bool:
        records = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        records.mkdir()
        for name, data in files.items():
            (records / name).write_bytes(data)
        run = demo_cmd.Run(out=tmp_path, session_id="sid", record=record, gpu_evidence=evidence)
        demo_cmd.check_gateway_files(run, records)
        return run.checks[-1][1]

    good = {"sid.json": json.dumps(record).encode(), "sid.gpu-evidence.json": gpu_evidence_file(envelopes)}
    assert check(good)
    assert not check({"sid.json": good["sid.json"]})  # the GPU evidence not written
    assert not check({**good, "sid.gpu-evidence.json": gpu_evidence_file([b'{"gpu": 1}'])})
    assert not check({**good, "sid.json": b'{"subject": "other"}'})
    assert check({"sid.json": good["sid.json"]}, evidence=())  # no GPU: no side file
    assert not check(good, evidence=())  # a side file for a record without GPUs
