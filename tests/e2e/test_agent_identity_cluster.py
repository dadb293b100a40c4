"""An agent pod authenticates with its projected ServiceAccount token, end to end (issue 17).

On the real control plane, every pod a real container on the real node (kubelet, containerd, runc)
from the images built in this run, by digest: the chart installed (operator and gateway under their
ServiceAccounts, in-cluster configuration only), a PolicyBundle whose manifest trusts the cluster's
own ServiceAccount issuer (its discovery and JWKS read from the apiserver, written in with
``cmcpctl bundle trust-issuer``), a ``tee: tdx`` McpRoute whose enclave pod runs the real ``tdx``
provider under the test's ``kata-qemu-tdx`` class (the node's hook and TSM stand-in give it
software-only evidence) and which the operator attests, a guarded upstream (a host process on the
pod network's host address, as test_chart_install runs it), and a gateway route with an
``authorization`` block. Then a pod of the demo image (python with the official ``mcp`` SDK and
``httpx``/``httpx2``) under ServiceAccount ``agent``, with a projected token for the route's
resource, runs the ``mcp`` client: the allowed call runs, the denied one is denied with the signed
decision naming ``system:serviceaccount:<ns>:agent``, and a request without a token gets ``401``
with a challenge; its output is read with ``kubectl logs``. Local control plane only (the images are
built and imported there, and the upstream and the test reach pod IPs from the host).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cmcp_core.bundle import load_bundle
from cmcp_core.crd import API_PATH
from cmcp_ctl.main import main as cmcpctl
from cmcp_devkit.cluster.control_plane import REAL_NODE_NAME
from cmcp_devkit.cluster.kube import Kube
from cmcp_devkit.ports import free_port
from cmcp_devkit.release import DevRelease
from cmcp_operator.render_bundle import bundle_manifest

from .conftest import E2ECluster, release_values
from .test_chart_install import _clear_foreign_webhook_configs, _cond, _deployment_available, _pods
from .workloads import is_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cmcp"
PROFILE = CHART / "ci" / "simulated-values.yaml"
SUFFIX = uuid.uuid4().hex[:6]
REL = "cmcp"
NS = f"cmcp-id-system-{SUFFIX}"
APP = f"cmcp-id-apps-{SUFFIX}"
BUNDLE, ROUTE, GATEWAY_ROUTE = "identity", "payments", "pay"
AGENT_POD = "agent"
TDX_CLASS = f"kata-qemu-tdx-id-{SUFFIX}"  # the kata-qemu-tdx handler, placed on the real node
RESOURCE = "https://gateway.cmcp.example/mcp/pay"  # the route's resource URI (RFC 8707)
TRANSFER = {"amount": 100, "currency": "EUR", "to": "acct-1"}

# What the agent pod runs (the demo image's python, which has the `mcp` SDK, httpx and httpx2): its
# token file, the official client, one JSON line per outcome on stdout, read back with `kubectl logs`.
AGENT = textwrap.dedent("""
    import asyncio, json, os, httpx, httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    URL = os.environ["GATEWAY_URL"]
    TRANSFER = {"amount": 100, "currency": "EUR", "to": "acct-1"}

    async def main():
        token = open(os.environ["TOKEN_FILE"]).read().strip()
        http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30)
        async with Client(streamable_http_client(URL, http_client=http)) as client:
            allowed = await client.call_tool("payments.transfer", TRANSFER)
            print(json.dumps({"call": "allowed", "is_error": allowed.is_error,
                              "result": allowed.structured_content}), flush=True)
            try:
                await client.call_tool("payments.transfer", {**TRANSFER, "amount": 50000})
                print(json.dumps({"call": "denied", "error_code": None}), flush=True)
            except MCPError as exc:
                print(json.dumps({"call": "denied", "error_code": exc.error.data["error_code"],
                                  "decision": exc.error.data["decision"]}), flush=True)
        ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        anonymous = httpx.post(URL, json=ping, headers={"accept": "application/json, text/event-stream"})
        print(json.dumps({"call": "anonymous", "status": anonymous.status_code,
                          "challenge": anonymous.headers.get("www-authenticate")}), flush=True)

    asyncio.run(main())
""")


def _diag(cluster: E2ECluster, agent: bool = False) -> str:
    """The control plane's log tails, ``kubectl logs`` of the chart's pods and the enclave (and of the
    agent pod once it exists), and the node's TSM hook log."""
    parts = [cluster.diagnostics()]
    sources = [(NS, ["-l", "app.kubernetes.io/component in (operator,gateway)"]),
               (APP, ["-l", "app.kubernetes.io/component=enclave"])]
    if agent:
        sources.append((APP, [AGENT_POD]))
    for ns, what in sources:
        out = cluster.kubectl("logs", "-n", ns, *what, "--prefix", "--tail=30", check=False)
        parts.append(f"--- kubectl logs -n {ns} {' '.join(what)} ---\n{out.stdout}{out.stderr}")
    if cluster.local is not None and cluster.local.real_node is not None:
        hook_log = cluster.local.real_node.paths.tsm_hook_log
        parts.append(f"--- tsm hook ---\n{hook_log.read_text() if hook_log.exists() else ''}")
    return "\n".join(parts)


@contextlib.contextmanager
def _installed(cluster: E2ECluster, tmp: Path, release: DevRelease) -> Iterator[list[str]]:
    """The chart in NS as real containers on the real node (operator only for now, under its
    ServiceAccount, in-cluster configuration), enclave pods through TDX_CLASS; yields the helm value
    arguments; uninstalls, deletes both namespaces and the RuntimeClass afterwards."""
    kube = cluster.kube
    _clear_foreign_webhook_configs(kube)
    for ns in (NS, APP):
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cmcp-gateway-tokens"},
            "stringData": {"unused": uuid.uuid4().hex},
        },
    )
    real_pods = tmp / "real-pods.yaml"
    real_pods.write_text(yaml.safe_dump(cluster.real_chart_values(TDX_CLASS)))
    no_gateway = tmp / "no-gateway.yaml"  # the `helm upgrade` below adds it once the route is attested
    no_gateway.write_text(yaml.safe_dump({"gateway": {"replicas": 1, "routes": []}}))
    args = ["-n", NS, *release_values(release),
            "-f", str(PROFILE), "-f", str(real_pods), "-f", str(no_gateway),
            "--set-json", f'operator.watchNamespaces=["{APP}"]']  # namespaced (default): a Role in APP
    with cluster.real_tdx_runtime_class(TDX_CLASS):
        try:
            cluster.helm("install", REL, str(CHART), *args)
            kube.wait_for(
                "the operator Deployment",
                lambda: _deployment_available(kube, f"{REL}-operator", ns=NS),
                timeout=240,
                on_timeout=lambda: _diag(cluster),
            )
            yield args
        finally:
            if os.environ.get("CMCP_E2E_KEEP_STATE") is None:
                for path in (
                    f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}",
                    f"{API_PATH}/namespaces/{APP}/policybundles/{BUNDLE}",
                ):
                    kube.delete(path)
                cluster.helm("uninstall", REL, "-n", NS, "--wait", "--timeout", "120s", check=False)
                for ns in (NS, APP):
                    kube.delete(f"/api/v1/namespaces/{ns}")


def _trusting_bundle(kube: Kube, tmp: Path) -> Path:
    """examples/realistic, trusting the cluster's ServiceAccount issuer: its keys inline, and only
    the algorithms those keys declare (the apiserver sets ``alg`` on each; the dev kit's plane
    signs with a P-256 key, so ES256 there, RS256 on most real clusters)."""
    issuer = kube.get("/.well-known/openid-configuration")["issuer"]
    cluster_jwks = kube.get("/openid/v1/jwks")
    algorithms = sorted({k["alg"] for k in cluster_jwks["keys"]})
    assert algorithms, cluster_jwks
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(cluster_jwks))
    bundle = tmp / "bundle"
    bundle.mkdir()
    for path in (ROOT / "examples" / "realistic").rglob("*"):
        if path.is_file():
            target = bundle / path.relative_to(ROOT / "examples" / "realistic")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    assert (
        cmcpctl(
            [
                "bundle",
                "trust-issuer",
                str(bundle),
                "--issuer",
                issuer,
                "--jwks",
                str(jwks),
                "--audience",
                RESOURCE,
                *(arg for alg in algorithms for arg in ("--algorithm", alg)),
            ]
        )
        == 0
    )
    # Exactly the section issue 17 documents (what tests/helpers/issuer.identity_bundle would write).
    assert json.loads((bundle / "manifest.json").read_text())["identity"] == {
        "audiences": [RESOURCE],
        "issuers": [{"issuer": issuer, "jwks": {"keys": cluster_jwks["keys"]}, "algorithms": algorithms}],
    }
    return bundle


def _start_upstream(
    upstream_url: str, enclave: str, bundle_hash: str, release: DevRelease
) -> subprocess.Popen[bytes]:
    listen = upstream_url.removeprefix("http://").removesuffix("/mcp")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tests.e2e.test_chart_install import serve_upstream as s; s(sys.argv[1:])",
            "--listen",
            listen,
            "--guard-audience",
            upstream_url,
            "--guard-enclave",
            enclave,
            "--allow-simulated",
            *release.argv(),
            "--expected-bundle-hash",
            bundle_hash,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        lines.append(line)
        if line.startswith("READY") or not line:
            break
    assert lines and lines[-1].startswith("READY"), "".join(lines)
    return proc


def _agent_pod(cluster: E2ECluster, gateway_url: str) -> dict[str, Any]:
    """The agent: a real container of this run's demo image (by digest) on the real node, as user
    65532 with a read-only root, its only credential the projected token for RESOURCE."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": AGENT_POD, "namespace": APP},
        "spec": {
            "serviceAccountName": "agent",
            "automountServiceAccountToken": False,  # no apiserver token: only the one for RESOURCE
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True},
            **cluster.real_pods,
            "containers": [
                {
                    "name": "agent",
                    "image": f"localhost/cmcp-demo@{cluster.images['demo'].digest}",
                    "command": ["python", "-c", AGENT],
                    "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                    "env": [
                        {"name": "GATEWAY_URL", "value": gateway_url},
                        {"name": "TOKEN_FILE", "value": "/var/run/secrets/cmcp/token"},
                    ],
                    "volumeMounts": [
                        {"name": "cmcp-token", "mountPath": "/var/run/secrets/cmcp", "readOnly": True}
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "cmcp-token",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": RESOURCE,
                                    "expirationSeconds": 600,
                                    "path": "token",
                                }
                            }
                        ]
                    },
                }
            ],
        },
    }


def test_an_agent_pod_authenticates_with_its_service_account_token(
    local_cluster: E2ECluster, tmp_path: Path, real_release: DevRelease
) -> None:
    cluster, kube = local_cluster, local_cluster.kube
    assert cluster.local is not None and cluster.local.net is not None
    bundle = _trusting_bundle(kube, tmp_path)
    expected = load_bundle(bundle).bundle_hash
    host = cluster.local.net.host_ip  # reachable from the pod network, like a Service outside the cluster
    upstream_url = f"http://{host}:{free_port(host)}/mcp"
    upstream: subprocess.Popen[bytes] | None = None
    with _installed(cluster, tmp_path, real_release) as helm_args:
        try:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(bundle_manifest(bundle, BUNDLE, APP)))
            cluster.kubectl(
                "apply",
                "-f",
                "-",
                input=json.dumps(
                    {
                        "apiVersion": "cmcp.dev/v1alpha1",
                        "kind": "McpRoute",
                        "metadata": {"name": ROUTE, "namespace": APP},
                        "spec": {
                            "policyBundleRef": {"name": BUNDLE},
                            "upstream": {"url": upstream_url},
                            "tee": "tdx",
                            "replicas": 1,
                        },
                    }
                ),
            )

            def attested() -> dict[str, Any] | None:
                r = kube.get(f"{API_PATH}/namespaces/{APP}/mcproutes/{ROUTE}")
                pods = [p for p in r.get("status", {}).get("pods", []) if p.get("attested")]
                return pods[0] if _cond(r, "Ready").get("status") == "True" and pods else None

            pod = kube.wait_for(
                "the McpRoute attested", attested, timeout=240, on_timeout=lambda: _diag(cluster)
            )
            assert pod["reportedBundleHash"] == expected
            enclaves = _pods(kube, APP, "app.kubernetes.io/component=enclave")
            [enclave_pod] = [p for p in enclaves if is_ready(p)]
            cluster.assert_real_enclave(enclave_pod, TDX_CLASS)
            enclave = pod["address"] if ":" in pod["address"] else f"{pod['address']}:50051"
            upstream = _start_upstream(upstream_url, enclave, expected, real_release)

            routes = tmp_path / "routes-values.yaml"
            routes.write_text(
                yaml.safe_dump(
                    {
                        "gateway": {
                            "routes": [
                                {
                                    "name": GATEWAY_ROUTE,
                                    "mcpRoute": {"name": ROUTE, "namespace": APP},
                                    "upstream": upstream_url,
                                    "audience": upstream_url,
                                    "authorization": {
                                        "resource": RESOURCE,
                                        "authorizationServers": [
                                            kube.get("/.well-known/openid-configuration")["issuer"]
                                        ],
                                    },
                                }
                            ]
                        }
                    }
                )
            )
            cluster.helm("upgrade", REL, str(CHART), *helm_args, "-f", str(routes))
            kube.wait_for(
                "the gateway Deployment",
                lambda: _deployment_available(kube, f"{REL}-gateway", ns=NS),
                timeout=240,
                on_timeout=lambda: _diag(cluster),
            )
            gateways = [p for p in _pods(kube, NS, "app.kubernetes.io/component=gateway") if is_ready(p)]
            assert len(gateways) == 1, [p["metadata"]["name"] for p in gateways]
            assert gateways[0]["spec"]["nodeName"] == REAL_NODE_NAME
            gateway_url = f"http://{gateways[0]['status']['podIP']}:8080/mcp/{GATEWAY_ROUTE}"

            kube.create(
                f"/api/v1/namespaces/{APP}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent"}},
            )
            kube.create(f"/api/v1/namespaces/{APP}/pods", _agent_pod(cluster, gateway_url))

            def finished() -> dict[str, Any] | None:
                agent = kube.get(f"/api/v1/namespaces/{APP}/pods/{AGENT_POD}")
                return agent if agent.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

            agent = kube.wait_for(
                "the agent pod to finish", finished, timeout=240,
                on_timeout=lambda: _diag(cluster, agent=True),
            )
            logs = cluster.kubectl("logs", "-n", APP, AGENT_POD).stdout  # from the kubelet
            assert agent["status"]["phase"] == "Succeeded", logs + _diag(cluster, agent=True)
            # It ran as a real container of the demo image on the real node, and exited 0 there.
            assert agent["spec"]["nodeName"] == REAL_NODE_NAME
            # Its one credential: the projected token (admission added no apiserver token volume).
            assert [v["name"] for v in agent["spec"]["volumes"]] == ["cmcp-token"]
            [status] = agent["status"]["containerStatuses"]
            assert status["containerID"].startswith("containerd://"), status
            assert cluster.images["demo"].digest in status["imageID"], status
            assert status["state"]["terminated"]["exitCode"] == 0, status

            outcomes = {
                o["call"]: o for o in (json.loads(line) for line in logs.splitlines() if line.startswith("{"))
            }
            assert outcomes["allowed"]["is_error"] is False, outcomes
            assert outcomes["allowed"]["result"] == {**TRANSFER, "status": "sent"}
            assert outcomes["denied"]["error_code"] == "POLICY_DENY", outcomes
            decided = json.loads(outcomes["denied"]["decision"]["document"])
            assert decided["principal"] == f"system:serviceaccount:{APP}:agent"
            assert outcomes["anonymous"]["status"] == 401
            assert outcomes["anonymous"]["challenge"].startswith(
                'Bearer resource_metadata="https://gateway.cmcp.example/'
            )
            calls = upstream_url.removesuffix("/mcp") + "/calls"
            assert httpx.get(calls, timeout=5).json()["by_tool"] == {"payments.transfer": 1}
        finally:
            if upstream is not None:
                upstream.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    upstream.wait(10)
