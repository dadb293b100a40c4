"""RBAC is live: a ServiceAccount gets exactly what its Role grants, and 403 for anything else."""

from __future__ import annotations

import pytest

from cmcp_devkit.cluster.kube import Kube, KubeError

from .conftest import E2ECluster


def _token(kube: Kube, ns: str, sa: str) -> str:
    tr = kube.create(
        f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    return str(tr["status"]["token"])


def test_serviceaccount_with_narrow_role_gets_403_outside_it(cluster: E2ECluster, namespace: str) -> None:
    kube, ns = cluster.kube, namespace
    kube.create(
        f"/api/v1/namespaces/{ns}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
    )
    kube.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    kube.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    kube.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v"}},
    )

    sa = Kube.with_token(cluster.server, cluster.ca_file, _token(kube, ns, "reader"))
    try:
        review = sa.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"
        # Inside the Role: allowed (RBAC propagation is immediate, but poll to be robust).
        cm = kube.wait_for(
            "the Role to take effect", lambda: sa.get(f"/api/v1/namespaces/{ns}/configmaps/cfg")
        )
        assert cm["data"] == {"k": "v"}
        assert "cfg" in [
            c["metadata"]["name"] for c in sa.get(f"/api/v1/namespaces/{ns}/configmaps")["items"]
        ]
        # Outside it: a verb not granted, a resource not granted, another namespace.
        denied = [
            ("PATCH", f"/api/v1/namespaces/{ns}/configmaps/cfg"),
            ("DELETE", f"/api/v1/namespaces/{ns}/configmaps/cfg"),
            ("GET", f"/api/v1/namespaces/{ns}/secrets"),
            ("GET", "/api/v1/namespaces/default/configmaps"),
        ]
        for method, path in denied:
            with pytest.raises(KubeError) as info:
                if method == "PATCH":
                    sa.patch(path, {"data": {"k": "changed"}})
                else:
                    sa.request(method, path)
            assert info.value.status == 403, f"{method} {path}"
            assert "forbidden" in info.value.body.lower()
        assert kube.get(f"/api/v1/namespaces/{ns}/configmaps/cfg")["data"] == {"k": "v"}
    finally:
        sa.close()
