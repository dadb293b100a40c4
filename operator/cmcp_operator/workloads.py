"""What the operator renders for a McpRoute: initdata, the enclave Deployment and the Service.

Pure functions of (route, bundle status, config) so the rollout is deterministic: the same
inputs give the same pod template, the same initdata bytes and so the same measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmcp_core.digest import tagged_sha256
from cmcp_core.initdata import ANNOTATION, CmcpEntry, encode_annotation, render
from cmcp_core.launch_policy import EnvRule, LaunchSpec, require_digest
from cmcp_operator.bundles import volume_items
from cmcp_operator.config import OperatorConfig
from cmcp_operator.constants import (
    ATTESTED_CONDITION,
    BUNDLE_HASH_ANNOTATION,
    BUNDLE_HASH_LABEL,
    BUNDLE_MOUNT,
    COMPONENT_ENCLAVE,
    COMPONENT_LABEL,
    DECIDE_HOP_PORT,
    ENCLAVE_PORT,
    INITDATA_DIGEST_ANNOTATION,
    INITDATA_DIR,
    INITDATA_FILE,
    INITDATA_PATH,
    KATA_SNP,
    KATA_TDX,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    METRICS_PORT,
    NFD_SNP,
    NFD_TDX,
    ROUTE_LABEL,
)

ENCLAVE_CONTAINER = "enclave"
TEE_PROVIDER = {"tdx": "tdx", "snp": "snp", "any": "coco-aa", "simulated": "simulated"}


@dataclass(frozen=True)
class Revision:
    """One measured configuration of a route: what its pods must attest to."""

    bundle_hash: str
    catalog_hash: str
    enforcement_mode: str
    configmap: str
    files: tuple[str, ...]  # bundle paths, for the volume items
    initdata: bytes
    command: tuple[str, ...]
    image: str

    @property
    def initdata_digest(self) -> str:
        return tagged_sha256(self.initdata)


def workload_name(route: str) -> str:
    return f"cmcp-{route}"[:63].rstrip("-")


def audience(spec: Mapping[str, Any], namespace: str) -> str:
    """The upstream identity measured into initdata; permits are minted for it only."""
    if spec.get("audience"):
        return str(spec["audience"])
    upstream = spec.get("upstream") or {}
    if upstream.get("url"):
        return str(upstream["url"])
    svc = upstream.get("service") or {}
    ns = svc.get("namespace") or namespace
    return f"{svc.get('scheme', 'http')}://{svc['name']}.{ns}.svc:{svc['port']}{svc.get('path', '/mcp')}"


def enclave_command(tee: str, config: OperatorConfig, gpu: Mapping[str, Any] | None = None) -> list[str]:
    """The exact argv the measured agent policy pins. No ``$(POD_IP)`` here: the kubelet would
    expand it, so the OCI args would no longer equal the pinned ones; the listen addresses come
    from the environment instead (see :func:`enclave_env`). The initdata is the downward-API file
    of the pod's annotation (:func:`initdata_volume`), decoded and re-hashed by the enclave.
    The ``--tee`` provider follows ``spec.tee`` alone: on a cluster the evidence comes from the node's
    TSM (a confidential node's, or the stand-in's, ADR 0019), never from launcher variables."""
    command = ["cmcp-enclave", "--bundle", BUNDLE_MOUNT, "--initdata-annotation", INITDATA_PATH,
               "--tee", TEE_PROVIDER[tee]]
    if gpu is not None:  # measured with the rest of the argv: the GPU mode is part of the launch policy
        command += ["--gpu", config.gpu_provider]
    return command


def initdata_volume() -> dict[str, Any]:
    """The pod's own initdata annotation as a file, read-only: how a Kata guest sees its initdata.
    The host writes it, so the enclave trusts it only after re-hashing it against a fresh report."""
    return {"name": "initdata", "downwardAPI": {"items": [{
        "path": INITDATA_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION}']"}}]}}


def enclave_env() -> list[dict[str, Any]]:
    """POD_IP from the downward API, then the listen addresses built from it (order matters)."""
    return [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "CMCP_LISTEN", "value": f"$(POD_IP):{ENCLAVE_PORT}"},
            {"name": "CMCP_DECIDE_LISTEN", "value": f"$(POD_IP):{DECIDE_HOP_PORT}"},
            {"name": "CMCP_METRICS_LISTEN", "value": f"$(POD_IP):{METRICS_PORT}"}]


# What the enclave image itself puts in the environment (enclave_pod/Dockerfile and its python base),
# pinned so the launch policy can demand every variable and nothing added.
IMAGE_PATH = "/opt/cmcp/bin:/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_ENV: tuple[EnvRule, ...] = (
    EnvRule("PATH", IMAGE_PATH),
    EnvRule("PYTHONDONTWRITEBYTECODE", "1"),
    EnvRule("PYTHONUNBUFFERED", "1"),
    EnvRule("LANG", "C.UTF-8"),
    EnvRule("GPG_KEY", pattern="[0-9A-F]{40}"),
    EnvRule("PYTHON_VERSION", pattern="[0-9]+\\.[0-9]+\\.[0-9]+"),
    EnvRule("PYTHON_SHA256", pattern="[0-9a-f]{64}"),
)
IP_PATTERN = "[0-9a-fA-F.:]+"
# Runtime-supplied values: the pod name as hostname, and the API server's service variables the
# kubelet injects even with enableServiceLinks off (values are cluster addresses, names fixed).
RUNTIME_ENV: tuple[EnvRule, ...] = (
    EnvRule("HOSTNAME", pattern="[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?"),
    EnvRule("KUBERNETES_SERVICE_HOST", pattern=IP_PATTERN),
    EnvRule("KUBERNETES_SERVICE_PORT", pattern="[0-9]{1,5}"),
    EnvRule("KUBERNETES_SERVICE_PORT_HTTPS", pattern="[0-9]{1,5}"),
    EnvRule("KUBERNETES_PORT", pattern=f"tcp://{IP_PATTERN}:[0-9]{{1,5}}"),
    EnvRule("KUBERNETES_PORT_443_TCP", pattern=f"tcp://{IP_PATTERN}:443"),
    EnvRule("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    EnvRule("KUBERNETES_PORT_443_TCP_PORT", "443"),
    EnvRule("KUBERNETES_PORT_443_TCP_ADDR", pattern=IP_PATTERN),
)


def launch_env() -> tuple[EnvRule, ...]:
    """Every variable the enclave container gets: image, runtime, and :func:`enclave_env` expanded."""
    pod = (EnvRule("POD_IP", pattern=IP_PATTERN),
           EnvRule("CMCP_LISTEN", pattern=f"{IP_PATTERN}:{ENCLAVE_PORT}"),
           EnvRule("CMCP_DECIDE_LISTEN", pattern=f"{IP_PATTERN}:{DECIDE_HOP_PORT}"),
           EnvRule("CMCP_METRICS_LISTEN", pattern=f"{IP_PATTERN}:{METRICS_PORT}"))
    return IMAGE_ENV + RUNTIME_ENV + pod


def launch_spec(namespace: str, image: str, command: list[str]) -> LaunchSpec:
    """The launch policy's view of the pod :func:`deployment` creates: keep the two in step."""
    return LaunchSpec(image=require_digest(image), args=tuple(command), env=launch_env(),
                      container_name=ENCLAVE_CONTAINER, namespace=namespace,
                      mounts=((BUNDLE_MOUNT, True), (INITDATA_DIR, True)))


def revision(namespace: str, name: str, spec: Mapping[str, Any], bundle_status: Mapping[str, Any],
             files: list[str], config: OperatorConfig) -> Revision:
    """Render the initdata for the bundle the PolicyBundle currently carries."""
    tee = str(spec.get("tee", "tdx"))
    image = str(spec.get("image") or config.enclave_image)
    command = enclave_command(tee, config, spec.get("gpu"))
    entry = CmcpEntry(
        bundle_hash=str(bundle_status["bundleHash"]),
        catalog_hash=str(bundle_status["catalogHash"]),
        enforcement_mode=str(bundle_status.get("enforcementMode", "enforce")),
        route=f"{namespace}/{name}",
        audience=audience(spec, namespace),
        gateway_keys=config.gateway_keys,
    )
    toml = render(entry, launch=launch_spec(namespace, image, command), algorithm=config.initdata_algorithm)
    return Revision(bundle_hash=entry.bundle_hash, catalog_hash=entry.catalog_hash,
                    enforcement_mode=entry.enforcement_mode,
                    configmap=str(bundle_status["configMapName"]), files=tuple(sorted(files)),
                    initdata=toml, command=tuple(command), image=image)


def node_affinity(tee: str) -> dict[str, Any] | None:
    """NFD or kata-deploy labels: either marks a node able to run that TEE."""
    def term(label: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": label, "operator": "In", "values": ["true"]}]}

    labels = {"tdx": [NFD_TDX, KATA_TDX], "snp": [NFD_SNP, KATA_SNP],
              "any": [NFD_TDX, KATA_TDX, NFD_SNP, KATA_SNP]}.get(tee)
    if not labels:
        return None
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term(label) for label in labels]}}}


def selector_labels(route: str) -> dict[str, str]:
    return {ROUTE_LABEL: route, COMPONENT_LABEL: COMPONENT_ENCLAVE}


ENCLAVE_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


def deployment(namespace: str, name: str, spec: Mapping[str, Any], rev: Revision,
               config: OperatorConfig, owner: dict[str, Any]) -> dict[str, Any]:
    """The enclave Deployment. maxUnavailable 0 + the readiness gate = old pods serve until
    new ones are attested; the Deployment controller cannot outrun the operator."""
    tee = str(spec.get("tee", "tdx"))
    labels = {**selector_labels(name), MANAGED_BY_LABEL: MANAGED_BY,
              BUNDLE_HASH_LABEL: rev.bundle_hash.partition(":")[2][:16]}
    pod_spec: dict[str, Any] = {
        "readinessGates": [{"conditionType": ATTESTED_CONDITION}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Pod Security "restricted": the enclave image runs as a numeric non-root USER.
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": ENCLAVE_CONTAINER,
            "image": rev.image,
            "command": [rev.command[0]],
            "args": list(rev.command[1:]),
            "env": enclave_env(),
            "ports": [{"name": "grpc", "containerPort": ENCLAVE_PORT, "protocol": "TCP"},
                      {"name": "decide-hop", "containerPort": DECIDE_HOP_PORT, "protocol": "TCP"},
                      {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
            "volumeMounts": [{"name": "bundle", "mountPath": BUNDLE_MOUNT, "readOnly": True},
                             {"name": "initdata", "mountPath": INITDATA_DIR, "readOnly": True}],
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            # Kata sizes the guest VM from the limits; requests let the scheduler place replicas.
            "resources": ENCLAVE_RESOURCES,
        }],
        "volumes": [{"name": "bundle", "configMap": {
            "name": rev.configmap, "items": volume_items(dict.fromkeys(rev.files, ""))}},
            initdata_volume()],
    }
    gpu = spec.get("gpu")
    if gpu is not None and config.gpu_provider == "nvidia":
        count = str(int(gpu.get("count", 1)))
        pod_spec["containers"][0]["resources"] = {
            "requests": {**ENCLAVE_RESOURCES["requests"], config.gpu_resource: count},
            "limits": {**ENCLAVE_RESOURCES["limits"], config.gpu_resource: count}}
    runtime = config.runtime_class(tee, spec.get("runtimeClassName"),
                                   gpu=gpu is not None and config.gpu_provider == "nvidia")
    if runtime:
        pod_spec["runtimeClassName"] = runtime
    affinity = node_affinity(tee)
    if affinity:
        pod_spec["affinity"] = affinity
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        pod_spec["tolerations"] = list(spec["tolerations"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": workload_name(name), "namespace": namespace,
                     "labels": {**selector_labels(name), MANAGED_BY_LABEL: MANAGED_BY},
                     "ownerReferences": [owner]},
        "spec": {
            "replicas": int(spec.get("replicas", 2)),
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        ANNOTATION: encode_annotation(rev.initdata),
                        BUNDLE_HASH_ANNOTATION: rev.bundle_hash,
                        INITDATA_DIGEST_ANNOTATION: rev.initdata_digest,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service(namespace: str, name: str, spec: Mapping[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """Selects enclave pods; only Ready (= attested) ones become endpoints."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": workload_name(name), "namespace": namespace,
                     "labels": {**selector_labels(name), MANAGED_BY_LABEL: MANAGED_BY},
                     "ownerReferences": [owner]},
        "spec": {
            "selector": selector_labels(name),
            "publishNotReadyAddresses": False,
            "sessionAffinity": str(spec.get("sessionAffinity", "None")),
            "ports": [{"name": "grpc", "port": ENCLAVE_PORT, "targetPort": "grpc", "protocol": "TCP",
                       "appProtocol": "grpc"}],
        },
    }


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": str(body["apiVersion"]), "kind": str(body["kind"]), "name": str(meta["name"]),
            "uid": str(meta["uid"]), "controller": True, "blockOwnerDeletion": True}
