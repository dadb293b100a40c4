"""The RBAC the operator needs — the one list the Helm chart renders its Roles from.

``python -m cmcp_operator.rbac`` prints the grants (the chart's ``files/operator-rbac-rules.yaml``
is that output, verbatim); ``--cluster-role NAME`` prints one ClusterRole of every grant a
cluster-wide operator gets (for running the operator outside the chart).

Every grant says why it exists, where it is granted and in which mode:

* ``where: watched`` — a Role + RoleBinding in each watched namespace (namespaced mode, the
  default), or, in cluster mode (an explicit opt-in), one ClusterRole + ClusterRoleBinding;
* ``where: cluster`` — cluster-scoped objects, always a ClusterRole, and every one of them is
  limited by ``resourceNames`` except list/watch (Kubernetes cannot limit those by name).

What is deliberately absent: create on webhook configurations (the chart creates ours, the
operator only reads and patches it, :func:`cmcp_operator.webhook.manage_existing_configuration`),
CRD and namespace reads (Kopf's cluster scanning is off; it discovers resources through the
discovery API, which needs no grant), update (the operator only patches), and get on anything
it only applies. ConfigMap delete stays, in the watched namespaces only: RBAC cannot select by
label, and the content-addressed bundle copies have names unknown in advance; the operator
deletes only copies it lists by its own label, with a UID precondition.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from cmcp_operator.constants import GROUP

WEBHOOK_CONFIGURATION = f"cmcp-operator.{GROUP}"
# The chart names the peering object after its release; it replaces this placeholder.
PEERING_NAME = "<peering>"

Where = Literal["watched", "cluster"]
Mode = Literal["both", "namespaces", "cluster"]
Feature = Literal["always", "webhook", "peering"]


@dataclass(frozen=True)
class Grant:
    why: str
    rule: dict[str, Any]
    where: Where = "watched"
    mode: Mode = "both"  # the operator.watchScope this grant belongs to
    feature: Feature = "always"  # granted only while that chart feature is on
    # Which ones an operator needs is checked against a live apiserver: removing any of them
    # makes the operator fail visibly (tests/e2e/test_operator_least_privilege.py).

    def as_dict(self) -> dict[str, Any]:
        return {"why": self.why, "where": self.where, "mode": self.mode, "feature": self.feature,
                "rule": copy.deepcopy(self.rule)}


def _rule(group: str, resources: list[str], verbs: list[str],
          names: list[str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": [group], "resources": resources}
    if names:
        rule["resourceNames"] = names
    rule["verbs"] = verbs
    return rule


ADMISSION = "admissionregistration.k8s.io"
WEBHOOK_KINDS = ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]

GRANTS: tuple[Grant, ...] = (
    Grant("watch our resources (Kopf's watch streams), read one (reconcile)",
          _rule(GROUP, ["policybundles", "mcproutes"], ["get", "list", "watch"])),
    Grant("finalizers (ours on bundles, Kopf's on routes) and Kopf's progress annotations",
          _rule(GROUP, ["policybundles", "mcproutes"], ["patch"])),
    Grant("write status (hashes, conditions, pods[])",
          _rule(GROUP, ["policybundles/status", "mcproutes/status"], ["patch"])),
    Grant("find and attest enclave pods (Kopf's pod watch, the route's pod list)",
          _rule("", ["pods"], ["list", "watch"])),
    Grant("set the readiness-gate condition cmcp.dev/attested",
          _rule("", ["pods/status"], ["patch"])),
    Grant("read bundle ConfigMaps; list the content-addressed copies by label",
          _rule("", ["configmaps"], ["get", "list"])),
    Grant("create the immutable, content-addressed bundle copies",
          _rule("", ["configmaps"], ["create"])),
    Grant("collect superseded copies (only those listed by our label, UID precondition)",
          _rule("", ["configmaps"], ["delete"])),
    Grant("the route Service (server-side apply creates, then patches)",
          _rule("", ["services"], ["create", "patch"])),
    Grant("the enclave Deployment (server-side apply creates, then patches)",
          _rule("apps", ["deployments"], ["create", "patch"])),
    Grant("Events on bundles, routes and pods (Kopf posts core/v1 Events)",
          _rule("", ["events"], ["create"])),
    Grant("Kopf's managed admission: read and fill in our webhook configurations (the chart "
          "creates them; the mutating one stays empty)",
          _rule(ADMISSION, WEBHOOK_KINDS, ["get", "patch"], [WEBHOOK_CONFIGURATION]),
          where="cluster", feature="webhook"),
    Grant("leader election (--peering): Kopf watches the peering objects of its namespaces",
          _rule("kopf.dev", ["kopfpeerings"], ["list", "watch"]),
          mode="namespaces", feature="peering"),
    Grant("... and keeps itself alive in ours",
          _rule("kopf.dev", ["kopfpeerings"], ["patch"], [PEERING_NAME]),
          mode="namespaces", feature="peering"),
    Grant("leader election (--peering, cluster mode): Kopf watches the cluster peering objects",
          _rule("kopf.dev", ["clusterkopfpeerings"], ["list", "watch"]),
          where="cluster", mode="cluster", feature="peering"),
    Grant("... and keeps itself alive in ours",
          _rule("kopf.dev", ["clusterkopfpeerings"], ["patch"], [PEERING_NAME]),
          where="cluster", mode="cluster", feature="peering"),
)


def grants() -> list[dict[str, Any]]:
    """The chart's copy (``files/operator-rbac-rules.yaml``): fresh dicts, callers may edit."""
    return [g.as_dict() for g in GRANTS]


def rules(*, mode: Literal["namespaces", "cluster"] = "cluster", where: Where | None = None,
          webhook: bool = True, peering: bool = True,
          peering_name: str = PEERING_NAME) -> list[dict[str, Any]]:
    """The rules one install grants (copies): ``where`` picks the Role or the ClusterRole part."""
    wanted = {"always"} | ({"webhook"} if webhook else set()) | ({"peering"} if peering else set())
    out = []
    for g in GRANTS:
        if g.mode in ("both", mode) and g.feature in wanted and (where is None or g.where == where):
            rule = copy.deepcopy(g.rule)
            if "resourceNames" in rule:
                rule["resourceNames"] = [peering_name if n == PEERING_NAME else n
                                         for n in rule["resourceNames"]]
            out.append(rule)
    return out


def cluster_role(name: str = "cmcp-operator", *, peering_name: str = PEERING_NAME,
                 webhook: bool = True, peering: bool = True) -> dict[str, Any]:
    """Every grant of a cluster-wide operator in one ClusterRole (the chart's cluster mode)."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "cmcp-operator"}},
            "rules": rules(mode="cluster", webhook=webhook, peering=peering, peering_name=peering_name)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cmcp_operator.rbac", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster-role", metavar="NAME", default=None,
                   help="print a ClusterRole of every grant a cluster-wide operator gets")
    a = p.parse_args(argv)
    doc: Any = cluster_role(a.cluster_role) if a.cluster_role else grants()
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, width=120))


if __name__ == "__main__":
    main()
