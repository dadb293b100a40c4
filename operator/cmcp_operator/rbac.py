"""The RBAC the operator needs — the one list the Helm chart renders its ClusterRole from.

``python -m cmcp_operator.rbac`` prints a ClusterRole; ``--rules`` prints just the rules.
Every rule names why it exists; nothing is a wildcard. When the operator watches only some
namespaces the chart may bind the namespaced part with RoleBindings; the webhook
configuration, CRD, namespace and peering rules are cluster-scoped either way.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from cmcp_operator.constants import GROUP

WEBHOOK_CONFIGURATION = f"cmcp-operator.{GROUP}"

# (why, rule) pairs; the rule dicts are exactly what goes into the ClusterRole.
RULES: list[tuple[str, dict[str, Any]]] = [
    ("watch our resources; finalizers (ours on bundles, Kopf's on routes) and Kopf's progress annotations",
     {"apiGroups": [GROUP], "resources": ["policybundles", "mcproutes"],
      "verbs": ["get", "list", "watch", "patch", "update"]}),
    ("write status (hashes, conditions, pods[])",
     {"apiGroups": [GROUP], "resources": ["policybundles/status", "mcproutes/status"],
      "verbs": ["get", "patch", "update"]}),
    ("find and attest enclave pods",
     {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}),
    ("set the readiness-gate condition cmcp.dev/attested",
     {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}),
    ("read bundle ConfigMaps; create the immutable, content-addressed copies; collect old ones",
     {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "delete"]}),
    ("the route Service (server-side apply)",
     {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "patch"]}),
    ("the enclave Deployment (server-side apply)",
     {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "patch"]}),
    ("Events on bundles, routes and pods",
     {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
    ("Kopf manages the webhook configurations (caBundle, rules; the mutating one stays empty)",
     {"apiGroups": ["admissionregistration.k8s.io"],
      "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
      "verbs": ["create"]}),
    ("... and patches only ours",
     {"apiGroups": ["admissionregistration.k8s.io"],
      "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
      "resourceNames": [WEBHOOK_CONFIGURATION], "verbs": ["get", "patch"]}),
    ("Kopf discovers resources and namespaces at start",
     {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
      "verbs": ["get", "list", "watch"]}),
    ("namespace patterns (--namespace with globs)",
     {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}),
    ("leader election (--peering): Kopf peering objects",
     {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"],
      "verbs": ["get", "list", "watch", "patch"]}),
]


def rules() -> list[dict[str, Any]]:
    return [dict(rule) for _, rule in RULES]


def cluster_role(name: str = "cmcp-operator") -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "cmcp-operator"}},
            "rules": rules()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cmcp_operator.rbac", description=__doc__)
    p.add_argument("--name", default="cmcp-operator")
    p.add_argument("--rules", action="store_true", help="print only the rules list")
    a = p.parse_args(argv)
    doc: Any = rules() if a.rules else cluster_role(a.name)
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))


if __name__ == "__main__":
    main()
