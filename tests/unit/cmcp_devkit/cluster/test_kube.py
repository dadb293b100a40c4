"""cmcp_devkit.cluster.kube: the dev kit's thin Kubernetes REST client (kubeconfig, verbs, errors).

The apiserver's answers come from an ``httpx.MockTransport``: the subject is which HTTP the
client sends and how it reads answers; the real apiserver is exercised by ``tests/e2e``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from cmcp_devkit.cluster.kube import Kube, KubeError
from cmcp_devkit.cluster.pki import ClusterPKI, kubeconfig_yaml

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return ClusterPKI(tmp_path_factory.mktemp("pki"))


def _kube(handler: Handler, token: str | None = None) -> Kube:
    kube = Kube.__new__(Kube)
    kube.server = "https://api"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kube.http = httpx.Client(base_url="https://api", transport=httpx.MockTransport(handler), headers=headers)
    return kube


def test_from_kubeconfig_reads_server_and_embedded_credentials(pki: ClusterPKI, tmp_path: Path) -> None:
    client = pki.issue("admin", "admin", organizations=("system:masters",))
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_yaml("https://127.0.0.1:6443", pki.ca.cert, client, "admin"))
    kube = Kube.from_kubeconfig(path)
    try:
        assert kube.server == "https://127.0.0.1:6443"
        assert "Authorization" not in kube.http.headers
    finally:
        kube.close()


def test_from_kubeconfig_honours_context_and_token(pki: ClusterPKI, tmp_path: Path) -> None:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "ca", "cluster": {"server": "https://a:1",
                                                "certificate-authority": str(pki.ca.cert)}},
                     {"name": "cb", "cluster": {"server": "https://b:2", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "sa", "user": {"token": "t0k"}}],
        "contexts": [{"name": "a", "context": {"cluster": "ca", "user": "sa"}},
                     {"name": "b", "context": {"cluster": "cb", "user": "sa"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    kube = Kube.from_kubeconfig(path, context="b")
    try:
        assert kube.server == "https://b:2"
        assert kube.http.headers["Authorization"] == "Bearer t0k"
    finally:
        kube.close()


def test_non_2xx_is_a_kube_error_keeping_status_and_body() -> None:
    kube = _kube(lambda r: httpx.Response(409, text='{"reason":"AlreadyExists"}'))
    with pytest.raises(KubeError) as info:
        kube.create("/api/v1/namespaces", {"metadata": {"name": "x"}})
    assert info.value.status == 409 and "AlreadyExists" in info.value.body
    assert str(info.value).startswith("POST /api/v1/namespaces -> 409")


def test_verbs_send_the_right_http() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "DELETE":
            return httpx.Response(200)
        return httpx.Response(200, json={"ok": request.method})

    kube = _kube(handler, token="abc")
    assert kube.get("/api/v1/pods", labelSelector="a=b") == {"ok": "GET"}
    assert kube.patch("/p", {"x": 1}, kind="strategic") == {"ok": "PATCH"}
    kube.patch("/p", [{"op": "add"}], kind="json")
    kube.apply("/apply", {"kind": "ConfigMap"}, manager="me")
    assert kube.delete("/d") is None  # empty body: None
    get, strategic, json_patch, apply, delete = seen
    assert get.url.params["labelSelector"] == "a=b" and get.headers["Authorization"] == "Bearer abc"
    assert strategic.headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert json_patch.headers["Content-Type"] == "application/json-patch+json"
    assert json.loads(json_patch.content) == [{"op": "add"}]
    assert apply.method == "PATCH" and apply.headers["Content-Type"] == "application/apply-patch+yaml"
    assert dict(apply.url.params) == {"fieldManager": "me", "force": "true"}
    assert delete.method == "DELETE"
    with pytest.raises(KeyError):
        kube.patch("/p", {}, kind="nonsense")


def test_delete_of_a_missing_object() -> None:
    kube = _kube(lambda r: httpx.Response(404, text="not found"))
    assert kube.delete("/gone") is None
    with pytest.raises(KubeError) as info:
        kube.delete("/gone", missing_ok=False)
    assert info.value.status == 404
    forbidden = _kube(lambda r: httpx.Response(403, text="forbidden"))
    with pytest.raises(KubeError):
        forbidden.delete("/x")  # only 404 is "already gone"


def test_wait_for_returns_the_value_and_rides_over_api_errors() -> None:
    kube = _kube(lambda r: httpx.Response(200))
    answers: list[object] = [KubeError("GET", "/x", 503, "busy"), None, {"ready": True}]

    def probe() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert kube.wait_for("ready", probe, interval=0.0) == {"ready": True}


def test_wait_for_times_out_with_the_last_error_and_a_hint() -> None:
    kube = _kube(lambda r: httpx.Response(200))

    def probe() -> None:
        raise KubeError("GET", "/x", 500, "boom")

    with pytest.raises(TimeoutError, match="waiting for the pod; last error: GET /x -> 500: boom") as info:
        kube.wait_for("the pod", probe, timeout=0.0, interval=0.0, on_timeout=lambda: "LOGS HERE")
    assert "LOGS HERE" in str(info.value)

