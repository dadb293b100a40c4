"""The operator's RBAC is least privilege for real: every grant is needed, nothing else is given.

The operator runs with exactly what the chart gives it: ``helm template`` renders the release
(default ``watchScope: namespaces``, the simulated profile with the real node's values:
``E2ECluster.real_chart_values``) into a fresh namespace, the test
applies the rendered ServiceAccount, Role/RoleBinding, ClusterRole/ClusterRoleBinding and webhook
configurations, and runs ``cmcp-operator`` with the rendered Deployment's scope and attestation
flags under a token of that ServiceAccount (its only credential). Pod-specific flags (files
mounted into the pod, the in-cluster webhook Service) become their host equivalents (the dev
release files, a URL-mode webhook); none of them changes what the operator asks the apiserver.

Then, one grant at a time (each entry of :data:`cmcp_operator.rbac.GRANTS` the default install
renders), the grant is removed from the rendered role and the same scenario runs: the operator
must fail visibly, with the apiserver's 403 naming the missing verb and resource in its log.
The full role runs the whole scenario to the end (webhook filled, bundle Ready, a superseded
bundle ConfigMap collected, an Event posted, an attested enclave pod). And the operator's own
token is refused what a compromised operator would want: Deployments in a namespace it does not
watch, Secrets, another webhook configuration, creating webhook configurations, listing namespaces.

The enclave pods are real: the routes are ``tee: tdx``, so the operator (rendered flags: this run's
enclave image by digest, ``--runtime-class-tdx`` naming a RuntimeClass of the real node's
``kata-qemu-tdx`` handler) starts containers of the enclave image on
the session's real node, whose OCI hook and TSM stand-in give the enclave's real ``tdx`` provider
simulated TDX evidence of its own initdata (software-only, accepted by ``--allow-simulated``); the
signed release is ``real_release``, which pins that image. The operator itself stays a host process
under the ServiceAccount's token: what the apiserver allows depends on that token only, the same one
a pod's projected token is (the operator as a real container under the chart's roles is
test_chart_real_pods.py), and the weakened operator below is test code no image carries.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_core.crd import API_PATH
from cmcp_devkit.cluster.kube import Kube, KubeError
from cmcp_devkit.ports import free_port
from cmcp_devkit.release import DevRelease
from cmcp_operator import rbac
from cmcp_operator.render_bundle import bundle_manifest, dump

from .conftest import E2ECluster, release_values

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "cmcp"
PROFILE = CHART / "ci" / "simulated-values.yaml"
REL = "cmcp"
REAL_TDX_CLASS = f"kata-qemu-tdx-lp-{uuid.uuid4().hex[:6]}"  # the kata-qemu-tdx handler, on the real node
BUNDLE, ROUTE = "minimal", "echo"
STALE_HASH = "sha256:" + "0" * 64  # a revision no history holds: the operator must collect it
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
WEBHOOK_PATHS = [f"{ADMISSION}/{kind}/{rbac.WEBHOOK_CONFIGURATION}" for kind in rbac.WEBHOOK_KINDS]
WEBHOOK_PORT = free_port()  # one port for every run: a left-over pod-gate entry stays answerable
# Rendered flags that do not depend on where the process runs (the rest name pod paths).
PORTABLE_FLAGS = (
    "--namespace=",
    "--all-namespaces",
    "--allow-simulated",
    "--acceptable-tcb=",
    "--reattest-interval=",
    "--attest-timeout=",
    "--initdata-algorithm=",
    "--runtime-class-",
    "--enclave-image=",
    "--peering=",
    "--verbose",
)
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
# rbac.rules(mode="namespaces") lists the namespaced-mode grants in GRANTS order
GRANTS_INDEX = {id(g): i for i, g in enumerate(g for g in rbac.GRANTS if g.mode in ("both", "namespaces"))}
# The grants a default install renders (namespaced mode, webhook on, peering off), and the ones
# operator.peering.enabled adds (Kopf's leader election between replicas).
DEFAULT_GRANTS = [g for g in rbac.GRANTS if g.mode in ("both", "namespaces") and g.feature != "peering"]
PEERING_GRANTS = [g for g in rbac.GRANTS if g.mode == "namespaces" and g.feature == "peering"]
PEERING = ("--set", "operator.peering.enabled=true")
CLUSTER_MODE = ("--set", "operator.watchScope=cluster", *PEERING)  # the opt-in, ClusterKopfPeering


@pytest.fixture(scope="module")
def crds(cluster: E2ECluster) -> Iterator[None]:
    if not cluster.is_local:
        pytest.skip("needs enclave images the cluster's nodes can run (the local cluster's)")
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "-f", str(crd))
    for crd in ("policybundles.cmcp.dev", "mcproutes.cmcp.dev"):
        cluster.kube.wait_for(
            f"CRD {crd} established",
            lambda c=crd: any(
                x["type"] == "Established" and x["status"] == "True"
                for x in (
                    cluster.kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{c}").get(
                        "status"
                    )
                    or {}
                ).get("conditions")
                or []
            ),
        )
    yield
    # Another file's install must not meet our configurations (the pod gate fails closed).
    for path in WEBHOOK_PATHS:
        cluster.kube.delete(path)


@dataclass(frozen=True)
class RealPods:
    """What every render here adds: values putting the enclave pods on the real node, and the
    signed release pinning the enclave image they run."""

    values: Path
    release: DevRelease


@pytest.fixture(scope="module")
def real_pods(
    cluster: E2ECluster, crds: None, real_release: DevRelease, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealPods]:
    values = tmp_path_factory.mktemp("values") / "real-pods.yaml"
    values.write_text(yaml.safe_dump(cluster.real_chart_values(REAL_TDX_CLASS)), encoding="utf-8")
    with cluster.real_tdx_runtime_class(REAL_TDX_CLASS):
        yield RealPods(values, real_release)


@dataclass
class Release:
    """One rendered release in one namespace: its RBAC objects and its operator's flags."""

    cluster: E2ECluster
    namespace: str
    docs: list[dict[str, Any]]
    real: RealPods

    @classmethod
    def render(cls, cluster: E2ECluster, namespace: str, real: RealPods, *values: str) -> Release:
        out = cluster.helm(
            "template",
            REL,
            str(CHART),
            "-n",
            namespace,
            "-f",
            str(PROFILE),
            "-f",
            str(real.values),
            *release_values(real.release),
            *values,
        ).stdout
        return cls(cluster, namespace, [d for d in yaml.safe_load_all(out) if d], real)

    def operator_objects(self, kind: str) -> list[dict[str, Any]]:
        return [
            d
            for d in self.docs
            if d["kind"] == kind
            and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
        ]

    def without(self, perm: Permission) -> Release:
        """This release with one verb on one resource taken out of the role that grants it
        (the rest of that rule stays granted)."""
        docs = yaml.safe_load(yaml.safe_dump(self.docs))
        kind = "ClusterRole" if perm.grant.where == "cluster" else "Role"
        rule = rbac.rules(mode="namespaces", peering_name=self.peering_name())[GRANTS_INDEX[id(perm.grant)]]
        removed = 0
        for doc in docs:
            if doc["kind"] == kind and "rules" in doc and rule in doc["rules"]:
                removed += 1
                rest = [
                    {
                        **rule,
                        "resources": [res],
                        "verbs": [v for v in rule["verbs"] if (res, v) != (perm.resource, perm.verb)],
                    }
                    for res in rule["resources"]
                ]
                doc["rules"] = [r for r in doc["rules"] if r != rule] + [r for r in rest if r["verbs"]]
        assert removed, f"the rendered {kind} has no rule {rule}"
        return Release(self.cluster, self.namespace, docs, self.real)

    def peering_name(self) -> str:
        return next((d["metadata"]["name"] for d in self.docs if d["kind"] == "KopfPeering"), "")

    def apply(self) -> None:
        objs = [
            d
            for kind in (*RBAC_KINDS, "KopfPeering", "ClusterKopfPeering")
            for d in self.operator_objects(kind)
        ]
        objs += [d for d in self.docs if d["kind"].endswith("WebhookConfiguration")]
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))
        for path in WEBHOOK_PATHS:  # a previous run's entries: the new operator fills them in
            self.cluster.kube.patch(path, {"webhooks": None})

    def argv(self) -> list[str]:
        deployment = next(
            d for d in self.docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{REL}-operator"
        )
        rendered = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return [
            *[a for a in rendered if a.startswith(PORTABLE_FLAGS)],
            *self.real.release.argv(),
            "--webhook-port",
            str(WEBHOOK_PORT),
            "--webhook-host",
            "127.0.0.1",
            "--webhook-listen",
            "127.0.0.1",
        ]

    def token(self) -> str:
        sa = self.operator_objects("ServiceAccount")[0]["metadata"]["name"]
        tr = self.cluster.kube.create(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )
        return str(tr["status"]["token"])

    def kubeconfig(self, path: Path) -> Path:
        """The ServiceAccount's token and nothing else (what the pod's projected token is)."""
        ca = base64.b64encode(Path(self.cluster.ca_file).read_bytes()).decode()
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "sa",
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {"server": self.cluster.server, "certificate-authority-data": ca},
                        }
                    ],
                    "users": [{"name": "sa", "user": {"token": self.token()}}],
                    "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
                }
            )
        )
        return path


class Operator:
    """``cmcp-operator`` as a process under the release's ServiceAccount token."""

    def __init__(
        self, release: Release, workdir: Path, *, weaken: str | None = None, kubeconfig: Path | None = None
    ) -> None:
        self.log = workdir / "operator.log"
        cmd = [str(Path(sys.executable).with_name("cmcp-operator"))]
        if weaken:  # test code only: run main() after ``weaken`` (a statement) changed the operator
            cmd = [
                sys.executable,
                "-c",
                f"import sys; {weaken}; from cmcp_operator.main import main; main(sys.argv[1:])",
            ]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or release.kubeconfig(workdir / "kubeconfig"))}
        self.proc = subprocess.Popen(
            [*cmd, *release.argv()],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=REPO,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass(frozen=True)
class Permission:
    """One verb on one resource, as one grant gives it."""

    grant: rbac.Grant = field(hash=False, compare=False)
    resource: str
    verb: str

    @property
    def id(self) -> str:
        return f"{self.verb}-{self.resource}".replace("/", "_")

    def forbidden(self) -> re.Pattern[str]:
        """The apiserver's 403 text for exactly this verb and resource (quotes may be escaped)."""
        return re.compile(rf'cannot {self.verb} resource \\*"{re.escape(self.resource)}\\*"')


def permissions(grants: list[rbac.Grant]) -> list[Permission]:
    return [
        Permission(g, res, verb) for g in grants for res in g.rule["resources"] for verb in g.rule["verbs"]
    ]


def start_scenario(cluster: E2ECluster, ns: str) -> None:
    """What a user does: a bundle (with a superseded copy lying around) and a route using it."""
    cluster.kube.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"{BUNDLE}-stale",
                "labels": {"cmcp.dev/policy-bundle": BUNDLE},
                "annotations": {"cmcp.dev/bundle-hash": STALE_HASH},
            },
            "data": {"note": "a superseded revision"},
        },
    )
    bundle = dump(bundle_manifest(REPO / "examples" / "minimal", BUNDLE, ns))
    route = yaml.safe_dump(
        {
            "apiVersion": "cmcp.dev/v1alpha1",
            "kind": "McpRoute",
            "metadata": {"name": ROUTE, "namespace": ns},
            "spec": {
                "upstream": {"url": "http://echo-upstream.example/mcp"},
                "policyBundleRef": {"name": BUNDLE},
                "replicas": 1,
                "tee": "tdx",
            },
        }
    )
    for doc in (bundle, route):  # the admission webhook may be registering right now: retry
        cluster.kube.wait_for(
            "kubectl apply",
            lambda d=doc: cluster.kubectl("apply", "-f", "-", input=d, check=False).returncode == 0,
            timeout=60,
        )


def release_finalizers(kube: Kube, ns: str) -> None:
    """The operator is gone: let the namespace's deletion finish without it."""
    for path in (
        f"{API_PATH}/namespaces/{ns}/mcproutes/{ROUTE}",
        f"{API_PATH}/namespaces/{ns}/policybundles/{BUNDLE}",
    ):
        try:
            kube.patch(path, {"metadata": {"finalizers": None}})
        except KubeError as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def release(cluster: E2ECluster, real_pods: RealPods, namespace: str) -> Iterator[Release]:
    yield Release.render(cluster, namespace, real_pods)
    release_finalizers(cluster.kube, namespace)
    cluster_scoped = {
        "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterKopfPeering": "/apis/kopf.dev/v1/clusterkopfpeerings",
    }
    for d in Release.render(cluster, namespace, real_pods, *CLUSTER_MODE).docs:
        if (
            d["kind"] in cluster_scoped
            and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
        ):
            cluster.kube.delete(f"{cluster_scoped[d['kind']]}/{d['metadata']['name']}")


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def test_chart_renders_each_default_grant_in_its_role(release: Release) -> None:
    """The parametrised removals below cover every rule the default install grants."""
    rendered = [
        r for kind in ("Role", "ClusterRole") for d in release.operator_objects(kind) for r in d["rules"]
    ]
    key = functools.partial(json.dumps, sort_keys=True)
    assert sorted(map(key, rendered)) == sorted(key(g.rule) for g in DEFAULT_GRANTS)


@pytest.mark.parametrize("values", [(), PEERING, CLUSTER_MODE], ids=["default", "peering", "cluster-mode"])
def test_the_full_role_runs_the_whole_scenario(
    release: Release, values: tuple[str, ...], tmp_path: Path
) -> None:
    kube, ns = release.cluster.kube, release.namespace
    release = Release.render(release.cluster, ns, release.real, *values)
    release.apply()
    op = Operator(release, tmp_path)
    try:
        kube.wait_for(
            "the webhook entries",
            lambda: len(kube.get(WEBHOOK_PATHS[0]).get("webhooks") or []) >= 3,
            timeout=120,
            on_timeout=op.tail,
        )
        start_scenario(release.cluster, ns)

        def done() -> bool:
            bundle = kube.get(f"{API_PATH}/namespaces/{ns}/policybundles/{BUNDLE}")
            route = kube.get(f"{API_PATH}/namespaces/{ns}/mcproutes/{ROUTE}")
            cms = kube.get(
                f"/api/v1/namespaces/{ns}/configmaps", labelSelector=f"cmcp.dev/policy-bundle={BUNDLE}"
            )
            events = kube.get(f"/api/v1/namespaces/{ns}/events")["items"]
            pods = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"cmcp.dev/route={ROUTE}")["items"]
            return (
                _cond(bundle, "Ready").get("status") == "True"
                and f"{BUNDLE}-stale" not in [c["metadata"]["name"] for c in cms["items"]]
                and any(e.get("reason") == "BundleHashChanged" for e in events)
                and _cond(route, "Ready").get("status") == "True"
                and any(_cond(p, "cmcp.dev/attested").get("status") == "True" for p in pods)
            )

        kube.wait_for(
            "bundle Ready, stale copy collected, Event, route Ready, pod attested",
            done,
            timeout=240,
            on_timeout=op.tail,
        )
        assert not re.search(r"cannot \w+ resource", op.text()), op.tail()
        assert op.proc.poll() is None
        assert_real_enclave(release.cluster, ns)
    finally:
        op.stop()


def assert_real_enclave(cluster: E2ECluster, ns: str) -> None:
    """The attested enclave pod is a real container of this run's enclave image on the real node."""
    pods = cluster.kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"cmcp.dev/route={ROUTE}")["items"]
    [pod] = [p for p in pods if _cond(p, "cmcp.dev/attested").get("status") == "True"]
    cluster.assert_real_enclave(pod, REAL_TDX_CLASS)


@pytest.mark.parametrize(
    ("perm", "values"),
    [
        *[pytest.param(p, (), id=p.id) for p in permissions(DEFAULT_GRANTS)],
        *[pytest.param(p, PEERING, id="peering-" + p.id) for p in permissions(PEERING_GRANTS)],
    ],
)
def test_without_each_permission_the_operator_fails_with_a_403(
    release: Release, perm: Permission, values: tuple[str, ...], tmp_path: Path
) -> None:
    weakened = Release.render(release.cluster, release.namespace, release.real, *values).without(perm)
    weakened.apply()
    op = Operator(weakened, tmp_path)
    try:
        start_scenario(release.cluster, release.namespace)
        pattern = perm.forbidden()
        found = release.cluster.kube.wait_for(
            f"a 403 for {perm.verb} {perm.resource} in the operator's log",
            lambda: pattern.search(op.text()),
            timeout=240,
            on_timeout=op.tail,
        )
        line = next(ln for ln in op.text().splitlines() if found.group(0) in ln)
        # The apiserver's refusal, of this ServiceAccount (not a client-side guess).
        assert f"system:serviceaccount:{release.namespace}:{REL}-operator" in line, line
        print(line[:600])  # shown with -rA: which call failed, and how
    finally:
        op.stop()


def test_without_the_read_before_create_the_operator_needs_create(release: Release, tmp_path: Path) -> None:
    """Weakened operator (test code): Kopf's own create-first webhook management needs create on
    every webhook configuration, which the chart does not grant, and the operator fails on it."""
    release.apply()
    op = Operator(
        release,
        tmp_path,
        weaken="import cmcp_operator.webhook as w; w.manage_existing_configuration = lambda: None",
    )
    try:
        release.cluster.kube.wait_for(
            "a 403 on creating the webhook configuration",
            lambda: re.search(
                r'cannot create resource \\*"(validating|mutating)webhookconfigurations', op.text()
            ),
            timeout=120,
            on_timeout=op.tail,
        )
    finally:
        op.stop()


def test_run_by_hand_with_more_rights_the_operator_creates_missing_configurations(
    release: Release, tmp_path: Path
) -> None:
    """Outside the chart (no configuration yet, a user allowed to create one: here the admin),
    reading first falls back to Kopf's create, so a hand-run operator still registers its webhook."""
    kube = release.cluster.kube
    for path in WEBHOOK_PATHS:
        kube.delete(path)
    kube.wait_for("the configurations gone", lambda: not _exists(kube, WEBHOOK_PATHS[0]))
    op = Operator(release, tmp_path, kubeconfig=release.cluster.kubeconfig)
    try:
        kube.wait_for(
            "the operator to create and fill its configuration",
            lambda: (
                _exists(kube, WEBHOOK_PATHS[0]) and len(kube.get(WEBHOOK_PATHS[0]).get("webhooks") or []) >= 3
            ),
            timeout=120,
            on_timeout=op.tail,
        )
        assert _exists(kube, WEBHOOK_PATHS[1])
    finally:
        op.stop()


def _exists(kube: Kube, path: str) -> bool:
    try:
        kube.get(path)
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_the_operator_token_is_refused_outside_its_role(release: Release, tmp_path: Path) -> None:
    cluster, ns = release.cluster, release.namespace
    release.apply()
    other = f"{ns}-other"
    cluster.kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}
    )
    as_operator = Kube.with_token(cluster.server, cluster.ca_file, release.token())
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    vwc = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "attacker"},
    }
    try:
        # Inside the role: allowed (RBAC propagation is immediate; poll to be robust).
        as_operator.wait_for(
            "the Role to take effect",
            lambda: as_operator.get(f"{API_PATH}/namespaces/{ns}/mcproutes") is not None,
        )
        denied = [
            (
                "create Deployments where it does not watch",
                lambda: as_operator.create(f"/apis/apps/v1/namespaces/{other}/deployments", deployment),
            ),
            ("read Secrets it watches", lambda: as_operator.get(f"/api/v1/namespaces/{ns}/secrets")),
            ("read Secrets anywhere", lambda: as_operator.get("/api/v1/secrets")),
            (
                "read ConfigMaps where it does not watch",
                lambda: as_operator.get(f"/api/v1/namespaces/{other}/configmaps"),
            ),
            (
                "create a webhook configuration",
                lambda: as_operator.create(f"{ADMISSION}/validatingwebhookconfigurations", vwc),
            ),
            (
                "patch another webhook configuration",
                lambda: as_operator.patch(
                    f"{ADMISSION}/validatingwebhookconfigurations/attacker", {"webhooks": []}
                ),
            ),
            (
                "delete its own webhook configuration",
                lambda: as_operator.delete(WEBHOOK_PATHS[0], missing_ok=False),
            ),
            ("list namespaces", lambda: as_operator.get("/api/v1/namespaces")),
            ("list CRDs", lambda: as_operator.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")),
            (
                "create pods",
                lambda: as_operator.create(
                    f"/api/v1/namespaces/{ns}/pods",
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {"name": "x"},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                    },
                ),
            ),
            (
                "list routes where it does not watch",
                lambda: as_operator.get(f"{API_PATH}/namespaces/{other}/mcproutes"),
            ),
        ]
        allowed = []
        for what, call in denied:
            try:
                call()
                allowed.append(what)
            except KubeError as exc:
                assert exc.status == 403 and "forbidden" in exc.body.lower(), (what, exc.status, exc.body)
        assert not allowed, f"the operator's token may: {allowed}"
        assert not cluster.kube.get(f"/apis/apps/v1/namespaces/{other}/deployments")["items"]
    finally:
        as_operator.close()
        cluster.kube.delete(f"/api/v1/namespaces/{other}")
