"""The operator's RBAC list (:mod:`cmcp_operator.rbac`): explicit, least-privilege, printable."""

from __future__ import annotations

import pytest
import yaml

from cmcp_operator import rbac
from cmcp_operator.constants import GROUP


def test_rbac_is_explicit_and_printable(capsys: pytest.CaptureFixture[str]) -> None:
    for rule in rbac.rules():
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    pod_rules = [r for r in rbac.rules() if "pods" in r["resources"]]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in pod_rules)  # never write pods
    assert any(r["resources"] == ["pods/status"] and r["verbs"] == ["patch"] for r in rbac.rules())
    rbac.main([])
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["kind"] == "ClusterRole" and doc["rules"] == rbac.rules()



def test_every_rule_says_why_and_rules_are_copies() -> None:
    assert all(why.strip() for why, _ in rbac.RULES)
    first = rbac.rules()
    first[0]["verbs"] = ["*"]  # a caller editing its copy must not widen the role
    assert "*" not in rbac.rules()[0]["verbs"]


def test_no_delete_except_configmaps_and_webhook_patch_only_ours() -> None:
    deleters = [r["resources"] for r in rbac.rules() if "delete" in r["verbs"]]
    assert deleters == [["configmaps"]]  # the content-addressed copies it collects, nothing else
    webhook_patch = [r for r in rbac.rules() if r["apiGroups"] == ["admissionregistration.k8s.io"]
                     and "patch" in r["verbs"]]
    assert webhook_patch
    assert all(r.get("resourceNames") == [rbac.WEBHOOK_CONFIGURATION] for r in webhook_patch)
    # The name Kopf manages (handlers: settings.admission.managed) is the one the role may patch.
    assert f"cmcp-operator.{GROUP}" == rbac.WEBHOOK_CONFIGURATION


def test_status_subresources_are_writable_for_both_kinds() -> None:
    status = [r for r in rbac.rules()
              if r["apiGroups"] == [GROUP] and "policybundles/status" in r["resources"]]
    assert len(status) == 1 and "mcproutes/status" in status[0]["resources"] and "patch" in status[0]["verbs"]


def test_cli_name_and_rules_only(capsys: pytest.CaptureFixture[str]) -> None:
    rbac.main(["--name", "other-role"])
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["metadata"]["name"] == "other-role" and doc["apiVersion"] == "rbac.authorization.k8s.io/v1"
    rbac.main(["--rules"])
    assert yaml.safe_load(capsys.readouterr().out) == rbac.rules()


def test_cli_rejects_unknown_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        rbac.main(["--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
