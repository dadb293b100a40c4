"""A real, local Kubernetes control plane for the e2e tests, the demo and the benchmarks, plus its CLI.

    python -m cmcp_devkit.cluster up | down | kubeconfig | status

Why real: the operator's job is talking to Kubernetes; resourceVersion conflicts, status
subresources, CRD validation, webhooks, RBAC, readiness gates and EndpointSlices only behave
like production when the real apiserver, controller-manager and scheduler run them.

What runs, all as local processes in their own process groups (killed on stop, at exit, on
SIGTERM, and via PDEATHSIG if this process dies hard): etcd on 127.0.0.1; kube-apiserver
on the pod network's host address (see podnet.py) with per-run certs, Node+RBAC
authorization, NodeRestriction and RuntimeClass admission, SA token signing; the
controller-manager and the scheduler; the registered-only nodes (registered_nodes.py: Node
objects without a kubelet, tainted so no pod lands there, for scheduling tests); with
``real_node=True`` (``up --real-node``) the one node that runs pods (node.py: a kubelet with its
own containerd and runc, carrying both the TDX and the SNP labels), and with
``network_policy=True`` its NetworkPolicy engine (netpol.py: kube-network-policies, nftables +
nfqueue). Without the real node the plane runs no pod: it serves tests that need only the API
(RBAC, admission, CRDs, scheduling decisions). ``up`` runs all of that under a detached
supervisor (``_serve``) and records its state under ``~/.cache/cmcp-e2e/run/`` so that ``down`` can find it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from cmcp_devkit.ports import free_port

from . import netpol
from .binaries import (
    PAUSE_IMAGE,
    Binaries,
    cache_root,
    ensure_all,
    ensure_kube_proxy,
    ensure_kubectl_helm,
    ensure_kubelet,
    ensure_netpol,
    ensure_pause_image,
)
from .containerd import Ctr, CtrError
from .kube import Kube, ssl_context
from .node import KUBE_PROXY_HEALTHZ, NodePaths, RealNode, clean_if_abandoned, owner_pid
from .pki import ClusterPKI, kubeconfig_yaml
from .podnet import PodNetwork, set_pdeathsig
from .registered_nodes import NodeSpec as NodeSpec  # re-exported: LocalCluster(nodes=[NodeSpec(...)])

REPO_ROOT = Path(__file__).resolve().parents[3]

TDX_LABELS = {
    "feature.node.kubernetes.io/cpu-security.tdx.enabled": "true",
    "intel.feature.node.kubernetes.io/tdx": "true",
}
SNP_LABELS = {
    "feature.node.kubernetes.io/cpu-security.sev.snp.enabled": "true",
    "amd.feature.node.kubernetes.io/snp": "true",
}
RUNTIME_CLASSES = {
    "kata-qemu-tdx": {"intel.feature.node.kubernetes.io/tdx": "true"},
    "kata-qemu-snp": {"amd.feature.node.kubernetes.io/snp": "true"},
}
# The real node (node.py) is the only node that runs pods: it carries both feature label sets, so pods
# of either RuntimeClass land on it, and its containerd maps both handlers to runc.
REAL_NODE_NAME = "real-node-1"
REAL_NODE_LABELS = {**TDX_LABELS, **SNP_LABELS}
# Pins a pod to the real node by name (the registered-only nodes' taint already keeps pods off them;
# this also keeps a test's pods off any other node of a cluster it does not own).
REAL_NODE_PLACEMENT: dict[str, Any] = {"nodeSelector": {"kubernetes.io/hostname": REAL_NODE_NAME}}
NETWORK_POLICY_ENGINE = "network-policy-engine"  # its process (and log) name in the cluster
REGISTERED_NODES = "registered-nodes"  # the process (and log) that keeps the registered-only nodes


def default_nodes() -> list[NodeSpec]:
    """One plain registered-only node: eligible for a pod that tolerates its taint, never TDX or SNP."""
    return [NodeSpec("plain-node-1")]


class ClusterStartError(RuntimeError):
    """A component did not come up; the message carries the tail of the relevant logs."""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def _preexec() -> None:
    set_pdeathsig()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class LocalCluster:
    """etcd + kube-apiserver + controller-manager + scheduler + registered-only nodes on this machine,
    with ``real_node=True`` also the real node that runs the pods.

    ``start()`` returns once the cluster is usable: apiserver ready, default ServiceAccount
    created, every node Ready, RuntimeClasses present. ``stop()`` is idempotent.
    """

    def __init__(
        self,
        nodes: list[NodeSpec] | None = None,
        state_dir: Path | None = None,
        pod_network: str | None = None,
        real_node: bool = False,
        real_node_tee: bool = True,
        network_policy: bool = False,
    ) -> None:
        if network_policy and not real_node:
            raise ValueError("network_policy needs real_node: the engine guards the real node's pods")
        self.nodes = nodes if nodes is not None else default_nodes()
        self.real_node: RealNode | None = None
        self._want_real_node = real_node
        self._real_node_labels = dict(REAL_NODE_LABELS) if real_node_tee else {}  # NFD's TDX+SNP labels
        self._want_network_policy = network_policy
        self.network_policy_ready_seconds: float | None = None  # engine spawn -> table + queue bound
        self.node_ready_seconds: float | None = None  # kubelet start -> every node Ready (real node only)
        self._kubelet_started = 0.0
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="cmcp-e2e-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "owner.pid").write_text(str(os.getpid()))
        self.logs = self.state_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self._pod_network_mode = pod_network
        self.net: PodNetwork | None = None
        self.bins: Binaries | None = None
        self.procs: list[_Proc] = []
        self.server = ""
        self.kubeconfig = self.state_dir / "admin.kubeconfig"
        self.ca_file = self.state_dir / "pki" / "ca.crt"
        self.startup_seconds: float | None = None
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> LocalCluster:
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start(self) -> None:
        _sweep_stale_state(self.state_dir)
        self.bins = bins = ensure_all()
        kubelet = ensure_kubelet() if self._want_real_node else None
        kube_proxy = ensure_kube_proxy() if self._want_real_node else None
        engine = ensure_netpol() if self._want_network_policy else None
        if engine is not None and (why := netpol.missing_prerequisites()):
            raise ClusterStartError(why)
        self.net = net = PodNetwork.create(self._pod_network_mode)
        if self._want_real_node and net.mode != "netns":
            raise ClusterStartError("the real node needs the netns pod network (root, iproute2)")
        pki = ClusterPKI(self.state_dir / "pki")
        host = net.host_ip
        apiserver_port = free_port(host)
        self.server = f"https://{host}:{apiserver_port}"
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=tuple(dict.fromkeys(("127.0.0.1", host, net.first_service_ip))),
        )
        sa = pki.service_account_keys()
        admin = pki.issue("admin", "kubernetes-admin", organizations=("system:masters",))
        cm_cert = pki.issue("controller-manager", "system:kube-controller-manager")
        sched_cert = pki.issue("scheduler", "system:kube-scheduler")
        # The apiserver's identity towards kubelets (kubectl logs/exec on the real node).
        kubelet_client = pki.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",)
        )
        self.kubeconfig.write_text(kubeconfig_yaml(self.server, pki.ca.cert, admin, "admin"))
        cm_kc = self.state_dir / "controller-manager.kubeconfig"
        cm_kc.write_text(kubeconfig_yaml(self.server, pki.ca.cert, cm_cert, "system:kube-controller-manager"))
        sched_kc = self.state_dir / "scheduler.kubeconfig"
        sched_kc.write_text(kubeconfig_yaml(self.server, pki.ca.cert, sched_cert, "system:kube-scheduler"))
        node_certs = {
            n.name: pki.issue(f"node-{n.name}", f"system:node:{n.name}", organizations=("system:nodes",))
            for n in self.nodes
        }

        # etcd
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                str(bins.etcd),
                "--name",
                "e2e",
                "--data-dir",
                str(self.state_dir / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"e2e=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
                "--quota-backend-bytes",
                str(2 * 1024**3),
            ],
        )
        self._wait(
            "etcd", lambda: httpx.get(f"{etcd_url}/health", timeout=2).json().get("health") == "true", 60
        )

        # kube-apiserver
        self._spawn(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={host}",
                f"--advertise-address={host}",
                f"--secure-port={apiserver_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={net.service_cidr}",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,RuntimeClass",
                # Webhook and aggregated-API calls go to endpoint IPs: there is no kube-proxy.
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=1h",
                "--v=1",
            ],
        )
        admin_ctx = ssl_context(str(pki.ca.cert), str(admin.cert), str(admin.key))

        def readyz() -> bool:
            return httpx.get(f"{self.server}/readyz", verify=admin_ctx, timeout=5).status_code == 200

        self._wait("kube-apiserver /readyz", readyz, 120, logs=("kube-apiserver", "etcd"))

        # controller-manager and scheduler
        cm_port, sched_port = free_port(), free_port()
        self._spawn(
            "kube-controller-manager",
            [
                str(bins.kube_controller_manager),
                f"--kubeconfig={cm_kc}",
                f"--authentication-kubeconfig={cm_kc}",
                f"--authorization-kubeconfig={cm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                "--leader-elect=false",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={pki.ca.cert}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={net.service_cidr}",
                "--controllers=*",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(bins.kube_scheduler),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

        _create_runtime_classes(Kube.from_kubeconfig(self.kubeconfig))
        if self.nodes:
            nodes_cfg = {
                "server": self.server,
                "ca": str(pki.ca.cert),
                "admin": {"cert": str(admin.cert), "key": str(admin.key)},
                "nodes": [
                    {**asdict(n), "cert": str(node_certs[n.name].cert), "key": str(node_certs[n.name].key)}
                    for n in self.nodes
                ],
            }
            cfg_path = self.state_dir / "registered-nodes.json"
            cfg_path.write_text(json.dumps(nodes_cfg, indent=2))
            self._spawn(REGISTERED_NODES, [sys.executable, "-m", "cmcp_devkit.cluster.registered_nodes",
                                           str(cfg_path)], cwd=REPO_ROOT)
        if kubelet is not None and kube_proxy is not None:
            self._start_real_node(pki, kubelet, kube_proxy)
        if engine is not None:
            self._start_network_policy(pki, engine)

        kube = Kube.from_kubeconfig(self.kubeconfig)
        try:
            for name, port in (("kube-controller-manager", cm_port), ("kube-scheduler", sched_port)):
                url = f"https://127.0.0.1:{port}/healthz"  # self-signed serving cert on loopback

                def healthy(u: str = url) -> bool:
                    # self-signed serving certs of this run's own components: only liveness is asked
                    return httpx.get(u, verify=False, timeout=5).status_code == 200  # noqa: S501

                self._wait(f"{name} /healthz", healthy, 90, logs=(name,))
            self._wait(
                "the default ServiceAccount (controller-manager)",
                lambda: kube.get("/api/v1/namespaces/default/serviceaccounts/default"),
                90,
                logs=("kube-controller-manager",),
            )

            def nodes_ready() -> bool:
                items = kube.get("/api/v1/nodes")["items"]
                ready = {
                    n["metadata"]["name"]
                    for n in items
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in n["status"].get("conditions", [])
                    )
                    and not any(
                        t["key"].startswith("node.kubernetes.io/") for t in n["spec"].get("taints", [])
                    )
                }
                want = {n.name for n in self.nodes}
                if self.real_node is not None:
                    want.add(self.real_node.name)
                return ready >= want

            self._wait(
                "all nodes Ready and untainted",
                nodes_ready,
                90,
                logs=(REGISTERED_NODES, "kubelet", "kube-controller-manager"),
            )
            if self.real_node is not None:
                self.node_ready_seconds = time.monotonic() - self._kubelet_started
        finally:
            kube.close()

    def _start_real_node(self, pki: ClusterPKI, kubelet: Path, kube_proxy: Path) -> None:
        """containerd (pause image imported), then the kubelet and kube-proxy; the node's feature labels
        once it registered."""
        assert self.net is not None
        node = self.real_node = RealNode(REAL_NODE_NAME, self.net.index)
        cert = pki.issue(f"node-{node.name}", f"system:node:{node.name}", organizations=("system:nodes",))
        # the bootstrap policy binds system:node-proxier (Services, EndpointSlices, Nodes) to this user
        proxy_cert = pki.issue("kube-proxy", "system:kube-proxy")
        node.prepare(
            pki.ca.cert,
            kubeconfig_yaml(self.server, pki.ca.cert, cert, f"system:node:{node.name}"),
            tuple(RUNTIME_CLASSES),
            PAUSE_IMAGE,
            kubeconfig_yaml(self.server, pki.ca.cert, proxy_cert, "system:kube-proxy"),
        )
        # the kata handlers' hook binds the stand-in into each container: it must serve first
        self._spawn("tsm-standin", node.tsm_standin_argv())
        self._wait("the TSM stand-in's FUSE mount", node.tsm_standin_ready, 30, logs=("tsm-standin",))
        self._spawn("containerd", node.containerd_argv())
        self._wait("containerd", node.containerd_ready, 30, logs=("containerd",))
        node.import_images([ensure_pause_image()])
        self._kubelet_started = time.monotonic()
        self._spawn("kubelet", node.kubelet_argv(kubelet))
        self._spawn("kube-proxy", node.kube_proxy_argv(kube_proxy))
        kube = Kube.from_kubeconfig(self.kubeconfig)
        try:
            self._wait(
                f"node {node.name} registered by its kubelet",
                lambda: kube.get(f"/api/v1/nodes/{node.name}"),
                90,
                logs=("kubelet", "containerd"),
            )
            # As Node Feature Discovery would: nodes may not set *.kubernetes.io labels themselves.
            if self._real_node_labels:
                kube.patch(f"/api/v1/nodes/{node.name}", {"metadata": {"labels": self._real_node_labels}})
            self._wait(
                "kube-proxy /healthz (Service rules in place)",
                lambda: httpx.get(KUBE_PROXY_HEALTHZ, timeout=2).status_code == 200,
                90,
                logs=("kube-proxy",),
            )
        finally:
            kube.close()

    def _start_network_policy(self, pki: ClusterPKI, engine: Path) -> None:
        """The engine with its own certificate and list/watch-only role; ready once it guards the node."""
        node = self.real_node
        assert node is not None
        cert = pki.issue("network-policy-engine", netpol.ENGINE_USER)
        kubeconfig = node.paths.netpol_kubeconfig
        kubeconfig.write_text(kubeconfig_yaml(self.server, pki.ca.cert, cert, netpol.ENGINE_USER))
        kubeconfig.chmod(0o600)
        kube = Kube.from_kubeconfig(self.kubeconfig)
        try:
            for path, body in netpol.rbac_objects():
                kube.create(path, body)
        finally:
            kube.close()
        started = time.monotonic()
        netpol.install_steering(node.net.subnet)  # fail closed from here: no engine, no new pod connections
        self._spawn(NETWORK_POLICY_ENGINE, netpol.engine_argv(engine, kubeconfig, node.name))
        self._wait("the NetworkPolicy engine on its queue", netpol.engine_ready, 60,
                   logs=(NETWORK_POLICY_ENGINE,))
        self.network_policy_ready_seconds = time.monotonic() - started

    def import_image(self, archive: Path) -> list[str]:
        """Import an OCI/docker image archive into the real node's containerd (pods then run it by its
        name or by ``repo@sha256:<manifest digest>``); returns the references it can be run by."""
        if self.real_node is None:
            raise ClusterStartError("this cluster has no real node (LocalCluster(real_node=True))")
        return self.real_node.ctr.import_archive(archive)

    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> None:
        log = self.logs / f"{name}.log"
        fh = log.open("ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_preexec,
                cwd=cwd,
            )
        finally:
            fh.close()
        self.procs.append(_Proc(name, popen, log))

    def _wait(
        self, what: str, probe: Callable[[], object], timeout: float, logs: tuple[str, ...] = ()
    ) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.popen.poll() is not None]
            if dead:
                p = dead[0]
                raise ClusterStartError(
                    f"{p.name} exited with {p.popen.returncode} while waiting for {what}; "
                    f"log tail:\n{_tail(p.log)}"
                )
            try:
                if probe():
                    return
            except Exception as exc:  # connection refused etc. until the component listens
                last = exc
            time.sleep(0.2)
        tails = "\n".join(f"--- {n} ---\n{_tail(self.logs / f'{n}.log')}" for n in logs)
        raise ClusterStartError(
            f"timed out after {timeout}s waiting for {what} (last error: {last})\n{tails}"
        )

    def log_tail(self, *names: str, lines: int = 25) -> str:
        """Last log lines of the named components (all when none named), for failure messages."""
        chosen = names or tuple(p.name for p in self.procs)
        return "\n".join(f"--- {n} ---\n{_tail(self.logs / f'{n}.log', lines)}" for n in chosen)

    def stop(self) -> None:
        """In reverse start order (the real node's kubelet and containerd before the control plane),
        then what the real node left on the host, then the pod network."""
        if self._stopped:
            return
        self._stopped = True
        for proc in reversed(self.procs):
            _terminate_group(proc.popen, 10.0)
        self.procs.clear()
        if self.real_node is not None:
            self.real_node.cleanup()  # containers, mounts, cgroups, iptables chains, bridge, dirs
        if self.net is not None:
            self.net.close()
        if self._own_state_dir and not os.environ.get("CMCP_E2E_KEEP_STATE"):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # ----------------------------------------------------------------- runners
    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self.bins is not None
        return run_tool(self.bins.kubectl, self.kubeconfig, args, check=check, input=input)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bins is not None
        return run_tool(self.bins.helm, self.kubeconfig, args, check=check)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _create_runtime_classes(kube: Kube) -> None:
    """``kata-qemu-tdx``/``kata-qemu-snp``, each scheduled onto nodes with its TEE's label, as the Kata
    operator installs them; the real node's containerd runs both handlers (runc with the TSM hook)."""
    try:
        for name, selector in RUNTIME_CLASSES.items():
            kube.apply(f"/apis/node.k8s.io/v1/runtimeclasses/{name}", {
                "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name},
                "handler": name, "scheduling": {"nodeSelector": selector},
            }, manager="cmcp-local-cluster")
    finally:
        kube.close()


def run_tool(
    binary: Path,
    kubeconfig: Path | None,
    args: tuple[str, ...] | list[str],
    *,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl/helm against ``kubeconfig``; on failure raise with its stderr in the message."""
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    env.setdefault("HELM_CACHE_HOME", str(cache_root() / "helm" / "cache"))
    env.setdefault("HELM_CONFIG_HOME", str(cache_root() / "helm" / "config"))
    env.setdefault("HELM_DATA_HOME", str(cache_root() / "helm" / "data"))
    proc = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, input=input, timeout=300
    )
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def _sweep_stale_state(keep: Path) -> None:
    """Remove state dirs of runs whose owner died hard (SIGKILL leaves only files behind)."""
    for d in Path(tempfile.gettempdir()).glob("cmcp-e2e-*"):
        owner = d / "owner.pid"
        if d == keep or not owner.is_file():
            continue
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _terminate_group(popen: subprocess.Popen[bytes], grace: float) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    # Whatever is left in the group (children of the component) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)


# --------------------------------------------------------------------- CLI
RUN_DIR = cache_root() / "run"
RUN_FILE = RUN_DIR / "current.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_run() -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads(RUN_FILE.read_text())
    except (OSError, ValueError):
        return None
    return info


def cmd_serve(state_dir: Path, real_node: bool = False) -> int:
    """Supervisor behind ``up``: owns every process, stops them all on SIGTERM/SIGINT."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    cluster = LocalCluster(state_dir=state_dir, real_node=real_node)
    try:
        cluster.start()
        (state_dir / "ready.json").write_text(
            json.dumps(
                {
                    "kubeconfig": str(cluster.kubeconfig),
                    "server": cluster.server,
                    "startup_seconds": cluster.startup_seconds,
                }
            )
        )
        while True:
            time.sleep(3600)
    except SystemExit:
        return 0
    except ClusterStartError as exc:
        (state_dir / "failed.txt").write_text(str(exc))
        return 1
    finally:
        cluster.stop()


def cmd_up(real_node: bool = False) -> int:
    info = _read_run()
    if info and _alive(int(info["pid"])):
        print(f"already up: export KUBECONFIG={info['kubeconfig']}")
        return 0
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="cmcp-e2e-up-"))
    t0 = time.monotonic()
    with (state_dir / "supervisor.log").open("ab") as log:
        sup = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cmcp_devkit.cluster",
                "_serve",
                str(state_dir),
                *(["--real-node"] if real_node else []),
            ],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    kubeconfig = state_dir / "admin.kubeconfig"
    RUN_FILE.write_text(
        json.dumps({"pid": sup.pid, "state_dir": str(state_dir), "kubeconfig": str(kubeconfig)})
    )
    while not (state_dir / "ready.json").exists():
        if sup.poll() is not None:
            failed = state_dir / "failed.txt"
            print(
                failed.read_text() if failed.exists() else _tail(state_dir / "supervisor.log"),
                file=sys.stderr,
            )
            RUN_FILE.unlink(missing_ok=True)
            return 1
        time.sleep(0.2)
    print(f"cluster up in {time.monotonic() - t0:.1f}s; state in {state_dir}", file=sys.stderr)
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


def cmd_down() -> int:
    info = _read_run()
    if not info:
        print("no cluster recorded as up", file=sys.stderr)
        _clean_real_node()
        return 0
    pid = int(info["pid"])
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(info["state_dir"], ignore_errors=True)
    RUN_FILE.unlink(missing_ok=True)
    _clean_real_node()
    print("cluster down", file=sys.stderr)
    return 0


def _clean_real_node() -> None:
    """A real node whose owner died (supervisor SIGKILLed, machine crash) leaves host state: take it back."""
    if os.geteuid() != 0:
        return
    found = clean_if_abandoned()
    if found:
        print(f"removed what a real node left on the host: {len(found)} items", file=sys.stderr)


USAGE = "usage: python -m cmcp_devkit.cluster up [--real-node]|down|kubeconfig|status|import-image ARCHIVE"
HELP = f"""{USAGE}

  up               the control plane and one registered-only node (plain-node-1: a Node object with no
                   kubelet, tainted NoSchedule). No pod runs: enough for kubectl, RBAC, CRDs, webhooks'
                   objects and scheduling decisions, and needs no root.
  up --real-node   also the real node real-node-1 (kubelet + containerd + runc, root), labelled TDX and
                   SNP: the only node that runs pods (the chart, the operator's enclave pods, the demo).
  down             stop the cluster and remove what a real node left on the host (also after a crash)
  kubeconfig       print the running cluster's kubeconfig path
  status           up or down, and the nodes with their TDX/SNP labels (the default command)
  import-image A   import an OCI/docker image archive into the real node's containerd

  python -m cmcp_devkit.cluster.real_node_values [VALUES] builds (or finds cached) every image of
  this checkout, imports them into the running real node and writes Helm values running the chart
  there by digest (make demo-cluster uses it).
"""


def cmd_import_image(archive: Path) -> int:
    """Import an OCI or docker image archive (e.g. built by buildah) into the real node's containerd."""
    if owner_pid() is None:
        print("no real node runs here (python -m cmcp_devkit.cluster up --real-node)", file=sys.stderr)
        return 1
    try:
        Ctr(NodePaths().socket).import_archive(archive)
    except CtrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"imported {archive} into the real node's containerd", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "status"
    if cmd in {"help", "-h", "--help"}:
        print(HELP)
        return 0
    if cmd == "up":
        return cmd_up(real_node="--real-node" in args[1:])
    if cmd == "down":
        return cmd_down()
    if cmd == "_serve":
        return cmd_serve(Path(args[1]), real_node="--real-node" in args[2:])
    info = _read_run()
    if cmd == "kubeconfig":
        if not info:
            print("no cluster up (run: python -m cmcp_devkit.cluster up)", file=sys.stderr)
            return 1
        print(info["kubeconfig"])
        return 0
    if cmd == "status":
        if not info or not _alive(int(info["pid"])):
            print("down")
            return 1
        print(f"up (supervisor pid {info['pid']}); KUBECONFIG={info['kubeconfig']}")
        kubectl, _ = ensure_kubectl_helm()
        proc = run_tool(
            kubectl,
            Path(info["kubeconfig"]),
            ["get", "nodes", "-L", "intel.feature.node.kubernetes.io/tdx,amd.feature.node.kubernetes.io/snp"],
            check=False,
        )
        print(proc.stdout or proc.stderr)
        return 0
    if cmd == "import-image" and len(args) == 2:
        return cmd_import_image(Path(args[1]))
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
