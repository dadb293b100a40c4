"""Names shared by the CRDs, the handlers, the chart and the tests: one place to change them."""

from __future__ import annotations

from cmcp_core.crd import GROUP as GROUP

VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
BUNDLE_PLURAL = "policybundles"
ROUTE_PLURAL = "mcproutes"
BUNDLE_KIND = "PolicyBundle"
ROUTE_KIND = "McpRoute"

# Labels the operator puts on what it owns. ROUTE_LABEL is also the Service selector, so
# anyone can forge it: the readiness gate, not the label, is what admits a pod to endpoints.
ROUTE_LABEL = f"{GROUP}/route"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT_ENCLAVE = "enclave"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "cmcp-operator"
BUNDLE_LABEL = f"{GROUP}/policy-bundle"
BUNDLE_HASH_LABEL = f"{GROUP}/bundle-hash"  # first 16 hex chars (label values are <= 63)
BUNDLE_HASH_ANNOTATION = f"{GROUP}/bundle-hash"
INITDATA_DIGEST_ANNOTATION = f"{GROUP}/initdata-sha256"

# The pod condition the operator owns and the enclave pods list as a readiness gate.
ATTESTED_CONDITION = f"{GROUP}/attested"

FINALIZER = f"{GROUP}/cleanup"  # Kopf's, on McpRoutes
BUNDLE_FINALIZER = f"{GROUP}/bundle-in-use"  # ours: a used PolicyBundle waits for its routes
FIELD_MANAGER = "cmcp-operator"

ENCLAVE_PORT = 50051
DECIDE_HOP_PORT = 50052  # the lean decision hop (docs/adr/0024-lean-decision-hop.md); gateways only
METRICS_PORT = 9090
BUNDLE_MOUNT = "/etc/cmcp/bundle"
# A downward-API volume of the pod's initdata annotation (a Kata agent does not place the decoded
# document in the container): the enclave decodes it and re-hashes it against a fresh report.
INITDATA_DIR = "/run/cmcp/initdata"
INITDATA_FILE = "cc_init_data"
INITDATA_PATH = f"{INITDATA_DIR}/{INITDATA_FILE}"

# Node Feature Discovery and kata-deploy labels that mark confidential nodes.
NFD_TDX = "feature.node.kubernetes.io/cpu-security.tdx.enabled"
NFD_SNP = "feature.node.kubernetes.io/cpu-security.sev.snp.enabled"
KATA_TDX = "intel.feature.node.kubernetes.io/tdx"
KATA_SNP = "amd.feature.node.kubernetes.io/snp"

# Condition types.
COND_VALID = "Valid"
COND_READY = "Ready"
COND_ATTESTED = "Attested"
COND_DEGRADED = "Degraded"
COND_ROLLOUT = "RolloutInProgress"
