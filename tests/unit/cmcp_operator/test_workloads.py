"""What the operator renders for a route: exact initdata, readiness gate, placement."""

from __future__ import annotations

import re

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.gateway_identity import initdata_value
from cmcp_core.initdata import ANNOTATION, CmcpEntry, decode_annotation, parse, render
from cmcp_core.launch_policy import IMAGE_DIGEST_PATTERN, LaunchPolicyError
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify.gpu import REVOCATION_POLICIES
from cmcp_core.verify.gpu_requirement import MAX_GPUS, VENDORS
from cmcp_operator.config import OperatorConfig
from cmcp_operator.constants import ATTESTED_CONDITION, KATA_TDX, NFD_SNP, NFD_TDX, ROUTE_LABEL
from cmcp_operator.workloads import audience, deployment, launch_spec, revision, service
from tests.paths import ROOT

IMAGE = "reg/cmcp-enclave@sha256:" + "12" * 32

BSTATUS = {"bundleHash": "sha256:" + "ab" * 32, "catalogHash": "sha256:" + "cd" * 32,
           "enforcementMode": "enforce", "configMapName": "cmcp-bundle-b-abababab"}
OWNER = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "name": "r", "uid": "u", "controller": True}


def spec(**kw: object) -> dict[str, object]:
    return {"upstream": {"url": "http://up.example/mcp"}, "policyBundleRef": {"name": "b"},
            "replicas": 2, "tee": "tdx", **kw}


def test_initdata_annotation_is_exactly_the_rendered_toml() -> None:
    cfg = OperatorConfig(enclave_image=IMAGE)
    rev = revision("ns", "r", spec(), BSTATUS, ["policies/a.cedar", "manifest.json"], cfg)
    dep = deployment("ns", "r", spec(), rev, cfg, OWNER)
    annotation = dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION]
    expected = render(CmcpEntry(BSTATUS["bundleHash"], BSTATUS["catalogHash"], "enforce", "ns/r",
                                "http://up.example/mcp"),
                      launch=launch_spec("ns", IMAGE, list(rev.command)), algorithm="sha384")
    assert decode_annotation(annotation) == expected == rev.initdata
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert [container["command"][0], *container["args"]] == list(rev.command)
    assert "--tee" in rev.command and rev.command[rev.command.index("--tee") + 1] == "tdx"
    assert parse(rev.initdata).cmcp.route == "ns/r"


def test_same_inputs_same_bytes_and_bundle_change_changes_them() -> None:
    cfg = OperatorConfig()
    a = revision("ns", "r", spec(), BSTATUS, [], cfg)
    assert a.initdata == revision("ns", "r", spec(), BSTATUS, [], cfg).initdata
    other = {**BSTATUS, "bundleHash": "sha256:" + "ef" * 32}
    assert revision("ns", "r", spec(), other, [], cfg).initdata_digest != a.initdata_digest


def test_readiness_gate_rollout_strategy_and_volume() -> None:
    cfg = OperatorConfig()
    rev = revision("ns", "r", spec(), BSTATUS, ["policies/a.cedar"], cfg)
    dep = deployment("ns", "r", spec(), rev, cfg, OWNER)
    pod = dep["spec"]["template"]["spec"]
    assert pod["readinessGates"] == [{"conditionType": ATTESTED_CONDITION}]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    vol = pod["volumes"][0]["configMap"]
    assert vol["name"] == BSTATUS["configMapName"]
    assert vol["items"] == [{"key": "policies__a.cedar", "path": "policies/a.cedar"}]
    assert dep["spec"]["selector"]["matchLabels"][ROUTE_LABEL] == "r"
    env = pod["containers"][0]["env"]
    assert env[0]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert {"name": "CMCP_LISTEN", "value": "$(POD_IP):50051"} in env[1:]
    # what the agent policy pins must be what actually runs: nothing the kubelet would expand
    assert not any("$(" in word for word in rev.command)


def test_enclave_reads_its_initdata_from_the_annotation_as_in_a_kata_pod() -> None:
    """No launcher writes the decoded initdata into the container: the pod's own annotation is a
    read-only downward-API file, and the enclave is told to decode and re-hash it."""
    cfg = OperatorConfig()
    rev = revision("ns", "r", spec(), BSTATUS, [], cfg)
    pod = deployment("ns", "r", spec(), rev, cfg, OWNER)["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["initdata"]
    assert volume == {"name": "initdata", "downwardAPI": {"items": [{"path": "cc_init_data", "fieldRef": {
        "fieldPath": f"metadata.annotations['{ANNOTATION}']"}}]}}
    mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["initdata"]
    assert mount == {"name": "initdata", "mountPath": "/run/cmcp/initdata", "readOnly": True}
    assert rev.command[rev.command.index("--initdata-annotation") + 1] == "/run/cmcp/initdata/cc_init_data"
    assert "--initdata" not in rev.command and rev.command[-2:] == ("--tee", "tdx")


def test_enclave_pods_meet_the_restricted_pod_security_profile() -> None:
    cfg = OperatorConfig()
    rev = revision("ns", "r", spec(), BSTATUS, [], cfg)
    pod = deployment("ns", "r", spec(), rev, cfg, OWNER)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize(("tee", "runtime", "labels"), [
    ("tdx", "kata-qemu-tdx", {NFD_TDX, KATA_TDX}),
    ("snp", "kata-qemu-snp", {NFD_SNP}),
    ("simulated", None, set()),
])
def test_runtime_class_and_node_affinity(tee: str, runtime: str | None, labels: set[str]) -> None:
    cfg = OperatorConfig(appraisal=AppraisalPolicy(allow_simulated=True))
    rev = revision("ns", "r", spec(tee=tee), BSTATUS, [], cfg)
    pod = deployment("ns", "r", spec(tee=tee), rev, cfg, OWNER)["spec"]["template"]["spec"]
    assert pod.get("runtimeClassName") == runtime
    terms = (pod.get("affinity") or {}).get("nodeAffinity", {}) \
        .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    keys = {t["matchExpressions"][0]["key"] for t in terms}
    assert labels <= keys
    if tee == "tdx":
        assert NFD_SNP not in keys


def test_runtime_class_override() -> None:
    cfg = OperatorConfig(appraisal=AppraisalPolicy(allow_simulated=True),
                         runtime_classes={"tdx": "custom-tdx", "snp": "s", "any": "a", "simulated": ""})
    rev = revision("ns", "r", spec(), BSTATUS, [], cfg)
    pod = deployment("ns", "r", spec(), rev, cfg, OWNER)["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "custom-tdx"
    pod2 = deployment("ns", "r", spec(runtimeClassName="mine"), rev, cfg, OWNER)["spec"]["template"]["spec"]
    assert pod2["runtimeClassName"] == "mine"


@pytest.mark.parametrize(("tee", "provider"),
                         [("tdx", "tdx"), ("snp", "snp"), ("any", "coco-aa"), ("simulated", "simulated")])
def test_the_enclave_provider_follows_the_route_tee_even_when_simulated_evidence_is_accepted(
        tee: str, provider: str) -> None:
    """On a cluster the node's TSM (a stand-in's on dev clusters) supplies the evidence: accepting
    simulated evidence never switches a TDX/SNP route's enclave to the simulated provider."""
    for allow in (False, True):
        cfg = OperatorConfig(appraisal=AppraisalPolicy(allow_simulated=allow))
        rev = revision("ns", "r", spec(tee=tee), BSTATUS, [], cfg)
        assert rev.command[rev.command.index("--tee") + 1] == provider


def test_audience_forms_and_service() -> None:
    assert audience(spec(), "ns") == "http://up.example/mcp"
    svc_spec = spec(upstream={"service": {"name": "up", "port": 8080}})
    assert audience(svc_spec, "ns") == "http://up.ns.svc:8080/mcp"
    assert audience(spec(audience="urn:x"), "ns") == "urn:x"
    svc = service("ns", "r", spec(), OWNER)
    assert svc["spec"]["publishNotReadyAddresses"] is False
    assert svc["spec"]["selector"] == {ROUTE_LABEL: "r", "app.kubernetes.io/component": "enclave"}


@pytest.mark.parametrize("image", ["reg/cmcp-enclave:1", "reg/cmcp-enclave@sha256:" + "AB" * 32,
                                   'x@sha256:' + "0" * 64 + '"\nExecProcessRequest := true'])
def test_operator_refuses_an_enclave_image_that_is_not_a_digest(image: str) -> None:
    with pytest.raises(LaunchPolicyError, match="sha256"):
        revision("ns", "r", spec(image=image), BSTATUS, [], OperatorConfig())


def crd_image_pattern() -> str:
    crd = yaml.safe_load((ROOT / "crds" / "mcproutes.cmcp.dev.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return str(props["image"]["pattern"])


def test_crd_refuses_a_tag_and_a_hostile_image_string() -> None:
    """The apiserver (Go regexp: ``$`` is the end of text) refuses what the operator would refuse."""
    pattern = crd_image_pattern()
    assert pattern == IMAGE_DIGEST_PATTERN
    go_like = re.compile(pattern.removesuffix("$") + r"\Z")
    assert go_like.search("ghcr.io/cmcp-k8s/cmcp-enclave@sha256:" + "ab" * 32)
    hostile = 'x@sha256:' + "0" * 64 + '"\nExecProcessRequest := true'
    for bad in ("ghcr.io/cmcp-k8s/cmcp-enclave:0.1.0", hostile):
        assert not go_like.search(bad), bad


def test_the_gateway_keys_the_operator_holds_are_pinned_in_every_initdata() -> None:
    """Without them an enclave takes state-changing calls from any caller that reaches its port."""
    keys = (initdata_value(Ed25519PrivateKey.generate()),)
    pinned = revision("ns", "r", spec(), BSTATUS, [], OperatorConfig(enclave_image=IMAGE, gateway_keys=keys))
    unpinned = revision("ns", "r", spec(), BSTATUS, [], OperatorConfig(enclave_image=IMAGE))
    assert parse(pinned.initdata).cmcp.gateway_keys == keys
    assert parse(unpinned.initdata).cmcp.gateway_keys == ()


@pytest.mark.parametrize(("tee", "runtime"), [("tdx", "kata-qemu-nvidia-gpu-tdx"),
                                              ("snp", "kata-qemu-nvidia-gpu-snp")])
def test_a_gpu_route_gets_the_gpu_runtime_class_the_device_and_a_measured_gpu_flag(
        tee: str, runtime: str) -> None:
    cfg = OperatorConfig()
    gpu_spec = spec(tee=tee, gpu={"vendor": "nvidia", "count": 2})
    rev = revision("ns", "r", gpu_spec, BSTATUS, [], cfg)
    assert rev.command[-2:] == ("--gpu", "nvidia")
    # the flag is in the argv the initdata's launch policy pins
    assert "--gpu" in decode_annotation(deployment("ns", "r", gpu_spec, rev, cfg, OWNER)["spec"]["template"]
                                        ["metadata"]["annotations"][ANNOTATION]).decode()
    pod = deployment("ns", "r", gpu_spec, rev, cfg, OWNER)["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == runtime
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/pgpu"] == resources["limits"]["nvidia.com/pgpu"] == "2"
    plain = revision("ns", "r", spec(tee=tee), BSTATUS, [], cfg)
    assert "--gpu" not in plain.command


def test_a_simulated_gpu_needs_no_device_and_keeps_the_tee_runtime_class() -> None:
    cfg = OperatorConfig(appraisal=AppraisalPolicy(allow_simulated=True), gpu_provider="simulated",
                         gpu_resource="nvidia.com/GH100_H100_PCIE")
    gpu_spec = spec(gpu={"count": 1})
    rev = revision("ns", "r", gpu_spec, BSTATUS, [], cfg)
    assert rev.command[-2:] == ("--gpu", "simulated")
    pod = deployment("ns", "r", gpu_spec, rev, cfg, OWNER)["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "kata-qemu-tdx"
    assert "nvidia.com/GH100_H100_PCIE" not in pod["containers"][0]["resources"]["requests"]


def test_crd_gpu_schema_matches_the_requirement() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "mcproutes.cmcp.dev.yaml").read_text())
    gpu = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gpu"]
    assert gpu["properties"]["vendor"]["enum"] == list(VENDORS)
    assert gpu["properties"]["revocation"]["enum"] == list(REVOCATION_POLICIES)
    assert gpu["properties"]["count"]["maximum"] == MAX_GPUS
    chart = yaml.safe_load((ROOT / "charts" / "cmcp" / "crds" / "mcproutes.cmcp.dev.yaml").read_text())
    assert chart == crd
