"""``cmcpctl demo --cluster`` without a cluster: what it would deploy, and how it refuses to start.

The manifests are plain data (checked for the properties the demo's security story needs: the
guard's narrow RBAC, its token mounted into the guard alone, a loopback-only MCP server); the
settings are resolved against real files; helm/kubectl are driven through the real ``kubectl``
when one is installed. The run on a cluster is ``tests/e2e/test_demo_cluster.py``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_core import release
from cmcp_core.crd import GROUP
from cmcp_ctl import demo_cluster
from cmcp_ctl.demo_cluster import (
    AUDIENCE,
    GUARD_PORT,
    MCP_PORT,
    ROUTE,
    TAP_PORT,
    DemoFailure,
    ToolError,
    Tools,
    demo_image,
    enclave_image,
    guard_rbac,
    install_values,
    mcp_route,
    merged_values,
    mount_release,
    placement,
    upstream_pod,
    wait_for,
)
from cmcp_ctl.demo_story import Console, Run, Step
from cmcp_devkit.cluster import chart_release
from cmcp_devkit.release import write_dev_release
from cmcp_operator.config import DEFAULT_IMAGE
from tests.paths import EXAMPLES, ROOT

HASH = "sha256:" + "b" * 64
CHART = ROOT / "charts" / "cmcp"


def test_install_values_defer_the_gateway_until_there_is_a_route(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path, image=DEFAULT_IMAGE)
    assert demo_cluster.install_values(dev)["gateway"] == {"replicas": 1, "routes": []}
    assert demo_cluster.install_values(dev, 2)["gateway"]["replicas"] == 2


def test_gateway_values_route_the_demo_through_the_given_upstream() -> None:
    [route] = demo_cluster.gateway_values("ns1", "http://10.0.0.5:8000/mcp")["gateway"]["routes"]
    assert route == {"name": ROUTE, "mcpRoute": {"name": ROUTE, "namespace": "ns1"},
                     "upstream": "http://10.0.0.5:8000/mcp", "audience": AUDIENCE}


def test_mcp_route_is_simulated_and_pins_the_audience() -> None:
    route = mcp_route("ns1")
    assert (route["apiVersion"], route["kind"]) == (f"{GROUP}/v1alpha1", "McpRoute")
    assert route["metadata"] == {"name": ROUTE, "namespace": "ns1"}
    spec = route["spec"]
    assert spec["tee"] == "simulated" and spec["audience"] == AUDIENCE and spec["replicas"] == 1
    assert mcp_route("ns1", "tdx")["spec"]["tee"] == "tdx"
    assert spec["policyBundleRef"] == {"name": demo_cluster.BUNDLE_NAME}
    assert spec["upstream"]["url"] == f"http://{demo_cluster.UPSTREAM_POD}.ns1.svc:{TAP_PORT}/mcp"


def test_the_route_asks_for_the_tee_the_merged_values_run() -> None:
    profile = merged_values(CHART, CHART / "ci" / "simulated-values.yaml")
    assert demo_cluster.route_tee(profile) == "simulated"
    real = {**profile, "attestation": {**profile["attestation"], "allowedTeeTypes": ["tdx", "snp"]}}
    assert demo_cluster.route_tee(real) == "tdx"


def test_guard_rbac_grants_get_on_exactly_the_followed_routes() -> None:
    account, role, binding = guard_rbac("ns1", ["b", "a", "b"])
    assert account["kind"] == "ServiceAccount" and account["automountServiceAccountToken"] is False
    [rule] = role["rules"]
    assert rule == {"apiGroups": [GROUP], "resources": ["mcproutes"], "resourceNames": ["a", "b"],
                    "verbs": ["get"]}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": demo_cluster.GUARD_SA}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": demo_cluster.GUARD_SA,
                                    "namespace": "ns1"}]
    assert {d["metadata"]["namespace"] for d in (account, role, binding)} == {"ns1"}


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def _args_after(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, a in enumerate(command) if a == flag]


def test_upstream_pod_with_fixed_enclave_addresses() -> None:
    more = [("10.0.0.10:50051", "sha256:c")]
    pod = upstream_pod("ns1", "img:1", "guard:1", "10.0.0.9:50051", HASH, more_enclaves=more)
    containers = _containers(pod)
    assert list(containers) == ["mcp", "guard", "tap"]
    assert [c["image"] for c in containers.values()] == ["img:1", "guard:1", "img:1"]
    mcp, guard, tap = containers["mcp"], containers["guard"], containers["tap"]
    assert f"127.0.0.1:{MCP_PORT}" in mcp["command"], "the MCP server listens on loopback only"
    assert "exec" in mcp["readinessProbe"] and "tcpSocket" in guard["readinessProbe"]
    assert _args_after(guard["command"], "--upstream") == [f"http://127.0.0.1:{MCP_PORT}"]
    assert _args_after(guard["command"], "--enclave") == ["10.0.0.9:50051", "10.0.0.10:50051"]
    assert _args_after(guard["command"], "--expected-bundle-hash") == [HASH, "sha256:c"]
    assert _args_after(guard["command"], "--audience") == [AUDIENCE] and "--route" not in guard["command"]
    assert _args_after(tap["command"], "--forward") == [f"http://$(POD_IP):{GUARD_PORT}"]
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    assert "volumes" not in spec and all("volumeMounts" not in c for c in containers.values())


def test_upstream_pod_following_a_route_mounts_the_token_into_the_guard_only() -> None:
    pod = upstream_pod("ns1", "img:1", "guard:1", "ignored:1", HASH, route="demo", wiretap=False)
    containers = _containers(pod)
    assert list(containers) == ["mcp", "guard"]
    guard = containers["guard"]
    assert _args_after(guard["command"], "--route") == ["ns1/demo"]
    assert "--enclave" not in guard["command"], "the route's status names the enclaves"
    assert _args_after(guard["command"], "--expected-bundle-hash") == [HASH]
    assert guard["volumeMounts"] == [{"name": "guard-api-access", "mountPath": demo_cluster.SA_DIR,
                                      "readOnly": True}]
    assert "volumeMounts" not in containers["mcp"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == demo_cluster.GUARD_SA
    assert spec["automountServiceAccountToken"] is False
    [volume] = spec["volumes"]
    assert volume["name"] == "guard-api-access"


def test_every_container_is_hardened_and_the_pod_runs_as_non_root() -> None:
    pod = upstream_pod("ns1", "img:1", "guard:1", "10.0.0.9:50051", HASH)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for container in pod["spec"]["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}, container["name"]


def test_another_server_module_and_args() -> None:
    pod = upstream_pod("ns1", "img:1", "guard:1", "10.0.0.9:50051", HASH, server_module="pkg.server",
                       server_args=("--profile", "conformance"), name="up2")
    mcp = _containers(pod)["mcp"]
    assert mcp["command"][:3] == ["python", "-m", "pkg.server"] and mcp["command"][-2:] == [
        "--profile", "conformance"]
    assert pod["metadata"]["name"] == "up2"


def test_condition_reads_a_status_condition() -> None:
    conditions = [{"type": "Ready", "status": "True"}, {"type": "Attested", "status": "False"}]
    obj = {"status": {"conditions": conditions}}
    assert demo_cluster._condition(obj, "Ready") == "True"
    assert demo_cluster._condition(obj, "Attested") == "False"
    assert demo_cluster._condition(obj, "Missing") == "" and demo_cluster._condition({}, "Ready") == ""


def test_wait_for_returns_the_first_thing_found() -> None:
    assert wait_for("x", lambda: {"ok": 1}, timeout=5, hint="h") == {"ok": 1}


def test_wait_for_times_out_with_the_last_tool_error_and_the_hint() -> None:
    def probe() -> None:
        raise ToolError("webhook not ready")

    with pytest.raises(DemoFailure) as caught:
        wait_for("the enclave pod", probe, timeout=-1, hint="read the operator log")
    assert str(caught.value) == ("timed out after -1s waiting for the enclave pod "
                                 "(last error: webhook not ready)")
    assert caught.value.hint == "read the operator log"
    with pytest.raises(DemoFailure, match=r"waiting for nothing$"):
        wait_for("nothing", lambda: False, timeout=-1, hint="h")


def test_wait_for_does_not_swallow_other_errors() -> None:
    def probe() -> None:
        raise KeyError("status")

    with pytest.raises(KeyError):
        wait_for("x", probe, timeout=5, hint="h")


def _executable(path: Path) -> str:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _args(**over: object) -> argparse.Namespace:
    fields: dict[str, object] = {"kubeconfig": None, "helm": None, "kubectl": None, "namespace": None,
                                 "bundle": None, "keep": False}
    fields.update(over)
    return argparse.Namespace(**fields)


def test_settings_never_fall_back_to_the_default_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(DemoFailure) as caught:
        demo_cluster.resolve_settings(_args())
    assert str(caught.value) == "no kubeconfig: --cluster needs a cluster to install into"
    assert "make demo-cluster" in caught.value.hint


def test_settings_refuse_a_missing_kubeconfig_or_binary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(DemoFailure, match=r"the kubeconfig .*nope does not exist"):
        demo_cluster.resolve_settings(_args())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    not_executable = tmp_path / "helm"
    not_executable.write_text("")
    with pytest.raises(DemoFailure, match=f"no helm binary at {not_executable}$") as caught:
        demo_cluster.resolve_settings(_args(kubeconfig=str(kubeconfig), helm=str(not_executable)))
    assert "--helm PATH" in caught.value.hint


def test_settings_resolve_from_flags(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    helm, kubectl = _executable(tmp_path / "helm"), _executable(tmp_path / "kubectl")
    settings = demo_cluster.resolve_settings(_args(kubeconfig=str(kubeconfig), helm=helm, kubectl=kubectl,
                                                   namespace="ns9", keep=True))
    assert (settings.tools.helm_bin, settings.tools.kubectl_bin) == (helm, kubectl)
    assert settings.tools.kubeconfig == kubeconfig.resolve()
    assert settings.namespace == "ns9" and settings.keep is True
    assert settings.chart == ROOT / "charts" / "cmcp"
    assert settings.profile == ROOT / "charts" / "cmcp" / "ci" / "simulated-values.yaml"
    assert settings.bundle_dir == (EXAMPLES / "realistic").resolve()
    defaults = demo_cluster.resolve_settings(_args(kubeconfig=str(kubeconfig), helm=helm, kubectl=kubectl))
    assert defaults.namespace == demo_cluster.DEFAULT_NAMESPACE and defaults.keep is False
    with pytest.raises(DemoFailure, match="no policy bundle at"):
        demo_cluster.resolve_settings(_args(kubeconfig=str(kubeconfig), helm=helm, kubectl=kubectl,
                                            bundle=str(tmp_path)))


def test_run_cluster_stops_with_exit_2_before_touching_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stream = io.StringIO()
    code = demo_cluster.run_cluster(_args(kubeconfig=str(tmp_path / "missing"), out=str(tmp_path / "o")),
                                    Console(stream))
    assert code == 2
    missing = tmp_path / "missing"
    assert stream.getvalue().startswith(f"FAIL the kubeconfig {missing} does not exist\n  next: ")
    assert not (tmp_path / "o").exists()


def test_explain_failures_points_at_the_pods_logs(tmp_path: Path) -> None:
    stream = io.StringIO()
    leaked = Step("mail to non-partner", "agent", "email.send_external", {}, "POLICY_DENY", False, "r",
                  actual_code=None, executed=True)
    run = Run(out=tmp_path, steps=[leaked], checks=[("audit chain", False, "AUDIT_SEQ_GAP")])
    demo_cluster._explain_failures(Console(stream), run, "ns7")
    text = stream.getvalue()
    assert "step 'mail to non-partner': expected POLICY_DENY (upstream ran: False), got allowed" in text
    assert "- audit chain: AUDIT_SEQ_GAP" in text and "in namespace ns7" in text and "--keep" in text


KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH")


def _unreachable_kubeconfig(path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n")
    return path


@needs_kubectl
def test_tools_run_kubectl_with_the_kubeconfig_and_log_every_command(tmp_path: Path) -> None:
    log = tmp_path / "commands.log"
    tools = Tools(str(KUBECTL), "helm-unused", _unreachable_kubeconfig(tmp_path / "kc"), log=log)
    view = tools.kubectl("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}")
    assert view.stdout == "https://127.0.0.1:9", "the kubeconfig passed by flag is the one used"
    with pytest.raises(ToolError) as caught:
        tools.get("mcproute", "demo", "ns1")
    assert str(caught.value).startswith("`kubectl --kubeconfig ")
    assert "/kc get mcproute demo …` failed: " in str(caught.value), "the first six words, then the reason"
    assert "127.0.0.1:9" in str(caught.value)
    unchecked = tools.kubectl("get", "pods", check=False, timeout=60)
    assert unchecked.returncode != 0
    logged = log.read_text()
    assert logged.count("$ ") == 3 and "[exit 0]" in logged and logged.count("[exit 1]") == 2


# --- the signed release: the chart, the guard and the auditor trust one ---------------------



def test_release_names_the_enclave_image_the_chart_runs(tmp_path: Path) -> None:
    profile = CHART / "ci" / "simulated-values.yaml"
    assert enclave_image(merged_values(CHART, profile)) == DEFAULT_IMAGE
    extra = tmp_path / "extra.yaml"
    digest = "sha256:" + "1" * 64
    extra.write_text(f"imageRegistry: registry.local:5000\nenclave:\n  image:\n    digest: {digest}\n")
    values = merged_values(CHART, profile, extra)
    assert enclave_image(values) == f"registry.local:5000/cmcp-enclave@{digest}"
    assert values["enclave"]["image"]["repository"] == "cmcp-enclave"  # merged key by key, not replaced


def test_the_demos_own_pods_follow_the_merged_values(tmp_path: Path) -> None:
    """--values files reach the pods the demo starts itself: registry, and the gateway's placement."""
    extra = tmp_path / "extra.yaml"
    tolerations = [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
    extra.write_text(yaml.safe_dump({"imageRegistry": "localhost", "gateway": {
        "nodeSelector": {"kubernetes.io/hostname": "n1"}, "tolerations": tolerations}}))
    values = merged_values(CHART, CHART / "ci" / "simulated-values.yaml", extra)
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert demo_image(values, CHART, "guard") == f"localhost/cmcp-guard:{app_version}"
    where = placement(values)
    assert where == {"nodeSelector": {"kubernetes.io/hostname": "n1"}, "tolerations": tolerations}
    pod = upstream_pod("ns", "img", "guard", "10.0.0.1:50051", HASH, where=where)
    assert pod["spec"]["nodeSelector"] == where["nodeSelector"]
    assert pod["spec"]["tolerations"] == tolerations
    assert placement(merged_values(CHART)) == {}  # the chart's defaults place nothing


def test_install_values_carry_the_signed_release(tmp_path: Path) -> None:
    dev = write_dev_release(tmp_path, image=DEFAULT_IMAGE)
    values = install_values(dev)
    manifest = values["release"]["manifests"][chart_release.DEFAULT_NAME].encode()
    key = release.load_release_key(values["release"]["keys"][chart_release.DEFAULT_NAME].encode())
    assert release.verify(manifest, [key]).image == DEFAULT_IMAGE
    assert values["gateway"] == {"replicas": 1, "routes": []}


def test_guard_reads_the_charts_release_and_pins_modes() -> None:
    pod = upstream_pod("ns", "img", "guard", "10.0.0.1:50051", "sha256:" + "ab" * 32, route="demo",
                       modes=("enforce", "advisory"))
    pod = mount_release(pod, "cmcp-demo")
    guard = next(c for c in pod["spec"]["containers"] if c["name"] == "guard")
    mount = chart_release.guard_mount("cmcp-demo")
    assert guard["command"][-2:] == mount.args
    assert mount.volume_mount in guard["volumeMounts"] and mount.volume in pod["spec"]["volumes"]
    flags = guard["command"]
    assert [flags[i + 1] for i, f in enumerate(flags) if f == "--expected-mode"] == ["enforce", "advisory"]
    others = [c for c in pod["spec"]["containers"] if c["name"] != "guard"]
    assert all("--release-manifest" not in " ".join(c["command"]) for c in others)


def test_the_auditor_reads_the_gateway_store_on_the_real_node_by_pod_uid(tmp_path: Path) -> None:
    """A real container's emptyDir lives in the kubelet's pod dir, named by the pod's uid."""
    kubelet = tmp_path / "kubelet"
    store = kubelet / "pods" / "uid-1" / demo_cluster.REAL_NODE_AUDIT
    store.parent.mkdir(parents=True)
    store.write_bytes(b"")
    (kubelet / "pods" / "uid-2").mkdir()  # another pod: no audit volume
    found = demo_cluster.local_gateway_audit_store(["uid-2", "uid-1"], kubelet_root=kubelet)
    assert found == f"sqlite:{store}"
    assert demo_cluster.local_gateway_audit_store(["uid-2"], kubelet_root=kubelet) is None
