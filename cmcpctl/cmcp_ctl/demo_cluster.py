"""``cmcpctl demo --cluster``: the demo's story on a Kubernetes cluster, with helm and kubectl.

The same eight steps and checks as ``cmcpctl demo`` (shared through :mod:`cmcp_ctl.demo_story`:
:func:`~cmcp_ctl.demo_story.tell_story`, :func:`~cmcp_ctl.demo_story.auditor_commands`), but every
component is deployed the way a platform team would:

1. ``helm upgrade --install`` of ``charts/cmcp`` with the ``ci/simulated-values.yaml`` profile
   (operator only: the gateway needs a route to serve);
2. ``kubectl apply`` of a ``PolicyBundle`` rendered from ``examples/realistic`` by the operator's
   own renderer (:func:`cmcp_operator.render_bundle.bundle_manifest`) and of an ``McpRoute``
   (``tee: simulated``, or the TEE ``--values`` allows); the operator starts the enclave pod and
   attests it, and the demo waits for ``status.pods[].attested``;
3. a guarded upstream pod: the dev kit's ``mcp`` SDK server (:mod:`cmcp_devkit.upstream`,
   ``demo`` profile), the ``cmcp-guard`` proxy in front of it (``--route``: it follows the
   route's ``status.pods[]`` addresses under its own ServiceAccount, allowed to ``get`` that
   McpRoute only, and attests each enclave itself) and the host's wiretap
   (:mod:`cmcp_devkit.demo_tap`) between gateway and guard. The guard runs from the ``cmcp-guard``
   image, the server and the wiretap from the demo's ``cmcp-demo`` image (the Dockerfile's
   ``COMPONENT=demo``; ``python -m cmcp_devkit.images demo``), both from the chart's registry and
   ``appVersion``, on the nodes the gateway is placed on;
4. ``helm upgrade`` adds the gateway for the route;
5. the story through the gateway with the official ``mcp`` client, the host's direct attempts,
   the Trust Record, audit export and fresh evidence from the enclave (gRPC), verified like the
   local demo; then ``helm uninstall`` (unless ``--keep``).

Reachability: the demo process talks to the gateway, the upstream pod and the enclave at their
**pod IPs**, as the e2e harness's tests do. That holds on the local control plane of
``make demo-cluster`` (the host is on the pod network) and on clusters whose pod network is
routable from where the demo runs; elsewhere the demo stops with that explanation (no
``kubectl port-forward`` fallback). It never reads the default kubeconfig silently: pass
``--kubeconfig`` or set ``KUBECONFIG``.

``--values FILE`` (repeatable) goes to every ``helm`` after the profile, as ``helm -f`` would: an image
registry or digests, node placement, another TEE than the profile's. The demo reads the same merged
values for the images and placement of the pods it starts itself.

Exit code: 0 only if every expected outcome happened; 1 if any did not; 2 when the cluster, the
tools or the installation were not usable (the message says what to do next).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cmcp_core.bundle import load_bundle
from cmcp_core.crd import GROUP
from cmcp_core.verify import AppraisalPolicy
from cmcp_ctl import demo_story
from cmcp_ctl.demo_story import AGENT, AUDIENCE, ROUTE, Console, DemoFailure, Run
from cmcp_devkit.cluster import chart_release
from cmcp_devkit.cluster.node import NodePaths
from cmcp_devkit.release import DevRelease, write_dev_release
from cmcp_operator.render_bundle import bundle_manifest

T = TypeVar("T")

RELEASE = "cmcp-demo"  # contains the chart name, so objects are cmcp-demo-operator, cmcp-demo-gateway
DEFAULT_NAMESPACE = "cmcp-demo"
BUNDLE_NAME = "demo-realistic"
UPSTREAM_POD = "cmcp-demo-upstream"
GUARD_SA = "cmcp-demo-guard"  # the upstream pod's identity: get on the followed McpRoutes only
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKENS_SECRET = "cmcp-gateway-tokens"  # noqa: S105 - a Secret's name; the chart's default gateway.auth.existingSecret
WEBHOOK_CONFIG = "cmcp-operator.cmcp.dev"  # fixed by the operator: one release per cluster
MCP_PORT, GUARD_PORT, TAP_PORT = 9001, 8443, 8000  # upstream pod's containers (bound to the pod IP)
GATEWAY_PORT = 8080  # the chart's gateway.port default
REAL_NODE_AUDIT = Path("volumes", "kubernetes.io~empty-dir", "audit", "audit.sqlite")  # in a kubelet pod dir
WAIT = 180.0  # seconds for each slow step (pods start, enclave attested, rollout)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--cluster`` options, registered on ``cmcpctl demo``'s parser by :mod:`cmcp_ctl.demo_cmd`."""
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="with --cluster: the cluster's kubeconfig (default: $KUBECONFIG; never ~/.kube/config silently)",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        default=DEFAULT_NAMESPACE,
        help="with --cluster: namespace of the release, bundle, route and upstream "
        f"(default {DEFAULT_NAMESPACE})",
    )
    parser.add_argument("--helm", metavar="PATH", help="with --cluster: helm binary (default: helm on PATH)")
    parser.add_argument(
        "--kubectl", metavar="PATH", help="with --cluster: kubectl binary (default: kubectl on PATH)"
    )
    parser.add_argument(
        "--values",
        "-f",
        metavar="FILE",
        action="append",
        default=[],
        help="with --cluster: a Helm values file applied after the simulated profile (image registry "
        "and digests, node placement, ...); repeatable, later files win",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="with --cluster: leave the release, bundle, route and upstream installed afterwards",
    )


# --------------------------------------------------------------------------------------------
# helm and kubectl
# --------------------------------------------------------------------------------------------


class ToolError(RuntimeError):
    """A helm/kubectl command failed; the message holds the command line and its stderr."""


def local_gateway_audit_store(pod_uids: Sequence[str], kubelet_root: Path | None = None) -> str | None:
    """The chart gateway's SQLite audit store, read as an auditor would, when this machine holds
    it: on the dev kit's real node, the audit emptyDir of a gateway pod in ``pod_uids`` under the
    kubelet's root dir."""
    pods = (kubelet_root or NodePaths().kubelet_root) / "pods"
    found = [path for path in (pods / uid / REAL_NODE_AUDIT for uid in pod_uids) if path.is_file()]
    return f"sqlite:{found[-1]}" if found else None


@dataclass
class Tools:
    """helm and kubectl against one kubeconfig (passed by flag, so the user's env is irrelevant)."""

    kubectl_bin: str
    helm_bin: str
    kubeconfig: Path
    log: Path | None = None  # every command and its output, for the "next:" hints

    def _run(
        self, argv: list[str], *, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        try:
            proc = subprocess.run(
                argv, input=input, capture_output=True, text=True, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"`{' '.join(argv[:4])} …` did not finish in {timeout:.0f}s") from exc
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as fh:
                fh.write(
                    f"$ {' '.join(argv)}\n[exit {proc.returncode}]\n{proc.stdout[-2000:]}{proc.stderr}\n"
                )
        if check and proc.returncode != 0:
            shown = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv[:6]))
            raise ToolError(f"`{shown} …` failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self._run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            check=check,
            timeout=timeout,
        )

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        return self._run(
            [self.helm_bin, "--kubeconfig", str(self.kubeconfig), *args],
            input=None,
            check=check,
            timeout=timeout,
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist."""
        args = ["get", kind, name, "-o", "json", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args).stdout.strip()
        return json.loads(out) if out else None

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "json").stdout
        )["items"]
        return [i for i in items if not i["metadata"].get("deletionTimestamp")]

    def apply(self, doc: dict[str, Any], saved: Path) -> None:
        """``kubectl apply -f FILE``; the manifest is kept in the output folder for the reader."""
        saved.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        self.kubectl("apply", "-f", str(saved))


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, hint: str) -> T:
    """Poll ``probe`` (kubectl calls: about a second apart) until it returns something."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            found = probe()
            if found is not None and found is not False:
                return found
        except ToolError as exc:  # transient apiserver/webhook errors while things start
            last = f" (last error: {exc})"
        if time.monotonic() > deadline:
            raise DemoFailure(f"timed out after {timeout:.0f}s waiting for {what}{last}", hint)
        time.sleep(1.0)


def _condition(obj: dict[str, Any], ctype: str) -> str:
    return next(
        (str(c.get("status")) for c in obj.get("status", {}).get("conditions", []) if c.get("type") == ctype),
        "",
    )


def _source_root() -> Path:
    """The source tree this package runs from (editable install): charts/ and examples/ live there."""
    return demo_story.default_bundle_dir().parents[1]


# --------------------------------------------------------------------------------------------
# What gets deployed
# --------------------------------------------------------------------------------------------


def install_values(release: DevRelease, replicas: int = 1) -> dict[str, Any]:
    """On top of the simulated profile: the signed release the operator and gateway trust, no
    gateway yet (it needs the route), one replica."""
    return {**chart_release.chart_values(release), "gateway": {"replicas": replicas, "routes": []}}


def merged_values(chart: Path, *files: Path) -> dict[str, Any]:
    """The chart's values with ``files`` applied in order, merged as Helm merges ``-f`` files
    (maps key by key, anything else replaced)."""

    def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in top.items():
            nested = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if nested else value
        return out

    values: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    for path in files:
        values = merge(values, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return values


def _registry(values: dict[str, Any]) -> str:
    registry = str(values.get("imageRegistry") or "").rstrip("/")
    return f"{registry}/" if registry else ""


def enclave_image(values: dict[str, Any]) -> str:
    """The enclave image (by digest) the chart makes the operator run, as the release must name it."""
    image = values["enclave"]["image"]
    return f"{_registry(values)}{image['repository']}@{image['digest']}"


def demo_image(values: dict[str, Any], chart: Path, name: str) -> str:
    """``cmcp-<name>`` from the chart's registry at its ``appVersion``: the guard's and the demo
    upstream's images, which the chart itself does not run."""
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    return f"{_registry(values)}cmcp-{name}:{app_version}"


def placement(values: dict[str, Any]) -> dict[str, Any]:
    """The gateway's ``nodeSelector`` and ``tolerations``: where the demo's upstream pod goes too."""
    gateway = values.get("gateway") or {}
    return {key: gateway[key] for key in ("nodeSelector", "tolerations") if gateway.get(key)}


def gateway_values(namespace: str, upstream: str) -> dict[str, Any]:
    """The ``helm upgrade`` that adds the gateway: route ``demo`` -> the wiretap -> the guard."""
    return {
        "gateway": {
            "replicas": 1,
            "routes": [
                {
                    "name": ROUTE,
                    "mcpRoute": {"name": ROUTE, "namespace": namespace},
                    "upstream": upstream,
                    "audience": AUDIENCE,
                }
            ],
        }
    }


def route_tee(values: dict[str, Any]) -> str:
    """The TEE the demo's route asks for: the first TEE type the merged values allow (a ``--values``
    file that runs the enclave's real ``tdx`` provider, e.g. on the dev kit's real node), else
    ``simulated`` (the simulated profile allows no hardware type)."""
    allowed = (values.get("attestation") or {}).get("allowedTeeTypes") or []
    return str(allowed[0]) if allowed else "simulated"


def mcp_route(namespace: str, tee: str = "simulated") -> dict[str, Any]:
    """One enclave for the bundle (``tee``: :func:`route_tee`); the permit audience the guard will check.

    ``upstream.url`` names where the upstream would sit behind a Service; the operator only
    derives the default audience from it, and ``audience`` is set explicitly (it is measured into
    the enclave's initdata, and guard and gateway are given the same string)."""
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "McpRoute",
        "metadata": {"name": ROUTE, "namespace": namespace},
        "spec": {
            "policyBundleRef": {"name": BUNDLE_NAME},
            "upstream": {"url": f"http://{UPSTREAM_POD}.{namespace}.svc:{TAP_PORT}/mcp"},
            "audience": AUDIENCE,
            "tee": tee,
            "replicas": 1,
        },
    }


def guard_rbac(namespace: str, routes: Sequence[str], name: str = GUARD_SA) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding for a guard following ``routes`` (``--route``).

    ``get`` on exactly those McpRoutes: the guard reads their ``status.pods[]`` addresses and
    nothing else (it attests every address itself; the status's keys are never trusted)."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "cmcp-demo"}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["mcproutes"],
                    "resourceNames": sorted(set(routes)),
                    "verbs": ["get"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def _token_volume() -> dict[str, Any]:
    """The ServiceAccount token, CA and namespace, as ``kube-api-access`` would project them,
    but mounted into the guard container only: the mcp server and wiretap get no credential."""
    return {
        "name": "guard-api-access",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    }
                },
            ]
        },
    }


def upstream_pod(
    namespace: str,
    image: str,
    guard_image: str,
    enclave: str,
    bundle_hash: str,
    *,
    name: str = UPSTREAM_POD,
    server_module: str = "cmcp_devkit.upstream",
    server_args: Sequence[str] = ("--profile", "demo"),
    more_enclaves: Sequence[tuple[str, str]] = (),
    wiretap: bool = True,
    route: str | None = None,
    service_account: str = GUARD_SA,
    modes: Sequence[str] = ("enforce",),
    where: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The guarded upstream: mcp server, cmcp-guard in front, the host's wiretap in front of that.

    One pod, three containers: the server and the wiretap from ``image`` (the demo's, which ships
    the dev kit), the guard from ``guard_image``; ``where``: its ``nodeSelector``/``tolerations``
    (:func:`placement`). The mcp server listens on loopback
    only: nothing outside the pod reaches it except through the guard (and the SDK's DNS-rebinding
    protection, on for a loopback server, accepts the guard's ``Host: 127.0.0.1``). Guard and
    wiretap bind the pod IP. Its ``GET /calls`` counter is read through the guard, which relays
    that request without a permit (it runs no tool).

    Other users (the conformance e2e test) pass another ``server_module`` (run as ``python -m
    MODULE --listen 127.0.0.1:PORT [server_args]``), further ``(enclave, bundle hash)`` pairs the
    guard accepts permits from (e.g. an advisory route's enclave), and ``wiretap=False``.

    ``route`` (an McpRoute name in ``namespace``): the guard follows that route's pod addresses
    (``--route``, so a replaced enclave pod is attested and trusted without a restart) instead
    of the fixed ``enclave`` address; the pod then runs as ``service_account`` (see
    :func:`guard_rbac`), its token mounted into the guard container only. ``modes``: the
    enforcement modes of the enclaves the guard accepts permits from (``--expected-mode``).

    The guard trusts the chart's signed releases: :meth:`ClusterDemo._start_upstream` mounts the
    chart's release ConfigMap into it (:func:`mount_release`)."""
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    hardened = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }

    def container(name: str, command: list[str], port: int, loopback: bool = False,
                  image: str = image) -> dict[str, Any]:
        # a kubelet's tcpSocket probe dials the pod IP: a loopback listener is probed from inside
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"
        probe: dict[str, Any] = (
            {"exec": {"command": ["python", "-c", connect]}} if loopback else {"tcpSocket": {"port": port}}
        )
        return {
            "name": name,
            "image": image,
            "command": command,
            "env": env,
            "ports": [{"name": name, "containerPort": port}],
            "readinessProbe": {**probe, "periodSeconds": 1},
            "securityContext": hardened,
        }

    fixed = list(more_enclaves) if route is not None else [(enclave, bundle_hash), *more_enclaves]
    trusted = [
        arg for address, digest in fixed for arg in ("--enclave", address, "--expected-bundle-hash", digest)
    ]
    if route is not None:
        trusted += ["--route", f"{namespace}/{route}", "--expected-bundle-hash", bundle_hash]
    trusted += [arg for mode in modes for arg in ("--expected-mode", mode)]
    containers = [
        container(
            "mcp",
            ["python", "-m", server_module, "--listen", f"127.0.0.1:{MCP_PORT}", *server_args],
            MCP_PORT,
            loopback=True,
        ),
        container(
            "guard",
            [
                "cmcp-guard",
                "--listen",
                f"$(POD_IP):{GUARD_PORT}",
                "--upstream",
                f"http://127.0.0.1:{MCP_PORT}",
                "--audience",
                AUDIENCE,
                *trusted,
                "--allow-simulated",
                "--refresh-seconds",
                "5",
            ],
            GUARD_PORT,
            image=guard_image,
        ),
    ]
    if route is not None:
        containers[1]["volumeMounts"] = [{"name": "guard-api-access", "mountPath": SA_DIR, "readOnly": True}]
    if wiretap:
        containers.append(
            container(
                "tap",
                [
                    "python",
                    "-m",
                    "cmcp_devkit.demo_tap",
                    "--listen",
                    f"$(POD_IP):{TAP_PORT}",
                    "--forward",
                    f"http://$(POD_IP):{GUARD_PORT}",
                ],
                TAP_PORT,
            )
        )
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # mcp server and wiretap need no cluster access
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        **(where or {}),
    }
    if route is not None:
        spec["serviceAccountName"] = service_account
        spec["volumes"] = [_token_volume()]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "cmcp-demo"},
        },
        "spec": spec,
    }


def mount_release(pod: dict[str, Any], helm_release: str) -> dict[str, Any]:
    """``pod`` with the chart's release ConfigMap mounted into its ``guard`` container, whose
    ``--release-manifest``/``--release-key`` flags name the files: the guard trusts exactly the
    releases the operator and gateway trust."""
    mount = chart_release.guard_mount(helm_release)
    spec = pod["spec"]
    spec["volumes"] = [*spec.get("volumes", []), mount.volume]
    for container in spec["containers"]:
        if container["name"] == "guard":
            container["volumeMounts"] = [*container.get("volumeMounts", []), mount.volume_mount]
            container["command"] = [*container["command"], *mount.args]
    return pod


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything resolved from the command line before anything touches the cluster."""

    tools: Tools
    namespace: str
    chart: Path
    profile: Path
    bundle_dir: Path
    keep: bool
    values: tuple[Path, ...] = ()  # --values files, after the profile

    def helm_values(self) -> list[str]:
        """``-f`` for the profile and each ``--values`` file, in order."""
        return [arg for path in (self.profile, *self.values) for arg in ("-f", str(path))]

    @functools.cached_property
    def merged(self) -> dict[str, Any]:
        """The values every helm call of the run sees (read once: the files do not change mid-run)."""
        return merged_values(self.chart, self.profile, *self.values)


@dataclass
class ClusterDemo:
    """One installation's life: install, tell the story, uninstall (also after a failure)."""

    console: Console
    settings: Settings
    out: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    created_namespace: bool = False
    installed: bool = False
    endpoints: dict[str, str] = field(default_factory=dict)
    release: str = RELEASE  # the conformance e2e test installs under another name
    _enclave_release: DevRelease | None = None

    @property
    def tools(self) -> Tools:
        return self.settings.tools

    @property
    def enclave_release(self) -> DevRelease:
        """The signed dev release (the genuine simulated guest, the chart's enclave image) the
        operator, gateway, guard and the auditor's commands trust; written on first use."""
        if self._enclave_release is None:
            image = enclave_image(self.settings.merged)
            self._enclave_release = write_dev_release(self.out / "run" / "release", image=image)
        return self._enclave_release

    @property
    def ns(self) -> str:
        return self.settings.namespace

    @property
    def tee(self) -> str:
        return route_tee(self.settings.merged)

    def hint(self, extra: str = "") -> str:
        """The next action after a failed step: where the cluster-side evidence is."""
        return (
            (extra + "; " if extra else "")
            + f"see {demo_story._rel(self.out / 'run' / 'cluster-state.txt')} and "
            f"`kubectl -n {self.ns} get pods,mcproutes,policybundles -o wide`; re-run with --keep to inspect"
        )

    def run(self) -> Run:
        """Sections 1-4; the cluster is cleaned up before this returns or raises (unless --keep)."""
        # grpc and protobuf (under TargetDeployment) load here, not at start-up: every cmcpctl
        # command imports this module (``demo --cluster``'s flags) and would pay for them.
        from cmcp_conformance.target import TargetDeployment

        run = Run(out=self.out)
        console = self.console
        bundle_dir = self.settings.bundle_dir
        console.heading("1. Install cMCP on the cluster (helm install + kubectl apply)")
        with console.progress(f"cluster reachable ({self.tools.kubeconfig})"):
            self._preflight()
        try:
            loaded = load_bundle(bundle_dir)
        except Exception as exc:  # a broken bundle must read as a bundle problem, not a traceback
            raise DemoFailure(
                f"cannot load the bundle: {exc}",
                f"run `cmcpctl bundle validate {demo_story._rel(bundle_dir)}` and fix what it reports",
            ) from exc
        run.bundle_hash = loaded.bundle_hash
        run.release_argv = demo_story.publish_release(self.out, self.enclave_release)
        try:
            self._install()
            enclave = self._apply_bundle_and_route(run.bundle_hash)
            self._start_upstream(enclave, run.bundle_hash)
            gateway = self._add_gateway()
            pod_ip = self.endpoints["upstream"]
            target = TargetDeployment(
                name="cluster",
                mcp_url=f"{gateway}/mcp/{ROUTE}",
                token=self.token,
                enclave_address=enclave,
                upstream_url=f"http://{pod_ip}:{GUARD_PORT}/mcp",
                upstream_audience=AUDIENCE,
                upstream_counter_url=f"http://{pod_ip}:{GUARD_PORT}/calls",
                allow_simulated=True,
                appraisal=AppraisalPolicy(releases=(self.enclave_release.release,)),
                expected_bundle_hash=run.bundle_hash,
                bundle_dir=bundle_dir,
                audit_store=self._gateway_audit_store(),
                gateway_key=self._gateway_key(),
            )
            console.table(
                ["component", "address", "note"],
                [
                    [
                        "operator",
                        f"{self.release}-operator ({self.ns})",
                        "attested the enclave (McpRoute status)",
                    ],
                    ["enclave pod", enclave, f"bundle {run.bundle_hash[:23]}…, tee {self.tee}"],
                    [
                        "guarded upstream",
                        str(target.upstream_url),
                        f"pod {UPSTREAM_POD}: mcp + cmcp-guard + wiretap",
                    ],
                    ["gateway route", target.mcp_url, f"agent token in Secret {TOKENS_SECRET}"],
                ],
            )
            demo_story.tell_story(console, run, target, str(target.upstream_url), f"http://{pod_ip}:{TAP_PORT}")
        except BaseException:
            self._save_state()
            raise
        finally:
            if self.settings.keep:
                console.line(f"  --keep: release {self.release} in namespace {self.ns} left installed")
                console.line(
                    f"  remove it with: helm uninstall {self.release} -n {self.ns} "
                    "(after deleting the route and bundle)"
                )
            else:
                with console.progress(f"helm uninstall {self.release} (route and bundle deleted first)"):
                    problems = self._teardown()
                run.checks.append(
                    (
                        "cleanup: route, bundle, upstream, release removed",
                        not problems,
                        "; ".join(problems) or "ok",
                    )
                )
        demo_story.auditor_commands(console, run)
        return run

    # --- section 1 steps ----------------------------------------------------------------

    def _preflight(self) -> None:
        """The cluster answers, the CRDs can be installed, and no other cMCP release is there."""
        try:
            self.tools.kubectl("get", "--raw", "/readyz", timeout=30)
        except ToolError as exc:
            raise DemoFailure(
                f"the cluster does not answer: {exc}",
                "check the kubeconfig (`kubectl --kubeconfig PATH get nodes`), or run `make demo-cluster` "
                "to start the local control plane",
            ) from exc
        hook = self.tools.get("validatingwebhookconfiguration", WEBHOOK_CONFIG)
        if hook is None:
            return
        meta = hook["metadata"]
        annotations = meta.get("annotations") or {}
        owner = (
            annotations.get("meta.helm.sh/release-name"),
            annotations.get("meta.helm.sh/release-namespace"),
        )
        if (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") != "Helm":
            raise DemoFailure(
                f"the webhook configuration {WEBHOOK_CONFIG} exists but no Helm release owns it "
                "(an operator ran outside Helm)",
                f"delete it: `kubectl delete validatingwebhookconfiguration,mutatingwebhookconfiguration "
                f"{WEBHOOK_CONFIG}`, then run the demo again",
            )
        if owner != (self.release, self.ns):
            raise DemoFailure(
                f"another cMCP release is installed ({owner[0]} in namespace {owner[1]}); the operator's "
                "webhook allows one release per cluster",
                f"uninstall it (`helm uninstall {owner[0]} -n {owner[1]}`) or use another cluster",
            )

    def _install(self) -> None:
        console, tools = self.console, self.tools
        run_dir = self.out / "run"
        with console.progress(f"namespace {self.ns} and the agent's token Secret {TOKENS_SECRET}"):
            self.created_namespace = tools.get("namespace", self.ns) is None
            tools.apply(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}},
                run_dir / "namespace.yaml",
            )
            # kubectl apply from stdin: the token never lands in the output folder
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": TOKENS_SECRET, "namespace": self.ns},
                "stringData": {AGENT: self.token},
            }
            tools.kubectl("apply", "-f", "-", input=json.dumps(secret))
        values = run_dir / "values-install.yaml"
        values.write_text(yaml.safe_dump(install_values(self.enclave_release)), encoding="utf-8")
        chart, files = self.settings.chart, [self.settings.profile, *self.settings.values]
        with console.progress(
            f"helm upgrade --install {self.release} {demo_story._rel(chart)} "
            + " ".join(f"-f {path.name}" for path in files)
        ):
            self.installed = True  # from here on, teardown uninstalls (even a half-done install)
            tools.helm(
                "upgrade", "--install", self.release, str(chart), "-n", self.ns,
                *self.settings.helm_values(), "-f", str(values),
            )
        with console.progress("operator available and serving its admission webhook"):
            wait_for(
                "the operator Deployment to be available",
                lambda: self._available(f"{self.release}-operator"),
                WAIT,
                self.hint("the operator pod must start (image, ServiceAccount, RBAC)"),
            )
            wait_for(
                f"the operator to fill the webhook configuration {WEBHOOK_CONFIG}",
                lambda: (self.tools.get("validatingwebhookconfiguration", WEBHOOK_CONFIG) or {}).get(
                    "webhooks"
                ),
                WAIT,
                self.hint("the operator's log says why its webhook server did not start"),
            )

    def _apply_bundle_and_route(
        self,
        bundle_hash: str,
        *,
        bundle_dir: Path | None = None,
        bundle_name: str = BUNDLE_NAME,
        route: dict[str, Any] | None = None,
    ) -> str:
        """Apply both objects; return the attested enclave's gRPC address (``IP:PORT``).

        Defaults: the demo's bundle and route; the conformance e2e test passes its own."""
        console, tools, run_dir = self.console, self.tools, self.out / "run"
        bundle_dir = bundle_dir or self.settings.bundle_dir
        route = route or mcp_route(self.ns, self.tee)
        route_name = str(route["metadata"]["name"])
        bundle_file = (
            "policybundle.yaml" if bundle_name == BUNDLE_NAME else f"policybundle-{bundle_name}.yaml"
        )
        route_file = "mcproute.yaml" if route_name == ROUTE else f"mcproute-{route_name}.yaml"
        manifest = bundle_manifest(bundle_dir, bundle_name, self.ns)
        with console.progress(f"kubectl apply PolicyBundle {bundle_name} ({demo_story._rel(bundle_dir)})"):
            # the webhook answers a moment after the configuration is filled: retry until admitted
            def admitted() -> bool:
                tools.apply(manifest, run_dir / bundle_file)
                return True

            wait_for(
                "the PolicyBundle to be admitted",
                admitted,
                60,
                self.hint("the admission webhook rejected the bundle or did not answer"),
            )
            bundle = wait_for(
                "the PolicyBundle to be Ready",
                lambda: self._ready("policybundle", bundle_name),
                WAIT,
                self.hint("the PolicyBundle's status conditions say why"),
            )
        reported = bundle.get("status", {}).get("bundleHash")
        if reported != bundle_hash:
            raise DemoFailure(
                f"the cluster computed bundle hash {reported}, the local files hash to {bundle_hash}",
                self.hint("apply the bundle again; the operator and cmcpctl must be the same version"),
            )
        tee = route["spec"]["tee"]
        with console.progress(f"kubectl apply McpRoute {route_name} (tee: {tee}); enclave pod attested"):
            tools.apply(route, run_dir / route_file)

            def attested() -> dict[str, Any] | None:
                found = self._ready("mcproute", route_name)
                pods = [p for p in (found or {}).get("status", {}).get("pods", []) if p.get("attested")]
                return pods[0] if pods and pods[0].get("address") else None

            entry = wait_for(
                "the McpRoute to be Ready with an attested enclave",
                attested,
                WAIT,
                self.hint("status.pods[].reason of the McpRoute names the step that failed"),
            )
        if entry.get("reportedBundleHash") != bundle_hash:
            raise DemoFailure(
                f"the enclave reports bundle {entry.get('reportedBundleHash')}, expected {bundle_hash}",
                self.hint(),
            )
        address = str(entry["address"])
        return address if ":" in address else f"{address}:50051"

    def _start_upstream(
        self,
        enclave: str,
        bundle_hash: str,
        *,
        pod_doc: dict[str, Any] | None = None,
        guard_routes: Sequence[str] = (ROUTE,),
    ) -> None:
        """Run the demo's upstream pod (or ``pod_doc``, an :func:`upstream_pod` of the caller's),
        after the guard's identity allowed to read ``guard_routes`` (none: no identity)."""
        image, guard = self.image("demo"), self.image("guard")
        doc = mount_release(pod_doc or upstream_pod(self.ns, image, guard, enclave, bundle_hash, route=ROUTE,
                                                    where=self.upstream_placement()),
                            self.release)
        if guard_routes:
            names = ", ".join(guard_routes)
            with self.console.progress(f"kubectl apply ServiceAccount {GUARD_SA} (get McpRoute {names})"):
                for obj in guard_rbac(self.ns, guard_routes):
                    kind = str(obj["kind"]).lower()
                    self.tools.apply(obj, self.out / "run" / f"guard-{kind}.yaml")
        name = str(doc["metadata"]["name"])
        parts = " + ".join(
            {"mcp": "mcp server", "guard": "cmcp-guard", "tap": "wiretap"}.get(c["name"], c["name"])
            for c in doc["spec"]["containers"]
        )
        with self.console.progress(f"kubectl apply Pod {name} ({parts})"):
            self.tools.apply(doc, self.out / "run" / "upstream-pod.yaml")
            pod = wait_for(
                f"the pod {name} to be Ready",
                lambda: self._pod_ready(self.tools.get("pod", name, self.ns)),
                WAIT,
                self.hint(f"images {image} and {guard} must be pullable on the node "
                          "(`python -m cmcp_devkit.images demo guard` builds them)"),
            )
        self.endpoints["upstream"] = str(pod["status"]["podIP"])

    def _gateway_audit_store(self) -> str | None:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=gateway"
        uids = [str(p["metadata"]["uid"]) for p in self.tools.list("pods", self.ns, selector)]
        return local_gateway_audit_store(uids)

    def _gateway_key(self) -> Ed25519PrivateKey:
        """The chart's gateway identity (its Secret): the demo's auditor asks the enclave for the
        session's Trust Record as the gateway may, since no other caller is taken."""
        raw = self.tools.kubectl("get", "secret", f"{self.release}-gateway-identity", "-n", self.ns,
                                 "-o", "jsonpath={.data.gateway-key\\.pem}").stdout
        key = load_pem_private_key(base64.b64decode(raw.strip()), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ToolError("the chart's gateway identity Secret holds no Ed25519 key")
        return key

    def _add_gateway(self, routes: list[dict[str, Any]] | None = None) -> str:
        """``helm upgrade`` with the route (or the caller's ``gateway.routes``); return the
        gateway pod's base URL."""
        upstream = f"http://{self.endpoints['upstream']}:{TAP_PORT}/mcp"
        if routes is None:
            routes = gateway_values(self.ns, upstream)["gateway"]["routes"]
        doc = {"gateway": {"replicas": 1, "routes": routes}}
        names = ", ".join(str(r["name"]) for r in routes)
        values = self.out / "run" / "values-gateway.yaml"
        values.write_text(yaml.safe_dump(doc), encoding="utf-8")
        install = self.out / "run" / "values-install.yaml"
        label = "route" if len(routes) == 1 else "routes"
        with self.console.progress(f"helm upgrade {self.release}: the gateway for {label} {names}"):
            self.tools.helm(
                "upgrade", self.release, str(self.settings.chart), "-n", self.ns,
                *self.settings.helm_values(), "-f", str(install), "-f", str(values),
            )
            wait_for(
                "the gateway Deployment to be available",
                lambda: self._available(f"{self.release}-gateway"),
                WAIT,
                self.hint("the gateway pod's log says why it is not Ready"),
            )
            pod = wait_for(
                "a Ready gateway pod",
                lambda: next(
                    (
                        p
                        for p in self.tools.list(
                            "pods",
                            self.ns,
                            f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=gateway",
                        )
                        if self._pod_ready(p)
                    ),
                    None,
                ),
                WAIT,
                self.hint(),
            )
        ip = str(pod["status"]["podIP"])
        try:
            with socket.create_connection((ip, GATEWAY_PORT), timeout=3):
                pass
        except OSError as exc:
            raise DemoFailure(
                f"this machine cannot reach the gateway pod at {ip}:{GATEWAY_PORT} ({exc})",
                "the demo calls pods at their pod IPs: run it where the pod network is routable "
                "(the local control plane of `make demo-cluster` is)",
            ) from exc
        self.endpoints["gateway"] = f"http://{ip}:{GATEWAY_PORT}"
        return self.endpoints["gateway"]

    def image(self, name: str) -> str:
        """The ``cmcp-<name>`` image (guard, demo) from the merged values' registry (:func:`demo_image`)."""
        return demo_image(self.settings.merged, self.settings.chart, name)

    def upstream_placement(self) -> dict[str, Any]:
        """Where the upstream pod goes: the gateway's placement in the merged values."""
        return placement(self.settings.merged)

    # --- probes -------------------------------------------------------------------------

    def _available(self, deployment: str) -> dict[str, Any] | None:
        d = self.tools.get("deployment", deployment, self.ns)
        if d is None:
            return None
        st, want = d.get("status", {}), d["spec"].get("replicas", 1)
        done = (
            st.get("observedGeneration") == d["metadata"]["generation"]
            and st.get("availableReplicas") == want
            and st.get("updatedReplicas") == want
            and st.get("replicas") == want
        )
        return d if done else None

    def _ready(self, kind: str, name: str) -> dict[str, Any] | None:
        obj = self.tools.get(f"{kind}.{GROUP}", name, self.ns)
        return obj if obj is not None and _condition(obj, "Ready") == "True" else None

    @staticmethod
    def _pod_ready(pod: dict[str, Any] | None) -> dict[str, Any] | None:
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        return pod if _condition(pod, "Ready") == "True" and pod.get("status", {}).get("podIP") else None

    # --- cleanup and diagnostics ----------------------------------------------------------

    def _save_state(self) -> None:
        """What the cluster looked like when something failed (best effort: it may be unreachable)."""
        path = self.out / "run" / "cluster-state.txt"
        parts = []
        for args in (
            ("get", "pods,deployments", "-n", self.ns, "-o", "wide"),
            ("get", f"mcproutes.{GROUP},policybundles.{GROUP}", "-n", self.ns, "-o", "yaml"),
            ("get", "events", "-n", self.ns, "--sort-by=.lastTimestamp"),
        ):
            with contextlib.suppress(ToolError):
                proc = self.tools.kubectl(*args, check=False, timeout=30)
                parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        with contextlib.suppress(OSError):
            path.write_text("\n".join(parts), encoding="utf-8")

    def _teardown(self) -> list[str]:
        """Routes and bundles first (the operator's finalizers need the operator), then the release.

        Every command runs even if one fails (a half-installed release must still go); the failures
        are returned, become a failed check, and say what to remove by hand."""
        tools, ns = self.tools, self.ns
        problems: list[str] = []

        def step(*args: str, timeout: float = 150.0, helm: bool = False) -> None:
            try:
                (tools.helm(*args, timeout=timeout) if helm else tools.kubectl(*args, timeout=timeout))
            except ToolError as exc:
                problems.append(str(exc))

        step("delete", f"mcproute.{GROUP}", ROUTE, "-n", ns, "--ignore-not-found", "--timeout=120s")
        step("delete", f"policybundle.{GROUP}", BUNDLE_NAME, "-n", ns, "--ignore-not-found", "--timeout=120s")
        step("delete", "pod", UPSTREAM_POD, "-n", ns, "--ignore-not-found", "--timeout=60s")
        step("delete", "rolebinding,role,serviceaccount", GUARD_SA, "-n", ns, "--ignore-not-found")
        if self.installed:
            step(
                "uninstall",
                self.release,
                "-n",
                ns,
                "--ignore-not-found",
                "--wait",
                "--timeout",
                "120s",
                helm=True,
            )
        step("delete", "secret", TOKENS_SECRET, "-n", ns, "--ignore-not-found")
        if self.created_namespace:
            step("delete", "namespace", ns, "--ignore-not-found", "--wait=false")
        for text in problems:
            self.console.line(f"  {self.console.fail_mark} cleanup: {text}")
        if problems:
            self.console.line(
                f"  next: run `helm uninstall {self.release} -n {ns}` and "
                f"`kubectl delete namespace {ns}` by hand"
            )
        return problems


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Kubeconfig, binaries, chart and bundle, or a :class:`DemoFailure` naming what to do."""
    kubeconfig = getattr(args, "kubeconfig", None) or os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise DemoFailure(
            "no kubeconfig: --cluster needs a cluster to install into",
            "run `make demo-cluster` (starts the local control plane and passes its kubeconfig), "
            "or pass --kubeconfig PATH (or set KUBECONFIG)",
        )
    if not Path(kubeconfig).is_file():
        raise DemoFailure(
            f"the kubeconfig {kubeconfig} does not exist", "pass --kubeconfig PATH of an existing file"
        )
    found: dict[str, str] = {}
    for name in ("helm", "kubectl"):
        given = getattr(args, name, None)
        path = given or shutil.which(name)
        if not path or not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise DemoFailure(
                f"no {name} binary" + (f" at {given}" if given else " on PATH"),
                f"install {name} or pass --{name} PATH (`make demo-cluster` uses the cached one)",
            )
        found[name] = str(path)
    root = _source_root()
    chart = root / "charts" / "cmcp"
    profile = chart / "ci" / "simulated-values.yaml"
    if not (chart / "Chart.yaml").is_file() or not profile.is_file():
        raise DemoFailure(
            f"no chart at {chart}", "run from a checkout of the repository (`pip install -e .`)"
        )
    bundle_arg = getattr(args, "bundle", None)
    bundle_dir = Path(bundle_arg).resolve() if bundle_arg else demo_story.default_bundle_dir()
    if not (bundle_dir / "manifest.json").is_file():
        raise DemoFailure(f"no policy bundle at {bundle_dir}", "pass --bundle DIR (e.g. examples/realistic)")
    values = tuple(Path(v).resolve() for v in getattr(args, "values", None) or ())
    for path in values:
        try:
            if not isinstance(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise DemoFailure(f"--values {path}: {exc}",
                              "pass a readable Helm values file (a YAML mapping)") from exc
    return Settings(
        tools=Tools(found["kubectl"], found["helm"], Path(kubeconfig).resolve()),
        namespace=str(getattr(args, "namespace", None) or DEFAULT_NAMESPACE),
        chart=chart,
        profile=profile,
        bundle_dir=bundle_dir,
        keep=bool(getattr(args, "keep", False)),
        values=values,
    )


def _explain_failures(console: Console, run: Run, namespace: str) -> None:
    """Which expected outcome did not happen, and where the cluster keeps the evidence."""
    console.line()
    console.line(f"{console.fail_mark} Some expected outcomes did not happen:")
    for s in run.steps:
        if not s.passed:
            got = s.error or f"{s.actual_code or 'allowed'}, upstream ran: {s.executed}"
            console.line(
                f"  - step '{s.title}': expected {s.expect_code or 'allowed'} "
                f"(upstream ran: {s.expect_executed}), got {got}."
            )
    for name, ok, detail in run.checks:
        if not ok:
            console.line(f"  - {name}: {detail}")
    console.line(
        f"  next: re-run with --keep and read the gateway, guard and enclave pods' logs in namespace "
        f"{namespace}; re-check the rule with `cmcpctl bundle validate examples/realistic`."
    )


def run_cluster(args: argparse.Namespace, console: Console) -> int:
    """Entry point for ``cmcpctl demo --cluster``; returns the exit code."""
    import grpc  # at run time only, for the reason in ClusterDemo.run

    try:
        settings = resolve_settings(args)
    except DemoFailure as exc:
        console.line(f"{console.fail_mark} {exc}")
        console.line(f"  next: {exc.hint}")
        return 2
    started = time.monotonic()
    out = demo_story.prepare_out(getattr(args, "out", None))
    settings.tools.log = out / "run" / "kubectl-helm.log"
    console.line("cMCP demo on Kubernetes: the chart's operator attests an enclave pod (simulated TEE);")
    console.line("the gateway only relays; the upstream's guard runs nothing without the enclave's permit.")
    commands_log = demo_story._rel(settings.tools.log)
    console.line(f"Output folder: {demo_story._rel(out)}   (commands run: {commands_log})")
    demo = ClusterDemo(console, settings, out)
    try:
        run = demo.run()
    except DemoFailure as exc:
        return demo_story.report_stop(console, str(exc), exc.hint, exit_code=2)
    except (ToolError, httpx.HTTPError, grpc.RpcError, OSError, RuntimeError) as exc:
        return demo_story.report_stop(console, f"the demo stopped: {type(exc).__name__}: {exc}", demo.hint())
    if demo_story.report_success(console, run, time.monotonic() - started, where="on the cluster "):
        return 0
    _explain_failures(console, run, settings.namespace)
    return 1


__all__: list[str] = ["add_cluster_arguments", "run_cluster"]
