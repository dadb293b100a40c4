"""Operator figure: time from ``kubectl apply`` of an ``McpRoute`` to attested and routed.

Runs on the project's local cluster with its real node (``cmcp_devkit.cluster``: real etcd,
kube-apiserver, controller-manager and scheduler; a kubelet with containerd and runc) and
``cmcp-operator`` as its own process. Every enclave pod is a real container of the enclave
image built from this checkout (``cmcp_devkit.images``, by digest), started through the
``kata-qemu-tdx`` handler, whose OCI hook and TSM stand-in give it simulated TDX evidence
of its own initdata; the enclave runs its real ``tdx`` provider
and the operator appraises that software-only evidence against the dev release pinning
the image.

For each replica count: ``kubectl apply`` the route (its ``PolicyBundle``
already exists), then poll every 100 ms until

* **attested**: the route's status says ``Ready=True`` for the current
  generation with ``attestedReplicas == replicas`` (the operator verified fresh
  evidence of every pod and opened its readiness gate), and
* **routed**: the route's Service EndpointSlices list ``replicas`` ready
  addresses (Kubernetes itself now sends traffic to them).

The route is deleted (and its pods waited out) before the next count.  The
cluster start-up and image import times are reported separately and are not part of the
figure; so is the image build (cached while the sources are unchanged). Needs root (the real
node) and waits for the machine's node lock like the e2e session.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO_ROOT, Skip
from cmcp_core.crd import API_PATH
from cmcp_devkit import images
from cmcp_devkit.cluster.control_plane import LocalCluster, free_port
from cmcp_devkit.cluster.kube import Kube, KubeError
from cmcp_devkit.release import write_dev_release
from cmcp_operator import rbac
from cmcp_operator.render_bundle import bundle_manifest, dump

NS = "cmcp-bench"
BUNDLE = "bench-minimal"
TDX_RUNTIME_CLASS = "kata-qemu-tdx"  # the plane's class: its TDX selector matches only the real node


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == ctype), {})


def _ready_addresses(kube: Any, service: str) -> set[str]:
    slices = kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
                      labelSelector=f"kubernetes.io/service-name={service}")["items"]
    out: set[str] = set()
    for s in slices:
        for ep in s.get("endpoints") or []:
            if ep.get("conditions", {}).get("ready"):
                out.update(ep.get("addresses", []))
    return out


def _pods(kube: Any, route: str) -> list[dict[str, Any]]:
    items = kube.get(f"/api/v1/namespaces/{NS}/pods", labelSelector=f"cmcp.dev/route={route}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _phases(kube: Any, route: str) -> dict[str, int]:
    """How many of the route's pods are in each phase (a timed-out row says where they stuck)."""
    counts: dict[str, int] = {}
    for pod in _pods(kube, route):
        phase = (pod.get("status") or {}).get("phase", "?")
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def _no_pods(kube: Any, route: str) -> bool:
    return not _pods(kube, route)


def run(replicas: list[int], quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    op_bin = Path(sys.executable).with_name("cmcp-operator")
    if not op_bin.exists():
        raise Skip("cmcp-operator is not installed in this environment")
    if os.geteuid() != 0:
        raise Skip("the real node (kubelet, containerd, runc) needs root")

    t0 = time.monotonic()
    try:
        enclave = images.ensure_cluster_images()["enclave"]
    except images.ImagesError as exc:
        raise Skip(f"the enclave image could not be built: {exc}") from exc
    out: dict[str, Any] = {"images_s": time.monotonic() - t0}
    log(f"   images ready in {out['images_s']:.1f} s (built or cached)")
    image = f"localhost/cmcp-enclave@{enclave.digest}"  # by digest: the operator refuses a tag
    t0 = time.monotonic()
    cluster = LocalCluster(real_node=True).start()
    rows: list[dict[str, Any]] = []
    op: subprocess.Popen[bytes] | None = None
    out.update({"cluster_startup_s": time.monotonic() - t0, "rows": rows})
    log(f"   local cluster with the real node up in {out['cluster_startup_s']:.1f} s")
    kube = Kube.from_kubeconfig(cluster.kubeconfig)
    try:
        t0 = time.monotonic()
        cluster.import_image(Path(enclave.archive))
        out["import_s"] = time.monotonic() - t0
        for crd_file in sorted((REPO_ROOT / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "-f", str(crd_file))

        def established(name: str) -> bool:
            crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = (crd.get("status") or {}).get("conditions") or []
            return any(x.get("type") == "Established" and x.get("status") == "True" for x in conds)

        for crd in ("policybundles.cmcp.dev", "mcproutes.cmcp.dev"):
            kube.wait_for(f"CRD {crd}", functools.partial(established, crd), timeout=60)
        kube.create("/api/v1/namespaces", {"metadata": {"name": NS}})
        # The webhook configurations the chart would create (the operator only reads and patches them).
        for kind in rbac.WEBHOOK_KINDS:
            kube.apply(f"/apis/admissionregistration.k8s.io/v1/{kind}/{rbac.WEBHOOK_CONFIGURATION}", {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration" if kind.startswith("validating")
                else "MutatingWebhookConfiguration", "metadata": {"name": rbac.WEBHOOK_CONFIGURATION}})
        log_path = cluster.state_dir / "logs" / "bench-operator.log"
        webhook_port, metrics_port = free_port(), free_port()
        # The operator refuses to start without a signed release manifest: the dev kit's, pinning the
        # genuine simulated guest the TSM stand-in measures and this run's enclave image.
        release = write_dev_release(cluster.state_dir / "bench-release", image=image)
        with open(log_path, "wb") as fh:
            op = subprocess.Popen(
                [str(op_bin), "--namespace", NS, "--allow-simulated",
                 "--runtime-class-tdx", TDX_RUNTIME_CLASS, "--reattest-interval", "30",
                 "--enclave-image", image, "--webhook-port", str(webhook_port),
                 "--webhook-host", "127.0.0.1", "--webhook-listen", "127.0.0.1",
                 "--metrics-port", str(metrics_port), *release.argv()],
                stdout=fh, stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}, start_new_session=True)

        def op_tail() -> str:
            return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

        def webhook_ready() -> bool:
            try:
                cfg = kube.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
                               "cmcp-operator.cmcp.dev")
            except KubeError:
                return False
            return bool(cfg.get("webhooks"))

        kube.wait_for("operator webhook", webhook_ready, timeout=90, on_timeout=op_tail)
        bundle_dir = REPO_ROOT / "examples" / "minimal"
        cluster.kubectl("apply", "-f", "-", input=dump(bundle_manifest(bundle_dir, BUNDLE, NS)))
        bundle_path = f"{API_PATH}/namespaces/{NS}/policybundles/{BUNDLE}"
        kube.wait_for("bundle valid", lambda: _cond(kube.get(bundle_path), "Valid").get("status") == "True",
                      timeout=60, on_timeout=op_tail)

        for n in replicas:
            name = f"bench-r{n}"
            doc = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute",
                   "metadata": {"name": name, "namespace": NS},
                   "spec": {"upstream": {"url": "http://bench-upstream.example/mcp"},
                            "policyBundleRef": {"name": BUNDLE}, "replicas": n, "tee": "tdx"}}
            started = time.monotonic()
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
            attested_at: float | None = None
            routed_at: float | None = None
            deadline = started + (240 if n > 1 else 120)
            service = f"cmcp-{name}"
            while time.monotonic() < deadline and (attested_at is None or routed_at is None):
                now = time.monotonic()
                try:
                    r = kube.get(f"{API_PATH}/namespaces/{NS}/mcproutes/{name}")
                    ready = _cond(r, "Ready")
                    if attested_at is None and ready.get("status") == "True" and \
                            (r.get("status") or {}).get("attestedReplicas") == n and \
                            ready.get("observedGeneration") == r["metadata"]["generation"]:
                        attested_at = now
                    if routed_at is None and len(_ready_addresses(kube, service)) >= n:
                        routed_at = now
                except KubeError:
                    pass
                time.sleep(0.1)
            row: dict[str, Any] = {
                "replicas": n,
                "seconds": (max(attested_at, routed_at) - started) if attested_at and routed_at else None,
                "attested_s": (attested_at - started) if attested_at else None,
                "routed_s": (routed_at - started) if routed_at else None,
                "note": "" if attested_at and routed_at else f"timed out; pods: {_phases(kube, name)}",
            }
            rows.append(row)
            log(f"   {n:>2} replicas: attested {row['attested_s']} s, routed {row['routed_s']} s")
            kube.delete(f"{API_PATH}/namespaces/{NS}/mcproutes/{name}")
            kube.wait_for("route pods gone", functools.partial(_no_pods, kube, name), timeout=120)
    finally:
        if op is not None and op.poll() is None:
            op.send_signal(signal.SIGTERM)
            try:
                op.wait(15)
            except subprocess.TimeoutExpired:
                op.kill()
        kube.close()
        cluster.stop()
    out["note"] = ("local cluster (cmcp_devkit.cluster) with its real node: every enclave pod a real "
                   "container of this checkout's enclave image under kata-qemu-tdx (runc, OCI hook, TSM "
                   "stand-in: simulated TDX evidence, real tdx provider); 'seconds' = kubectl apply of "
                   "the McpRoute until both attestedReplicas == replicas (Ready) and that many ready "
                   "EndpointSlice addresses; image build, cluster start-up and image import excluded")
    return out
