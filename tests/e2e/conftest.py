"""Session fixtures for the e2e suite: one real control plane per pytest session.

``cluster`` starts the local plane (cluster.LocalCluster) once, with the real node (a kubelet,
containerd and runc: the only node that runs pods, labelled TDX and SNP) and one registered-only
node (no kubelet, tainted NoSchedule; for scheduling tests). Images are built in the run
(``cmcp_devkit.images``, cached while their sources are unchanged) and imported into the real node's
containerd; every pod is a real container. ``cluster.real_pods`` (a node selector) pins a pod to the
real node by name. When ``CMCP_E2E_KUBECONFIG`` names a
kubeconfig, that cluster is used as is (e.g. kind) and the local-only tests skip. ``namespace``
gives every test its own namespace, deleted afterwards, so tests do not see each other's objects.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml

from cmcp_devkit import images as image_builds
from cmcp_devkit.cluster import real_node_values
from cmcp_devkit.cluster.binaries import ensure_client_tools
from cmcp_devkit.cluster.control_plane import (
    REAL_NODE_NAME,
    REAL_NODE_PLACEMENT,
    REGISTERED_NODES,
    LocalCluster,
    run_tool,
)
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.release import DevRelease, write_dev_release
from cmcp_operator.config import DEFAULT_IMAGE

_STARTUP: dict[str, float] = {}


@dataclass
class E2ECluster:
    """What a test needs from the cluster under test, local or real."""

    kubeconfig: Path
    kube: Kube
    kubectl_bin: Path
    helm_bin: Path
    local: LocalCluster | None = None
    # image name (enclave, gateway, guard, operator, test-http-echo) -> what the node holds
    images: dict[str, image_builds.Built] = field(default_factory=dict)
    _ca_file: Path | None = field(default=None, repr=False)

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def real_pods(self) -> dict[str, Any]:
        """Pod spec fields that put a pod on the local plane's real node (none on another cluster)."""
        return copy.deepcopy(REAL_NODE_PLACEMENT) if self.local is not None else {}

    @property
    def enclave_image(self) -> str:
        """The enclave image this run built, by digest, as the real node's containerd holds it."""
        return f"localhost/cmcp-enclave@{self.images['enclave'].digest}"

    def real_chart_values(self, tdx_runtime_class: str) -> dict[str, Any]:
        """Helm values that run the chart's pods as real containers on the real node, from this run's
        images by digest, the enclave pods through ``tdx_runtime_class``
        (:meth:`real_tdx_runtime_class`): :func:`cmcp_devkit.cluster.real_node_values.chart_values`,
        what ``make demo-cluster`` installs too."""
        return real_node_values.chart_values(self.images, tdx_runtime_class)

    @contextlib.contextmanager
    def real_tdx_runtime_class(self, name: str) -> Iterator[str]:
        """A RuntimeClass ``name`` of the ``kata-qemu-tdx`` handler scheduled onto the real node
        (its ``scheduling`` adds the node selector to every pod that names it)."""
        self.kube.create("/apis/node.k8s.io/v1/runtimeclasses", {
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name},
            "handler": "kata-qemu-tdx", "scheduling": REAL_NODE_PLACEMENT,
        })
        try:
            yield name
        finally:
            self.kube.delete(f"/apis/node.k8s.io/v1/runtimeclasses/{name}")

    @contextlib.contextmanager
    def real_node_extended_resource(self, resource: str, count: int) -> Iterator[str]:
        """The real node advertises ``count`` of the node-level extended resource ``resource`` (e.g.
        ``nvidia.com/pgpu``, what a GPU device plugin would publish) as Kubernetes documents it: a
        JSON patch of the Node's ``status.capacity``; the kubelet mirrors it into allocatable and
        admits pods that request it (no device plugin manages it, so nothing is attached)."""
        if self.local is None:
            raise RuntimeError("only the local plane's real node can be given an extended resource")
        path = f"/api/v1/nodes/{REAL_NODE_NAME}/status"
        key = resource.replace("~", "~0").replace("/", "~1")
        self.kube.patch(path, [{"op": "add", "path": f"/status/capacity/{key}", "value": str(count)}],
                        kind="json")

        def allocatable() -> bool:
            node = self.kube.get(f"/api/v1/nodes/{REAL_NODE_NAME}")
            return bool((node["status"].get("allocatable") or {}).get(resource) == str(count))

        self.kube.wait_for(f"{resource} allocatable on {REAL_NODE_NAME}", allocatable, timeout=60,
                           on_timeout=self.diagnostics)
        try:
            yield resource
        finally:
            node = self.kube.get(f"/api/v1/nodes/{REAL_NODE_NAME}")["status"]
            ops = [{"op": "remove", "path": f"/status/{field}/{key}"}
                   for field in ("capacity", "allocatable") if resource in (node.get(field) or {})]
            if ops:
                self.kube.patch(path, ops, kind="json")

    def real_operator_flags(self, tdx_runtime_class: str, release: DevRelease) -> list[str]:
        """``cmcp-operator`` flags (beside scope and peering) for an operator whose ``tee: tdx`` enclave
        pods run on the real node: this run's enclave image by digest, through ``tdx_runtime_class``
        (:meth:`real_tdx_runtime_class`), with the enclave's real ``tdx`` provider (the node's TSM
        stand-in serves its evidence, ADR 0019); that evidence is software-only, so
        ``--allow-simulated`` stays, and ``release`` (the ``real_release`` fixture) pins that image."""
        return ["--allow-simulated", "--enclave-image", self.enclave_image,
                "--runtime-class-tdx", tdx_runtime_class, *release.argv()]

    def assert_real_enclave(self, pod: dict[str, Any], runtime_class: str) -> None:
        """``pod`` is a real container of this run's enclave image on the real node, under
        ``runtime_class``, running the real ``tdx`` provider (``--tee tdx``)."""
        assert (pod["spec"]["nodeName"], pod["spec"]["runtimeClassName"]) == (REAL_NODE_NAME, runtime_class)
        [container] = pod["spec"]["containers"]
        assert container["image"] == self.enclave_image
        assert container["args"][container["args"].index("--tee") + 1] == "tdx"
        assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")

    @property
    def server(self) -> str:
        return self.kube.server

    @property
    def ca_file(self) -> Path:
        """The apiserver CA as a file (for clients that act as a ServiceAccount)."""
        if self.local is not None:
            return self.local.ca_file
        if self._ca_file is None:
            import base64
            import tempfile

            doc = yaml.safe_load(self.kubeconfig.read_text())
            ctx = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
            cl = next(c for c in doc["clusters"] if c["name"] == ctx["cluster"])["cluster"]
            if "certificate-authority" in cl:
                self._ca_file = Path(cl["certificate-authority"])
            else:
                fd, name = tempfile.mkstemp(suffix=".crt")
                os.write(fd, base64.b64decode(cl["certificate-authority-data"]))
                os.close(fd)
                self._ca_file = Path(name)
        return self._ca_file

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(self.kubectl_bin, self.kubeconfig, args, check=check, input=input)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_tool(self.helm_bin, self.kubeconfig, args, check=check)

    def diagnostics(self) -> str:
        """Last lines of the control-plane logs (local) for a failure message."""
        if self.local is None:
            return ""
        return self.local.log_tail(
            "kube-scheduler", "kube-controller-manager", "kubelet", REGISTERED_NODES, "kube-apiserver"
        )

    def node_names(self, **labels: str) -> set[str]:
        sel = ",".join(f"{k}={v}" for k, v in labels.items())
        items = (
            self.kube.get("/api/v1/nodes", labelSelector=sel)["items"]
            if sel
            else self.kube.get("/api/v1/nodes")["items"]
        )
        return {n["metadata"]["name"] for n in items}


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


_BUILT: dict[str, image_builds.Built] = {}


def _session_images() -> dict[str, image_builds.Built]:
    """The images of this checkout, built (or found cached) once per session."""
    if not _BUILT:
        t0 = time.monotonic()
        _BUILT.update(image_builds.ensure_cluster_images())  # one build per set of sources
        _STARTUP["images_seconds"] = time.monotonic() - t0
    return _BUILT


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the images before the first test, outside every test's timeout: a cold build takes
    minutes on a busy 2-core machine (a warm session finds them cached at once)."""
    if os.environ.get("CMCP_E2E_KUBECONFIG") or session.config.option.collectonly:
        return
    if any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        _session_images()


@pytest.fixture(scope="session")
def cluster() -> Iterator[E2ECluster]:
    """The cluster under test; the local one is stopped at session end, on failure and on SIGTERM."""
    kubectl, helm = ensure_client_tools()
    external = os.environ.get("CMCP_E2E_KUBECONFIG")
    if external:
        kube = Kube.from_kubeconfig(external)
        yield E2ECluster(Path(external), kube, kubectl, helm)
        kube.close()
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)  # unwind so finalisers stop every process
    built = _session_images()
    local = LocalCluster(real_node=True)
    try:
        local.start()
        _STARTUP["cold_start_seconds"] = local.startup_seconds or 0.0
        t0 = time.monotonic()
        for image in built.values():
            local.import_image(Path(image.archive))
        _STARTUP["import_seconds"] = time.monotonic() - t0
        kube = Kube.from_kubeconfig(local.kubeconfig)
        try:
            yield E2ECluster(local.kubeconfig, kube, kubectl, helm, local, built)
        finally:
            kube.close()
    finally:
        local.stop()


@pytest.fixture(scope="session")
def dev_release(tmp_path_factory: pytest.TempPathFactory) -> DevRelease:
    """The signed dev release every relying party in the suite is configured with: the genuine
    simulated guest (what ``cmcp_enclave.simulated.launcher_env`` measures for host-process enclaves)
    and the operator's enclave image (the chart's default too). Without it the operator, gateway and
    guard refuse to start."""
    return write_dev_release(tmp_path_factory.mktemp("release"), image=DEFAULT_IMAGE)


@pytest.fixture(scope="session")
def real_release(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> DevRelease:
    """The dev release naming the enclave image this run built, by digest: what the operator and
    gateway of a chart on the real node pin (:meth:`E2ECluster.real_chart_values`)."""
    if not cluster.is_local:
        pytest.skip("the images are built and imported on the local plane only")
    return write_dev_release(tmp_path_factory.mktemp("real-release"), image=cluster.enclave_image)


def release_values(release: DevRelease) -> list[str]:
    """helm flags putting ``release`` into the chart's ``release.manifests``/``release.keys``."""
    return ["--set-file", f"release.manifests.dev={release.manifest}",
            "--set-file", f"release.keys.dev={release.key}"]


@pytest.fixture
def namespace(cluster: E2ECluster) -> Iterator[str]:
    """A fresh namespace for one test; deleted (not awaited) afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    cluster.kube.wait_for(
        f"default ServiceAccount in {name}",
        lambda: cluster.kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=60,
    )
    yield name
    cluster.kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def local_cluster(cluster: E2ECluster) -> E2ECluster:
    """The cluster, only when it is the local plane (real node, images built in the run, pod IPs
    reachable from this process); otherwise skip."""
    if not cluster.is_local:
        pytest.skip("needs the local plane (CMCP_E2E_KUBECONFIG targets a real cluster)")
    return cluster


# Tests that start (and stop) a real node of their own: one real node per machine, and the session
# cluster holds it until the session ends, so they run before anything starts the session cluster.
OWN_REAL_NODE = (
    "test_cluster_real_node.py",
    "test_tsm_standin_real_node.py",
    "test_cluster_network_policy.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here or here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: Path(str(item.fspath)).name not in OWN_REAL_NODE)  # stable: order kept


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "cold_start_seconds" in _STARTUP:
        terminalreporter.write_line(
            f"cmcp e2e: images ready after {_STARTUP['images_seconds']:.1f}s (built or cached), local "
            f"control plane with the real node usable after {_STARTUP['cold_start_seconds']:.1f}s "
            f"(cached binaries), images imported in {_STARTUP.get('import_seconds', 0.0):.1f}s"
        )
