"""The real node: a kubelet v1.35.4 with its own containerd and runc, beside a registered-only node.

A pod of RuntimeClass ``kata-qemu-tdx`` lands on it (the only TDX-labelled node here) and runs
under runc as uid 65532 with a read-only root, which the host sees in /proc; the pod's
``io.katacontainers.*`` annotation reaches the OCI spec (where Kata's shim would read it);
an image imported from an OCI archive runs and ``kubectl logs`` reaches the kubelet. Stopping
the cluster leaves nothing on the host (kube-proxy's chains included), and a crashed run's leftovers
(shims and containers keep running, kube-proxy's rules stay) are removed by ``cluster down``.
"""

from __future__ import annotations

import base64
import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_devkit.cluster import netpol
from cmcp_devkit.cluster.binaries import PAUSE_IMAGE
from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME, LocalCluster
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.cluster.node import (
    BRIDGE,
    FORWARD_GUARD,
    NodePaths,
    host_leftovers,
    missing_prerequisites,
)
from cmcp_devkit.cluster.oci import ImageFile, write_image_archive

from .workloads import wait_pod

_WHY_NOT = missing_prerequisites() or (
    "the real node runs on the local plane only" if os.environ.get("CMCP_E2E_KUBECONFIG") else None
)
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

Obj = dict[str, Any]
INITDATA = base64.b64encode(gzip.compress(b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n')).decode()
ANNOTATIONS = {
    "io.katacontainers.config.hypervisor.cc_init_data": INITDATA,
    "example.com/not-for-kata": "stays out of the OCI spec",
}
HELLO_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("hello from uid %d\n", (int)getuid());
    fflush(stdout);
    for (;;) pause();
}
"""
TIMINGS: dict[str, float] = {}
# host-wide dirs the node's containerd and CNI write into (beside their own dirs)
SHARED_DIRS = (
    Path("/run/containerd/s"),
    Path("/var/lib/cni/results"),
    Path("/var/log/containers"),
    Path("/var/lib/kubelet/device-plugins"),
)


def _shared_entries() -> set[Path]:
    return {p for d in SHARED_DIRS if d.is_dir() for p in d.iterdir()}


def _restricted_pod(name: str, image: str, **meta: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {
            "runtimeClassName": "kata-qemu-tdx",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",  # no registry: images are imported
                    "securityContext": {
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def _running(pod: Obj) -> bool:
    return pod.get("status", {}).get("phase") == "Running"


def _container_id(pod: Obj) -> str:
    cid: str = pod["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("containerd://"), cid
    return cid.split("://", 1)[1]


@pytest.fixture(scope="module")
def before() -> set[Path]:
    return _shared_entries()


@pytest.fixture(scope="module")
def real(before: set[Path]) -> Iterator[LocalCluster]:
    cluster = LocalCluster(real_node=True)  # and the default registered-only plain-node-1
    try:
        cluster.start()
        TIMINGS["cluster_usable_seconds"] = cluster.startup_seconds or 0.0
        TIMINGS["node_ready_seconds"] = cluster.node_ready_seconds or 0.0
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def kube(real: LocalCluster) -> Iterator[Kube]:
    k = Kube.from_kubeconfig(real.kubeconfig)
    yield k
    k.close()


def test_tdx_pod_runs_under_runc_as_65532_with_read_only_root(real: LocalCluster, kube: Kube) -> None:
    assert real.real_node is not None
    t0 = time.monotonic()
    kube.create(
        "/api/v1/namespaces/default/pods",
        _restricted_pod("tdx-pause", PAUSE_IMAGE, annotations=ANNOTATIONS),
    )
    pod = wait_pod(
        kube, "default", "tdx-pause", "to run", _running, timeout=120,
        diag=lambda: real.log_tail("kubelet", "containerd", "kube-scheduler"),
    )
    TIMINGS["pod_running_seconds"] = time.monotonic() - t0
    assert pod["spec"]["nodeName"] == REAL_NODE_NAME  # the only TDX-labelled node; plain-node-1 is not
    ctr = real.real_node.ctr
    cid = _container_id(pod)
    info = ctr.container_info(cid)
    assert info["Runtime"]["Name"] == "io.containerd.runc.v2"
    spec = info["Spec"]
    assert spec["process"]["user"]["uid"] == 65532
    assert spec["root"]["readonly"] is True
    # the host's view of the container's process: uid 65532 (real, effective, saved, fs), read-only /
    pid = ctr.task_pid(cid)
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65532"] * 4
    mountinfo = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root_mount = next(line.split() for line in mountinfo if line.split()[4] == "/")
    assert "ro" in root_mount[5].split(","), root_mount
    assert "kubepods" in Path(f"/proc/{pid}/cgroup").read_text()
    # the kata handler's hook gave the container (and only the TSM) the node's stand-in, at /sys/kernel
    tsm = [line.split() for line in mountinfo if line.split()[4] == "/sys/kernel"]
    assert tsm and tsm[0][3] == f"/{cid}" and " - fuse " in " ".join(tsm[0]), tsm
    # pod_annotations passes io.katacontainers.* (and only those) into the OCI spec
    annotations = spec["annotations"]
    assert annotations["io.katacontainers.config.hypervisor.cc_init_data"] == INITDATA
    assert "example.com/not-for-kata" not in annotations
    assert annotations["io.kubernetes.cri.container-type"] == "container"


def test_imported_image_runs_and_kubectl_logs_reaches_the_kubelet(
    real: LocalCluster, kube: Kube, tmp_path: Path
) -> None:
    (tmp_path / "hello.c").write_text(HELLO_C)
    hello = tmp_path / "hello"
    subprocess.run(["gcc", "-Os", "-static", "-o", str(hello), str(tmp_path / "hello.c")], check=True)
    image = "localhost/cmcp-e2e/hello:1"
    archive = write_image_archive(
        tmp_path / "hello.oci.tar", image, [ImageFile("/hello", hello.read_bytes(), 0o755)],
        entrypoint=["/hello"],
    )
    real.import_image(archive)
    kube.create("/api/v1/namespaces/default/pods", _restricted_pod("hello", image))
    wait_pod(
        kube, "default", "hello", "to run", _running, timeout=120,
        diag=lambda: real.log_tail("kubelet", "containerd"),
    )
    logs = kube.wait_for(
        "kubectl logs hello",
        lambda: (out := real.kubectl("logs", "hello", check=False).stdout) and out,
        timeout=30,
    )
    assert logs.strip() == "hello from uid 65532"


def test_stop_leaves_nothing_on_the_host(real: LocalCluster, before: set[Path]) -> None:
    running = host_leftovers()
    assert any(x.startswith("shim socket") for x in running), running
    # kube-proxy's Service chains and the bridge's FORWARD guard are there while the node runs
    proxy_chains = {"iptables -t nat chain KUBE-SERVICES", f"iptables -t filter chain {FORWARD_GUARD}"}
    assert proxy_chains <= set(running), running
    real.stop()
    assert host_leftovers() == []
    assert _shared_entries() - before == set(), "no shim socket, CNI result or log link of the node is left"
    chains = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert "KUBE-" not in chains and FORWARD_GUARD not in chains
    assert not list(Path("/sys/fs/cgroup").glob("*/kubepods"))
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    paths = NodePaths()
    assert str(paths.data) not in Path("/proc/self/mountinfo").read_text()
    print(f"\nreal node timings: {', '.join(f'{k}={v:.1f}' for k, v in TIMINGS.items())}")


CRASHING_OWNER = textwrap.dedent(
    """
    import sys, time
    from cmcp_devkit.cluster.binaries import PAUSE_IMAGE
    from cmcp_devkit.cluster.control_plane import LocalCluster
    from cmcp_devkit.cluster.kube import Kube
    c = LocalCluster(nodes=[], real_node=True, network_policy=sys.argv[2] == "1",
                     state_dir=__import__("pathlib").Path(sys.argv[1]))
    c.start()
    k = Kube.from_kubeconfig(c.kubeconfig)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}]}}
    k.create("/api/v1/namespaces/default/pods", pod)
    k.wait_for("pod running", lambda: k.get("/api/v1/namespaces/default/pods/p")["status"].get("phase")
               == "Running", timeout=120)
    print("running", flush=True)
    time.sleep(600)
    """
)


def test_down_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    """Also the NetworkPolicy engine's packet steering (when this host can run the engine): the engine
    dies with its owner (PDEATHSIG) and leaves the chain that drops new pod connections."""
    before = _shared_entries()
    with_engine = netpol.missing_prerequisites() is None
    owner = subprocess.Popen(
        [sys.executable, "-c", CRASHING_OWNER, str(tmp_path / "state"), "1" if with_engine else "0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "running"
    finally:
        os.killpg(owner.pid, signal.SIGKILL)  # no stop(): only PDEATHSIG takes kubelet and containerd
        owner.wait()
    left = host_leftovers()
    assert any("in kubepods" in x for x in left), f"the shim's containers outlive their owner: {left}"
    assert any(x.startswith("mount ") for x in left)
    assert "iptables -t nat chain KUBE-SERVICES" in left, "kube-proxy's rules outlive it"
    assert f"mount {NodePaths().tsm_mount}" in left  # the stand-in died with its owner: its FUSE mount stays
    if with_engine:
        assert f"iptables -t mangle chain {netpol.STEERING_CHAIN}" in left, left
    # a cache root of its own: `down` must not stop a cluster someone else has `up` on this machine
    env = {**os.environ, "CMCP_E2E_CACHE": str(tmp_path / "cache")}
    down = subprocess.run(
        [sys.executable, "-m", "cmcp_devkit.cluster", "down"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert down.returncode == 0, down.stderr
    assert host_leftovers() == []
    assert not netpol.steering_present() and not netpol.table_present()
    assert _shared_entries() - before == set()
    assert "KUBE-" not in subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
