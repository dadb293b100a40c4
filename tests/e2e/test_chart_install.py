"""`helm install charts/cmcp` on the real control plane, end to end.

The chart's operator, gateway and enclave pods are real containers on the real node, from the
images built in this run (by digest), under the chart's ServiceAccounts: their only credential is
the projected ServiceAccount token the kubelet mounts, read by the in-cluster configuration, so the
apiserver enforces the chart's RBAC on every call they make. Then: a PolicyBundle and an McpRoute
(``tee: tdx``, through the real node's kata-qemu-tdx handler and its TSM stand-in) -> the operator
attests the enclave pod -> the gateway (added by `helm upgrade`) routes an `mcp` SDK
client's allowed call to a guard-protected `mcp` upstream and refuses the denied one; another
`helm upgrade` with a changed value rolls the gateway; the operator's RBAC is shown to be
minimal; `helm uninstall` leaves no cluster-scoped object behind except the CRDs.

The tests run in file order and share one installation (module fixture), like a release's life.
Local control plane only (the images are built and imported there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from cmcp_core import appraisal_options
from cmcp_core.bundle import load_bundle
from cmcp_core.crd import API_PATH
from cmcp_devkit.cluster.control_plane import free_port
from cmcp_devkit.cluster.kube import Kube, KubeError
from cmcp_devkit.release import DevRelease
from cmcp_operator.render_bundle import bundle_manifest
from tests.helpers.gateway_stack import agent

from .conftest import E2ECluster, release_values

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cmcp"
PROFILE = CHART / "ci" / "simulated-values.yaml"
EXAMPLE_BUNDLE = ROOT / "examples" / "realistic"
SUFFIX = uuid.uuid4().hex[:6]
REL = "cmcp"  # release name == chart name -> objects are "cmcp-operator", "cmcp-gateway", ...
NS = f"cmcp-system-{SUFFIX}"  # the release
APP = f"cmcp-apps-{SUFFIX}"  # where a team keeps its bundle and route
BUNDLE, ROUTE = "realistic", "payments"
OPERATOR_SA, GATEWAY_SA = f"{REL}-operator", f"{REL}-gateway"
TDX_CLASS = f"kata-qemu-tdx-{SUFFIX}"  # the kata-qemu-tdx handler, placed on the real node
WEBHOOK_CONFIG = "cmcp-operator.cmcp.dev"
TOKEN = "tok-alice"  # agent "alice"
TRANSFER = {"amount": 100, "currency": "EUR", "to": "acct-1"}


@dataclass
class Install:
    cluster: E2ECluster
    values: list[Path]
    upstream_url: str
    release: DevRelease
    upstream: subprocess.Popen[bytes] | None = None
    extra_sets: list[str] = field(default_factory=list)

    @property
    def kube(self) -> Kube:
        return self.cluster.kube

    def helm_args(self, *sets: str) -> list[str]:
        args = ["-n", NS, *release_values(self.release)]
        for v in self.values:
            args += ["-f", str(v)]
        for s in [*self.extra_sets, *sets]:
            args += ["--set-json", s]
        return args

    def diag(self) -> str:
        """The control plane's log tails and the chart's pods' own logs (``kubectl logs``)."""
        parts = [self.cluster.diagnostics()]
        for ns, selector in ((NS, "app.kubernetes.io/component in (operator,gateway)"),
                             (APP, "app.kubernetes.io/component=enclave")):
            out = self.cluster.kubectl("logs", "-n", ns, "-l", selector, "--prefix", "--tail=30", check=False)
            parts.append(f"--- kubectl logs -n {ns} -l {selector} ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts)


def _route_values(upstream_url: str) -> dict[str, Any]:
    return {
        "gateway": {
            "routes": [
                {
                    "name": "demo",
                    "mcpRoute": {"name": ROUTE, "namespace": APP},
                    "upstream": upstream_url,
                    "audience": upstream_url,
                }
            ]
        }
    }


def _deployment_available(
    kube: Kube, name: str, generation_done: bool = True, ns: str = NS
) -> dict[str, Any] | None:
    try:
        d = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    except KubeError:
        return None
    st, want = d.get("status", {}), d["spec"]["replicas"]
    ok = (
        st.get("availableReplicas") == want
        and st.get("updatedReplicas") == want
        and st.get("replicas") == want
    )
    if generation_done:
        ok = ok and st.get("observedGeneration") == d["metadata"]["generation"]
    return d if ok else None


def _pods(kube: Kube, ns: str, selector: str) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _clear_foreign_webhook_configs(kube: Kube) -> None:
    """Another test in this session may have run an operator outside Helm; Kopf never deletes
    the webhook configurations it creates, and a non-Helm object of that name blocks install."""
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        path = f"/apis/admissionregistration.k8s.io/v1/{kind}/{WEBHOOK_CONFIG}"
        with contextlib.suppress(KubeError):
            obj = kube.get(path)
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm":
                kube.delete(path)




@pytest.fixture(scope="module")
def install(
    cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory, real_release: DevRelease
) -> Iterator[Install]:
    kube = cluster.kube
    assert cluster.local is not None and cluster.local.net is not None
    tmp = tmp_path_factory.mktemp("chart")
    _clear_foreign_webhook_configs(kube)
    for ns in (NS, APP):
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cmcp-gateway-tokens"},
            "stringData": {"alice": TOKEN},
        },
    )
    real_pods = tmp / "real-pods.yaml"
    real_pods.write_text(yaml.safe_dump(cluster.real_chart_values(TDX_CLASS)))
    no_gateway = tmp / "no-gateway.yaml"  # a later `helm upgrade` adds it once the route exists
    no_gateway.write_text(yaml.safe_dump({"gateway": {"replicas": 1, "routes": []}}))
    host = cluster.local.net.host_ip  # reachable from the pod network, like a Service outside the cluster
    upstream_url = f"http://{host}:{free_port(host)}/mcp"
    inst = Install(cluster, [PROFILE, real_pods, no_gateway], upstream_url, real_release)
    inst.extra_sets.append(f'operator.watchNamespaces=["{APP}"]')  # namespaced (default): a Role in APP
    with cluster.real_tdx_runtime_class(TDX_CLASS):
        try:
            cluster.helm("install", REL, str(CHART), *inst.helm_args())
            kube.wait_for(
                "the operator Deployment to be available",
                lambda: _deployment_available(kube, f"{REL}-operator"),
                timeout=180,
                on_timeout=inst.diag,
            )
            yield inst
        finally:
            if inst.upstream is not None:
                inst.upstream.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    inst.upstream.wait(10)
            if os.environ.get("CMCP_E2E_KEEP_STATE") is None:
                # Best effort if a test failed half-way; the last test does this and asserts on it.
                for path in (
                    f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}",
                    f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}",
                ):
                    kube.delete(path)
                cluster.helm("uninstall", REL, "-n", NS, "--wait", "--timeout", "120s", check=False)
                for ns in (NS, APP):
                    kube.delete(f"/api/v1/namespaces/{ns}")


def serve_upstream(argv: list[str]) -> None:
    """Run cmcp_devkit.upstream's `mcp` server + cMCP guard on a non-loopback address.

    (That helper builds its app for 127.0.0.1, where the SDK's DNS-rebinding protection refuses
    any other Host header with 421; here the gateway pod calls the host's pod-network address.)
    ``python -c 'from tests.e2e.test_chart_install import serve_upstream as s; s(ARGS)'``."""
    from cmcp_devkit import upstream as helper
    from cmcp_devkit.serving import WithCounter, run_until_stopped
    from cmcp_guard.middleware import GuardMiddleware

    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--guard-audience", required=True)
    parser.add_argument("--guard-enclave", action="append", default=[])
    parser.add_argument("--expected-bundle-hash", action="append", default=[])
    appraisal_options.add_arguments(parser)  # --release-manifest/--release-key/--allow-simulated
    args = parser.parse_args(argv)
    host = args.listen.rpartition(":")[0]
    server, counter = helper.build_server()
    mcp_app = server.streamable_http_app(json_response=True, host=host)
    guarded = GuardMiddleware(mcp_app, helper._guard_from_args(args, parser))
    run_until_stopped(WithCounter(guarded, counter), args.listen)


def test_operator_runs_under_the_chart_service_account(install: Install) -> None:
    kube = install.kube
    pods = _pods(kube, NS, "app.kubernetes.io/component=operator")
    assert len(pods) == 1
    spec = pods[0]["spec"]
    assert spec["serviceAccountName"] == OPERATOR_SA
    # Its credential is the projected token of that ServiceAccount (ServiceAccount admission).
    projected = [v for v in spec["volumes"] if "projected" in v]
    assert any("serviceAccountToken" in s for v in projected for s in v["projected"]["sources"])
    c = spec["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and spec["securityContext"]["runAsNonRoot"]

    # Kopf filled the chart-owned webhook configuration: failurePolicy Fail, served via our Service.
    def filled() -> dict[str, Any] | None:
        vwc = kube.get(
            f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{WEBHOOK_CONFIG}"
        )
        return vwc if vwc.get("webhooks") else None

    vwc = kube.wait_for(
        "the operator to fill the webhook configuration", filled, timeout=60, on_timeout=install.diag
    )
    assert vwc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    hooks = {w["rules"][0]["resources"][0]: w for w in vwc["webhooks"]}
    assert hooks["policybundles"]["failurePolicy"] == "Fail"
    assert hooks["policybundles"]["clientConfig"]["service"]["name"] == f"{REL}-webhook"
    assert hooks["policybundles"]["clientConfig"]["service"]["namespace"] == NS


def test_invalid_bundle_is_rejected_through_the_chart_webhook(install: Install) -> None:
    doc = bundle_manifest(EXAMPLE_BUNDLE, "broken", APP)
    doc["spec"]["files"]["policies/base.cedar"] += (
        "\npermit (principal, action, resource) when { nonsense };\n"
    )

    def rejected() -> str | None:
        proc = install.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
        return proc.stderr if proc.returncode != 0 and "admission webhook" in proc.stderr else None

    err = install.kube.wait_for(
        "the webhook to reject an invalid bundle", rejected, timeout=60, on_timeout=install.diag
    )
    assert "policies/base.cedar" in err


def test_bundle_and_route_get_attested(install: Install) -> None:
    kube, cluster = install.kube, install.cluster
    cluster.kubectl("apply", "-f", "-", input=json.dumps(bundle_manifest(EXAMPLE_BUNDLE, BUNDLE, APP)))
    expected = load_bundle(EXAMPLE_BUNDLE).bundle_hash
    kube.wait_for(
        "the PolicyBundle to be Ready",
        lambda: (
            _cond(kube.get(f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}"), "Ready").get("status")
            == "True"
        ),
        timeout=60,
        on_timeout=install.diag,
    )
    assert kube.get(f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}")["status"]["bundleHash"] == expected
    route = {
        "apiVersion": "cmcp.dev/v1alpha1",
        "kind": "McpRoute",
        "metadata": {"name": ROUTE, "namespace": APP},
        "spec": {
            "policyBundleRef": {"name": BUNDLE},
            "upstream": {"url": install.upstream_url},
            "tee": "tdx",
            "replicas": 1,
        },
    }
    # The chart's admission policy refuses TEE types this (tdx-only) install does not allow.
    refused = cluster.kubectl(
        "apply", "-f", "-", check=False, input=json.dumps({**route, "spec": {**route["spec"], "tee": "snp"}})
    )
    assert refused.returncode != 0 and "spec.tee snp is not allowed" in refused.stderr, refused.stderr
    cluster.kubectl("apply", "-f", "-", input=json.dumps(route))

    def attested() -> dict[str, Any] | None:
        r = kube.get(f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}")
        pods = [p for p in r.get("status", {}).get("pods", []) if p.get("attested")]
        return r if _cond(r, "Ready").get("status") == "True" and pods else None

    r = kube.wait_for(
        "the McpRoute to be Ready with an attested enclave", attested, timeout=180, on_timeout=install.diag
    )
    entry = next(p for p in r["status"]["pods"] if p["attested"])
    assert entry["reportedBundleHash"] == expected and entry["platform"]

    # The upstream the route names: an `mcp` SDK server behind the cMCP guard, which attests the
    # enclave itself before it trusts its permits.
    enclave = entry["address"] if ":" in entry["address"] else f"{entry['address']}:50051"
    listen = install.upstream_url.removeprefix("http://").removesuffix("/mcp")
    install.upstream = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tests.e2e.test_chart_install import serve_upstream as s; s(sys.argv[1:])",
            "--listen",
            listen,
            "--guard-audience",
            install.upstream_url,
            "--guard-enclave",
            enclave,
            "--allow-simulated",
            *install.release.argv(),
            "--expected-bundle-hash",
            expected,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert install.upstream.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = install.upstream.stdout.readline().decode(errors="replace")
        lines.append(line)
        if line.startswith("READY") or not line:
            break
    assert lines and lines[-1].startswith("READY"), "".join(lines)


def test_helm_upgrade_adds_the_gateway_for_the_route(install: Install) -> None:
    if install.upstream is None:
        pytest.skip("needs the attested route from test_bundle_and_route_get_attested")
    gw = _install_gateway(install)
    pod = gw["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == GATEWAY_SA
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    # The route's namespace now has the enclave NetworkPolicy (only gateway and operator may call),
    # selecting exactly the operator's enclave pods.
    np = install.kube.get(f"/apis/networking.k8s.io/v1/namespaces/{APP}/networkpolicies/{REL}-enclave")
    enclaves = _pods(install.kube, APP, "cmcp.dev/route=" + ROUTE)
    selector = np["spec"]["podSelector"]["matchLabels"]
    assert enclaves and all(selector.items() <= p["metadata"]["labels"].items() for p in enclaves)
    assert {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in np["spec"]["ingress"][0]["from"]
    } == {"gateway", "operator"}


def _install_gateway(install: Install) -> dict[str, Any]:
    routes = install.values[-1].with_name("routes-values.yaml")
    routes.write_text(yaml.safe_dump(_route_values(install.upstream_url)))
    if routes not in install.values:
        install.values.append(routes)
    install.cluster.helm("upgrade", REL, str(CHART), *install.helm_args())
    return install.kube.wait_for(
        "the gateway Deployment to be available",
        lambda: _deployment_available(install.kube, f"{REL}-gateway"),
        timeout=180,
        on_timeout=install.diag,
    )


def _gateway_url(install: Install) -> str:
    pods = [
        p
        for p in _pods(install.kube, NS, "app.kubernetes.io/component=gateway")
        if _cond(p, "Ready").get("status") == "True"
    ]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    assert pods[0]["spec"]["serviceAccountName"] == GATEWAY_SA
    return f"http://{pods[0]['status']['podIP']}:8080/mcp/demo"


async def test_mcp_client_gets_allowed_and_denied_calls_through_the_gateway(install: Install) -> None:
    if install.upstream is None or not _deployment_available(install.kube, f"{REL}-gateway"):
        pytest.skip("needs the attested route and the gateway from the tests before")
    url = _gateway_url(install)
    calls = install.upstream_url.removesuffix("/mcp") + "/calls"
    async with agent(url, token=TOKEN) as client:
        result = await client.call_tool("payments.transfer", TRANSFER)
        assert result.is_error is False, result
        assert result.structured_content == {**TRANSFER, "status": "sent"}
        with pytest.raises(MCPError) as denied:
            await client.call_tool("payments.transfer", {**TRANSFER, "amount": 50_000})
    assert denied.value.error.code == -32000
    assert denied.value.error.data["error_code"] == "POLICY_DENY"
    # The upstream ran the allowed call once and never saw the denied one.
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(calls)).json()["by_tool"] == {"payments.transfer": 1}
    # Without a token the gateway refuses the agent (before anything reaches an enclave).
    ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=10) as http:
        anonymous = await http.post(url, json=ping, headers=headers)
    assert anonymous.status_code == 401 or "error" in anonymous.json(), anonymous.text
    assert "credential" in anonymous.text


def test_helm_upgrade_with_a_changed_value_rolls_out(install: Install) -> None:
    kube = install.kube
    before = _deployment_available(kube, f"{REL}-gateway")
    if before is None:
        pytest.skip("needs the gateway from the previous test")
    old_pods = {p["metadata"]["name"] for p in _pods(kube, NS, "app.kubernetes.io/component=gateway")}
    op_before = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{REL}-operator")["metadata"][
        "generation"
    ]
    install.extra_sets.append('gateway.limits={"maxDepth":16}')
    install.cluster.helm("upgrade", REL, str(CHART), *install.helm_args())

    def rolled() -> dict[str, Any] | None:
        d = _deployment_available(kube, f"{REL}-gateway")
        if d is None or d["metadata"]["generation"] == before["metadata"]["generation"]:
            return None
        new = {p["metadata"]["name"] for p in _pods(kube, NS, "app.kubernetes.io/component=gateway")}
        return d if new and not new & old_pods else None

    after = kube.wait_for("the gateway to roll out", rolled, timeout=180, on_timeout=install.diag)
    old_sum = before["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert after["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != old_sum
    cm = kube.get(f"/api/v1/namespaces/{NS}/configmaps/{REL}-gateway")
    assert json.loads(cm["data"]["gateway.json"])["limits"]["max_depth"] == 16
    # Unrelated components are left alone.
    assert (
        kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{REL}-operator")["metadata"]["generation"]
        == op_before
    )


# What the operator must never be able to do (each would widen what a compromised operator can
# reach: read secrets, run code, forge pods into routes, grant itself more, or tamper with other
# admission configuration). `kubectl auth can-i --as` asks the real authorizer.
OPERATOR_FORBIDDEN = [
    ("get", "secrets", APP),
    ("list", "secrets", None),
    ("watch", "secrets", APP),
    ("create", "pods", APP),
    ("delete", "pods", APP),
    ("update", "pods", APP),
    ("patch", "pods", APP),
    ("create", "pods#exec", APP),
    ("create", "pods#eviction", APP),
    ("update", "pods#status", APP),
    ("delete", "deployments", APP),
    ("update", "deployments", APP),
    ("delete", "services", APP),
    ("update", "configmaps", APP),
    ("patch", "configmaps", APP),
    ("create", "policybundles.cmcp.dev", APP),
    ("delete", "policybundles.cmcp.dev", APP),
    ("create", "mcproutes.cmcp.dev", APP),
    ("delete", "mcproutes.cmcp.dev", APP),
    ("create", "serviceaccounts#token", APP),
    ("impersonate", "serviceaccounts", APP),
    ("create", "rolebindings.rbac.authorization.k8s.io", APP),
    ("create", "clusterroles.rbac.authorization.k8s.io", None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io", None),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/kube-guard", None),
    ("delete", "validatingadmissionpolicies.admissionregistration.k8s.io", None),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("update", "nodes", None),
    ("delete", "namespaces", None),
    ("create", "namespaces", None),
    ("list", "namespaces", None),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", None),
    ("create", "deployments.apps", NS),  # namespaced mode: nothing outside the watched namespace
    ("delete", "configmaps", NS),
    ("create", "deployments.apps", "default"),
]
OPERATOR_ALLOWED = [
    ("watch", "policybundles.cmcp.dev", APP),
    ("patch", "mcproutes.cmcp.dev#status", APP),
    ("list", "pods", APP),
    ("patch", "pods#status", APP),
    ("create", "deployments.apps", APP),
    ("create", "configmaps", APP),
    ("create", "events", APP),
    ("patch", f"validatingwebhookconfigurations.admissionregistration.k8s.io/{WEBHOOK_CONFIG}", None),
]


def _can_i(cluster: E2ECluster, sa: str, verb: str, resource: str, ns: str | None) -> bool:
    """``resource`` is kubectl's RESOURCE[/NAME]; a subresource is written RESOURCE#SUB."""
    resource, _, sub = resource.partition("#")
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{NS}:{sa}"]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", ns] if ns else ["--all-namespaces"]
    proc = cluster.kubectl(*args, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


def test_operator_rbac_is_minimal(install: Install) -> None:
    cluster = install.cluster
    granted = [(v, r, n) for v, r, n in OPERATOR_FORBIDDEN if _can_i(cluster, OPERATOR_SA, v, r, n)]
    assert not granted, f"the operator may: {granted}"
    missing = [(v, r, n) for v, r, n in OPERATOR_ALLOWED if not _can_i(cluster, OPERATOR_SA, v, r, n)]
    assert not missing, f"the operator lacks: {missing}"
    # And a real request with the operator's own token: 403 from the apiserver.
    tr = install.kube.create(
        f"/api/v1/namespaces/{NS}/serviceaccounts/{OPERATOR_SA}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    as_operator = Kube.with_token(cluster.server, cluster.ca_file, tr["status"]["token"])
    try:
        for path in (
            f"/api/v1/namespaces/{APP}/secrets",
            f"/api/v1/namespaces/{NS}/secrets/cmcp-gateway-tokens",
        ):
            with pytest.raises(KubeError) as forbidden:
                as_operator.get(path)
            assert forbidden.value.status == 403
        assert as_operator.get(f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}")["metadata"]["name"] == ROUTE
    finally:
        as_operator.close()


def test_gateway_rbac_reads_only_its_route(install: Install) -> None:
    cluster = install.cluster
    if not _deployment_available(install.kube, f"{REL}-gateway"):
        pytest.skip("gateway not deployed")
    assert _can_i(cluster, GATEWAY_SA, "get", f"mcproutes.cmcp.dev/{ROUTE}", APP)
    for verb, resource, ns in [
        ("list", "mcproutes.cmcp.dev", APP),
        ("get", "mcproutes.cmcp.dev/other", APP),
        ("patch", f"mcproutes.cmcp.dev/{ROUTE}", APP),
        ("get", "secrets", NS),
        ("get", "pods", APP),
        ("get", "policybundles.cmcp.dev", APP),
    ]:
        assert not _can_i(cluster, GATEWAY_SA, verb, resource, ns), (verb, resource, ns)


def test_uninstall_leaves_only_the_crds(install: Install) -> None:
    kube, cluster = install.kube, install.cluster
    # Users delete their routes and bundles first (the operator's finalizers clean up owned objects).
    for path in (
        f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}",
        f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}",
    ):
        kube.delete(path)

    def gone() -> bool:
        try:
            kube.get(f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}")
        except KubeError as exc:
            return exc.status == 404
        return False

    kube.wait_for("the bundle and route to be deleted", gone, timeout=120, on_timeout=install.diag)
    cluster.helm("uninstall", REL, "-n", NS, "--wait", "--timeout", "120s")
    # Give a still-terminating operator no chance to recreate what helm removed.
    time.sleep(3)
    leftovers = []
    resources = cluster.kubectl(
        "api-resources", "--namespaced=false", "--verbs=list", "-o", "name"
    ).stdout.split()
    for res in resources:
        out = cluster.kubectl(
            "get", res, "-l", f"app.kubernetes.io/instance={REL}", "-o", "name", check=False
        )
        leftovers += [n for n in out.stdout.split() if n]
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        out = cluster.kubectl(
            "get", f"{kind}.admissionregistration.k8s.io", WEBHOOK_CONFIG, "-o", "name", check=False
        )
        leftovers += [n for n in out.stdout.split() if n]
    leftovers = sorted(set(leftovers))
    crds = [n for n in leftovers if n.startswith("customresourcedefinition")]
    assert not [n for n in leftovers if n not in crds], leftovers
    # The CRDs stay on purpose (documented in NOTES and the chart README): deleting them would
    # delete every PolicyBundle and McpRoute in the cluster.
    for crd in ("policybundles.cmcp.dev", "mcproutes.cmcp.dev"):
        assert kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
    assert not kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments")["items"]
