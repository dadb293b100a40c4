"""Generate charts/cmcp/values.schema.json (kept in git; a unit test checks it is current).

Written as Python so shared pieces (image, resources, security contexts) are defined once.
Run: python charts/tools/gen_schema.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "cmcp" / "values.schema.json"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DIGEST = r"^sha256:[a-f0-9]{64}$"
DURATION = r"^[0-9]+(ms|s|m|h)$"


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    out.update(extra)
    return out


def free_map(desc: str) -> dict[str, Any]:
    return {"type": "object", "description": desc, "additionalProperties": {"type": "string"}}


def string(desc: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": desc, **extra}


def port(desc: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": 65535, "description": desc}


def image(with_pull_policy: bool = True) -> dict[str, Any]:
    props: dict[str, Any] = {
        "repository": string(
            "Image repository (without registry when imageRegistry is set).",
            minLength=1,
            pattern=r"^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?$",
        ),
        "tag": string("Image tag; empty = appVersion.", pattern=r"^([\w][\w.-]{0,127})?$"),
        "digest": {
            "description": "sha256 image digest; empty = use the tag.",
            "anyOf": [{"type": "string", "const": ""}, {"type": "string", "pattern": DIGEST}],
        },
    }
    if with_pull_policy:
        props["pullPolicy"] = {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]}
    return obj(props, required=["repository"], description="Container image.")


def replicas(desc: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": 100, "description": desc}


K8S_OBJECT = {"type": "object", "description": "Passed through to Kubernetes as is."}
K8S_LIST = {"type": "array", "items": {"type": "object"}, "description": "Passed through to Kubernetes."}

QUANTITIES = {"type": "object", "additionalProperties": {"type": ["string", "number"]}}
RESOURCES = obj(
    {
        "requests": QUANTITIES,
        "limits": QUANTITIES,
    },
    description="Container resource requests and limits.",
)

SERVICE_ACCOUNT = obj(
    {
        "create": {"type": "boolean"},
        "name": string("ServiceAccount name.", pattern=rf"({DNS_SUBDOMAIN})|^$"),
        "annotations": free_map("ServiceAccount annotations."),
    },
    required=["create"],
)

PDB = obj(
    {
        "enabled": {"type": "boolean"},
        "maxUnavailable": {
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^[0-9]{1,3}%$"}]
        },
    },
    required=["enabled"],
)


def workload_common() -> dict[str, Any]:
    return {
        "extraArgs": {"type": "array", "items": {"type": "string"}},
        "extraEnv": K8S_LIST,
        "extraVolumes": K8S_LIST,
        "extraVolumeMounts": K8S_LIST,
        "resources": RESOURCES,
        # Hardening is not optional: these must keep the restricted Pod Security Standard.
        "podSecurityContext": {
            "type": "object",
            "required": ["runAsNonRoot", "seccompProfile"],
            "properties": {
                "runAsNonRoot": {"const": True},
                "runAsUser": {"type": "integer", "minimum": 1},
                "seccompProfile": obj(
                    {
                        "type": {"enum": ["RuntimeDefault", "Localhost"]},
                        "localhostProfile": {"type": "string"},
                    },
                    required=["type"],
                ),
            },
        },
        "securityContext": {
            "type": "object",
            "required": ["allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"],
            "properties": {
                "allowPrivilegeEscalation": {"const": False},
                "readOnlyRootFilesystem": {"const": True},
                "privileged": {"const": False},
                "runAsNonRoot": {"const": True},
                "capabilities": {
                    "type": "object",
                    "required": ["drop"],
                    "properties": {
                        "drop": {"type": "array", "contains": {"const": "ALL"}},
                        "add": {"type": "array", "maxItems": 0},
                    },
                },
            },
        },
        "podAnnotations": free_map("Pod annotations."),
        "podLabels": free_map("Pod labels."),
        "nodeSelector": free_map("Node selector."),
        "tolerations": K8S_LIST,
        "affinity": K8S_OBJECT,
        "priorityClassName": {"type": "string"},
        "serviceAccount": SERVICE_ACCOUNT,
        "podDisruptionBudget": PDB,
    }


OPERATOR = obj(
    {
        "image": image(),
        "replicas": replicas("Operator replicas (Kopf peering elects the active one)."),
        "watchScope": {"enum": ["cluster", "namespaces"],
                       "description": "namespaces (default): Roles in watchNamespaces only; cluster: opt-in, "
                                      "one ClusterRole over every namespace"},
        "watchNamespaces": {
            "type": "array",
            "uniqueItems": True,
            "items": {"type": "string", "pattern": DNS_LABEL, "maxLength": 63},
        },
        "verbose": {"type": "boolean"},
        "peering": obj({"enabled": {"type": "boolean"}}, required=["enabled"]),
        "webhook": obj(
            {
                "enabled": {"type": "boolean"},
                "port": port("Webhook HTTPS port."),
                "certificate": obj(
                    {
                        "source": {"enum": ["operator", "secret"]},
                        "existingSecret": {"type": "string"},
                    },
                    required=["source"],
                    allOf=[
                        {
                            "if": {"properties": {"source": {"const": "secret"}}},
                            "then": {
                                "properties": {"existingSecret": {"minLength": 1, "pattern": DNS_SUBDOMAIN}},
                                "required": ["existingSecret"],
                            },
                        }
                    ],
                ),
            },
            required=["enabled", "port", "certificate"],
        ),
        "health": obj({"port": port("Kopf liveness port.")}, required=["port"]),
        "metrics": obj({"port": port("Metrics port.")}, required=["port"]),
        **workload_common(),
    },
    required=["image", "replicas", "watchScope", "webhook", "metrics", "serviceAccount"],
    allOf=[
        {
            "if": {"properties": {"replicas": {"minimum": 2}}},
            "then": {"properties": {"peering": {"properties": {"enabled": {"const": True}}}}},
        }
    ],
)

TCB = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]

ATTESTATION = obj(
    {
        "allowedTeeTypes": {
            "type": "array",
            "uniqueItems": True,
            "items": {"enum": ["tdx", "snp"]},
            "description": "Hardware TEE types accepted.",
        },
        "allowSimulated": {"type": "boolean", "description": "Accept the software-only simulated TEE."},
        "acceptedTcbStatuses": {"type": "array", "uniqueItems": True, "minItems": 1, "items": {"enum": TCB}},
        "reattestIntervalSeconds": {"type": "number", "minimum": 1, "maximum": 86400},
        "attestTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        "initdataAlgorithm": {"enum": ["sha256", "sha384", "sha512"]},
        "runtimeClasses": obj(
            {
                tee: {"anyOf": [{"const": ""}, {"type": "string", "pattern": DNS_SUBDOMAIN}]}
                for tee in ("tdx", "snp", "any", "simulated")
            },
            required=["tdx", "snp", "any", "simulated"],
        ),
        # McpRoutes with spec.gpu: Kata's GPU runtime classes, the device plugin's resource, --gpu.
        "gpu": obj(
            {
                "runtimeClasses": obj(
                    {
                        tee: {"anyOf": [{"const": ""}, {"type": "string", "pattern": DNS_SUBDOMAIN}]}
                        for tee in ("tdx", "snp")
                    },
                    required=["tdx", "snp"],
                ),
                "resource": string("Extended resource a GPU route's enclave requests.",
                                   pattern=r"^[a-z0-9.-]+/[A-Za-z0-9_.-]+$"),
                "provider": {"enum": ["nvidia", "simulated"]},
            },
            required=["runtimeClasses", "resource", "provider"],
        ),
    },
    required=[
        "allowedTeeTypes",
        "allowSimulated",
        "acceptedTcbStatuses",
        "reattestIntervalSeconds",
        "runtimeClasses",
    ],
    allOf=[
        # Something must be attestable: with no hardware type allowed, simulated must be.
        {
            "if": {"properties": {"allowSimulated": {"const": False}}},
            "then": {"properties": {"allowedTeeTypes": {"minItems": 1}}},
        },
        # A simulated GPU is software-only evidence too.
        {
            "if": {"properties": {"gpu": {"properties": {"provider": {"const": "simulated"}},
                                          "required": ["provider"]}},
                   "required": ["gpu"]},
            "then": {"properties": {"allowSimulated": {"const": True}}},
        },
    ],
)

def enclave_image() -> dict[str, Any]:
    """By digest only: the operator pins the enclave image in the measured launch policy and
    refuses a tag (a registry can re-point a tag after the policy is measured)."""
    props = image(with_pull_policy=False)["properties"]
    return obj(
        {"repository": props["repository"],
         "digest": string("sha256 digest of the enclave image (required; no tags).", pattern=DIGEST)},
        required=["repository", "digest"],
        description="Enclave image, pinned by digest.",
    )


ENCLAVE = obj({"image": enclave_image()}, required=["image"])

def named_texts(desc: str, marker: str) -> dict[str, Any]:
    """name -> file text; the names become ConfigMap keys and file names, so DNS labels."""
    return {"type": "object", "description": desc, "propertyNames": {"pattern": DNS_LABEL, "maxLength": 63},
            "additionalProperties": {"type": "string", "minLength": 1, "pattern": marker}}


# Signed enclave release manifests and the keys that sign them. Required (the chart fails to render
# without one of each), but checked in the template, where the message can say what to do.
RELEASE = obj(
    {
        "manifests": named_texts("Release manifests (DSSE JSON text) by name.", r"payloadType"),
        "keys": named_texts("Release signing public keys (PEM) by name.", r"-----BEGIN PUBLIC KEY-----"),
    },
    required=["manifests", "keys"],
    description="Signed enclave release manifests: the reference values every guest must match.",
)


# The gateway's Ed25519 key, pinned by the operator in every enclave's initdata.
GATEWAY_IDENTITY = obj(
    {"existingSecret": string("Secret with gateway-key.pem (PKCS#8 PEM); empty: generated at install, kept.",
                              pattern=rf"^({DNS_SUBDOMAIN[1:-1]})?$")},
    description="The gateway's identity towards the enclaves.",
)


def one_volume(kind: str, source: dict[str, Any]) -> dict[str, Any]:
    return obj({kind: source}, required=[kind])


TDX = obj(
    {
        "pccsUrl": string("PCCS base URL for TDX collateral (empty: cache only).",
                          pattern=r"^(https://[^\s]+)?$"),
        "collateralDir": {
            "description": "Volume of the TDX collateral cache: {} (an emptyDir), an emptyDir, "
                           "an existing PVC or a hostPath.",
            "oneOf": [
                {"type": "object", "maxProperties": 0},
                one_volume("emptyDir", {"type": "object"}),
                one_volume("persistentVolumeClaim", obj(
                    {"claimName": string("PVC name.", pattern=DNS_SUBDOMAIN),
                     "readOnly": {"type": "boolean"}},
                    required=["claimName"])),
                one_volume("hostPath", obj(
                    {"path": string("Node path.", pattern="^/"),
                     "type": {"enum": ["", "Directory", "DirectoryOrCreate"]}},
                    required=["path"])),
            ],
        },
    },
    required=["collateralDir"],
)

INGRESS = obj(
    {
        "enabled": {"type": "boolean"},
        "className": {"type": "string"},
        "annotations": free_map("Ingress annotations."),
        "hosts": {
            "type": "array",
            "items": obj(
                {
                    "host": {"type": "string"},
                    "paths": {
                        "type": "array",
                        "minItems": 1,
                        "items": obj(
                            {
                                "path": string("Path.", pattern="^/"),
                                "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
                            },
                            required=["path", "pathType"],
                        ),
                    },
                },
                required=["host", "paths"],
            ),
        },
        "tls": {
            "type": "array",
            "items": obj(
                {
                    "secretName": string("TLS Secret.", minLength=1),
                    "hosts": {"type": "array", "items": {"type": "string"}},
                },
                required=["secretName"],
            ),
        },
    },
    required=["enabled"],
)

ROUTE = obj(
    {
        "name": string("Route name: the URL path segment /mcp/<name>.", pattern=DNS_LABEL, maxLength=63),
        "mcpRoute": obj(
            {
                "name": string("McpRoute name.", pattern=DNS_SUBDOMAIN),
                "namespace": string("McpRoute namespace.", pattern=DNS_LABEL),
            },
            required=["name"],
        ),
        "upstream": string("Upstream URL.", pattern=r"^https?://[^\s]+$"),
        "audience": string("Permit audience (the McpRoute's).", minLength=1),
        "expectedBundleHashes": {"type": "array", "items": {"type": "string", "pattern": DIGEST}},
        "expectedCatalogHashes": {"type": "array", "items": {"type": "string", "pattern": DIGEST}},
        "enforcementModes": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"type": "string", "enum": ["enforce", "advisory"]},
            "description": "Modes the route's enclaves may run in (default [enforce]).",
        },
        "open": {"type": "boolean"},
        "allowedHosts": {"type": "array", "items": string("host, host:port or host:*", minLength=1),
                         "description": "Host header values the route serves (DNS rebinding)."},
        "allowedOrigins": {"type": "array", "items": string("Origin, e.g. https://app.example",
                                                            pattern=r"^https?://[^\s/]+$"),
                           "description": "Browser Origins the route serves; any other is refused."},
        "authorization": obj(
            {
                "resource": string("The route's resource URI (RFC 8707), one of the bundle's "
                                   "identity.audiences.", pattern=r"^https?://[^\s#]+$"),
                "authorizationServers": {"type": "array", "minItems": 1,
                                         "items": string("Issuer URL.", pattern=r"^https?://[^\s]+$")},
                "scopesSupported": {"type": "array", "items": string("Scope.", minLength=1)},
            },
            required=["resource", "authorizationServers"],
            description="OAuth 2.1 protected resource (MCP authorization): tokens verified by the enclaves.",
        ),
    },
    required=["name", "mcpRoute", "upstream", "audience"],
)

# The gateway's audit store: SQLite on a claim (one replica), or PostgreSQL whose DSN is a Secret's.
AUDIT = obj(
    {
        "store": {"enum": ["sqlite", "postgresql"]},
        "sqlite": obj(
            {
                "volume": {"enum": ["persistentVolumeClaim", "emptyDir"]},
                "size": string("Size of the claim the chart creates.", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$"),
                "storageClassName": string("StorageClass (empty: the cluster default)."),
                "existingClaim": string("Existing claim to use instead.", pattern=rf"({DNS_SUBDOMAIN})|^$"),
            },
            required=["volume", "size"],
        ),
        "postgresql": obj(
            {
                "existingSecret": string("Secret holding the DSN.", pattern=rf"({DNS_SUBDOMAIN})|^$"),
                "secretKey": string("Key of the DSN in the Secret.", minLength=1),
            },
            required=["secretKey"],
        ),
    },
    required=["store", "sqlite", "postgresql"],
    allOf=[
        {
            "if": {"properties": {"store": {"const": "postgresql"}}},
            "then": {"properties": {"postgresql": {"properties": {"existingSecret": {"minLength": 1}}}}},
        }
    ],
)

GATEWAY = obj(
    {
        "enabled": {"type": "boolean"},
        "image": image(),
        "replicas": replicas("Gateway replicas."),
        "port": port("Agent-facing HTTP port."),
        "logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
        "routes": {"type": "array", "items": ROUTE},
        "limits": obj(
            {
                "maxBodyBytes": {"type": "integer", "minimum": 1024},
                "maxDepth": {"type": "integer", "minimum": 1, "maximum": 1000},
                "maxString": {"type": "integer", "minimum": 1},
                "maxConcurrentPerAgent": {"type": "integer", "minimum": 1},
                "decideTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0},
                "upstreamTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0},
                "sessionIdleSeconds": {"type": "number", "exclusiveMinimum": 0},
                "maxSessions": {"type": "integer", "minimum": 1},
                "maxSessionsPerAgent": {"type": "integer", "minimum": 1},
                "maxHeaderBytes": {"type": "integer", "minimum": 1024},
                "maxHeaders": {"type": "integer", "minimum": 8},
                "headerTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0},
                "bodyTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0},
                "maxConnections": {"type": "integer", "minimum": 1},
            }
        ),
        "attestRefreshSeconds": {"type": "number", "minimum": 1},
        "audit": AUDIT,
        "auth": obj(
            {"existingSecret": string("Secret with agent tokens.", pattern=DNS_SUBDOMAIN)},
            required=["existingSecret"],
        ),
        "routeNamespaces": {
            "type": "array",
            "uniqueItems": True,
            "items": {"type": "string", "pattern": DNS_LABEL},
        },
        "service": obj(
            {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "port": port("Service port."),
                "annotations": free_map("Service annotations."),
            },
            required=["type", "port"],
        ),
        "ingress": INGRESS,
        "metrics": obj({"port": port("Metrics port.")}, required=["port"]),
        **workload_common(),
    },
    required=["enabled", "image", "replicas", "port", "audit", "auth", "service", "metrics",
              "serviceAccount"],
)

MONITOR = obj(
    {
        "enabled": {"type": "boolean"},
        "interval": string("Scrape interval.", pattern=DURATION),
        "labels": free_map("Extra labels."),
    },
    required=["enabled"],
)

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "cmcp chart values",
    **obj(
        {
            "nameOverride": {"type": "string", "maxLength": 47},
            "fullnameOverride": {"type": "string", "maxLength": 47},
            "commonLabels": free_map("Labels added to every object."),
            "imagePullSecrets": {"type": "array", "items": {"type": "string", "pattern": DNS_SUBDOMAIN}},
            "imageRegistry": string(
                "Registry prefix.", pattern=r"^([a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*)?$"
            ),
            "operator": OPERATOR,
            "attestation": ATTESTATION,
            "release": RELEASE,
            "gatewayIdentity": GATEWAY_IDENTITY,
            "tdx": TDX,
            "enclave": ENCLAVE,
            "gateway": GATEWAY,
            "networkPolicy": obj(
                {
                    "enabled": {"type": "boolean"},
                    "enclaveNamespaces": {
                        "type": "array",
                        "uniqueItems": True,
                        "items": {"type": "string", "pattern": DNS_LABEL},
                    },
                    "gatewayIngressFrom": K8S_LIST,
                    "metricsIngressFrom": K8S_LIST,
                },
                required=["enabled"],
            ),
            "monitoring": obj({"serviceMonitor": MONITOR, "podMonitor": MONITOR}),
            # Helm adds "global" for subcharts/parents; accept it.
            "global": {"type": "object"},
        },
        required=["operator", "attestation", "release", "tdx", "enclave", "gateway"],
    ),
}


def render() -> str:
    return json.dumps(SCHEMA, indent=2) + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
