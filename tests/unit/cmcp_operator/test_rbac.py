"""The operator's RBAC list (:mod:`cmcp_operator.rbac`): explicit, least-privilege, printable."""

from __future__ import annotations

import pytest
import yaml

from cmcp_operator import rbac
from cmcp_operator.constants import GROUP

CLUSTER_SCOPED = {"validatingwebhookconfigurations", "mutatingwebhookconfigurations", "clusterkopfpeerings"}


def test_rbac_is_explicit_and_printable(capsys: pytest.CaptureFixture[str]) -> None:
    for rule in rbac.rules():
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "update" not in rule["verbs"]  # the operator only patches
    pod_rules = [r for r in rbac.rules() if "pods" in r["resources"]]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in pod_rules)  # never write pods
    assert any(r["resources"] == ["pods/status"] and r["verbs"] == ["patch"] for r in rbac.rules())
    rbac.main([])
    assert yaml.safe_load(capsys.readouterr().out) == rbac.grants()


def test_every_grant_says_why_and_rules_are_copies() -> None:
    assert all(g.why.strip() for g in rbac.GRANTS)
    first = rbac.rules()
    first[0]["verbs"] = ["*"]  # a caller editing its copy must not widen the role
    assert "*" not in rbac.rules()[0]["verbs"]
    doc = rbac.grants()
    doc[0]["rule"]["verbs"].append("delete")
    assert "delete" not in rbac.grants()[0]["rule"]["verbs"]


def test_cluster_grants_name_their_object_except_list_and_watch() -> None:
    """Cluster-scoped: only what cannot live in a Role, and every verb that can be limited by
    name (get, patch) is; list/watch cannot be (Kubernetes ignores names for collections)."""
    for g in rbac.GRANTS:
        if g.where == "cluster":
            assert set(g.rule["resources"]) <= CLUSTER_SCOPED, g
            assert g.rule.get("resourceNames") or set(g.rule["verbs"]) <= {"list", "watch"}, g
        else:
            assert not set(g.rule["resources"]) & CLUSTER_SCOPED, g
    # No cluster-wide reads of CRDs or namespaces (Kopf's scanning is off), no create on any
    # cluster-scoped kind (the chart creates the webhook configurations and peering objects).
    every = [r for mode in ("namespaces", "cluster") for r in rbac.rules(mode=mode)]  # type: ignore[arg-type]
    resources = {res for r in every for res in r["resources"]}
    assert not resources & {"customresourcedefinitions", "namespaces", "secrets", "nodes"}
    assert not [r for r in every if set(r["resources"]) & CLUSTER_SCOPED and "create" in r["verbs"]]


def test_modes_and_features_pick_their_grants() -> None:
    ns_cluster_part = rbac.rules(mode="namespaces", where="cluster", peering=True, peering_name="p")
    assert {res for r in ns_cluster_part for res in r["resources"]} == {
        "validatingwebhookconfigurations", "mutatingwebhookconfigurations"}
    ns_part = rbac.rules(mode="namespaces", where="watched", peering_name="rel-cmcp")
    peer_patch = [r for r in ns_part if r["resources"] == ["kopfpeerings"] and "patch" in r["verbs"]]
    assert peer_patch == [{"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
                           "resourceNames": ["rel-cmcp"], "verbs": ["patch"]}]
    assert not [r for r in ns_part if "clusterkopfpeerings" in r["resources"]]
    cluster = rbac.rules(mode="cluster", peering_name="rel-cmcp")
    assert not [r for r in cluster if "kopfpeerings" in r["resources"]]
    cluster_peer = [r for r in cluster if "clusterkopfpeerings" in r["resources"] and "patch" in r["verbs"]]
    assert [r["resourceNames"] for r in cluster_peer] == [["rel-cmcp"]]
    bare = rbac.rules(mode="namespaces", webhook=False, peering=False)
    assert not [r for r in bare if r["apiGroups"] in (["kopf.dev"], ["admissionregistration.k8s.io"])]


def test_no_delete_except_configmaps_and_webhook_patch_only_ours() -> None:
    deleters = [r["resources"] for r in rbac.rules() if "delete" in r["verbs"]]
    assert deleters == [["configmaps"]]  # the content-addressed copies it collects, nothing else
    webhook = [r for r in rbac.rules() if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert webhook and all(r.get("resourceNames") == [rbac.WEBHOOK_CONFIGURATION] for r in webhook)
    # The name Kopf manages (handlers: settings.admission.managed) is the one the role may patch.
    assert f"cmcp-operator.{GROUP}" == rbac.WEBHOOK_CONFIGURATION


def test_status_subresources_are_writable_for_both_kinds() -> None:
    status = [r for r in rbac.rules()
              if r["apiGroups"] == [GROUP] and "policybundles/status" in r["resources"]]
    assert len(status) == 1 and "mcproutes/status" in status[0]["resources"]
    assert status[0]["verbs"] == ["patch"]


def test_cli_cluster_role(capsys: pytest.CaptureFixture[str]) -> None:
    rbac.main(["--cluster-role", "other-role"])
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["metadata"]["name"] == "other-role" and doc["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert doc["rules"] == rbac.rules(mode="cluster")


def test_cli_rejects_unknown_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        rbac.main(["--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
