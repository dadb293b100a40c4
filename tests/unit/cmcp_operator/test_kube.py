"""The Kubernetes facade (:mod:`cmcp_operator.kube`): the requests it sends and how it reads the
answers (404/409/422 mapped, anything else raised).

The real ``kubernetes_asyncio`` client builds every request (URL, query, content type, body); only
its HTTP transport, ``RESTClientObject.request``, is replaced by a recorder that answers with a
scripted status. Every request is also checked against the operator's RBAC list, which the
facade exists to keep auditable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from cmcp_core.kube_config import SERVICE_ACCOUNT_DIR
from cmcp_operator import rbac
from cmcp_operator.constants import ATTESTED_CONDITION, BUNDLE_PLURAL, FIELD_MANAGER, GROUP, ROUTE_PLURAL
from cmcp_operator.kube import APPLY, MERGE, STRATEGIC, Kube
from tests.helpers.in_cluster import TOKEN, needs_mount_namespaces, run_in_pod, stand_in_apiserver

VERBS = {"POST": "create", "PATCH": "patch", "DELETE": "delete"}


@dataclass
class Response:
    """The part of an aiohttp response ``_json`` uses."""

    status: int
    body: bytes
    reason: str = "scripted"
    released: bool = False

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        self.released = True


@dataclass
class Sent:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class Transport:
    """Records each request; answers ``status`` (and ``reply`` as JSON) to all of them."""

    status: int = 200
    reply: Any = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)

    async def request(self, method: str, url: str, query_params: Any = None, headers: Any = None,
                      body: Any = None, post_params: Any = None, _preload_content: bool = True,
                      _request_timeout: Any = None) -> Response:
        parts = urlsplit(url)
        self.sent.append(Sent(method, parts.path, dict(parse_qs(parts.query)) | {
            k: [str(v)] for k, v in (query_params or [])}, (headers or {}).get("Content-Type", ""), body))
        resp = Response(self.status, json.dumps(self.reply).encode() if self.reply is not None else b"")
        self.responses.append(resp)
        return resp


@pytest.fixture
async def kube() -> Any:
    api = client.ApiClient(client.Configuration(host="https://apiserver.invalid"))
    transport = Transport()
    api.rest_client.request = transport.request  # type: ignore[method-assign]
    facade = Kube(api)
    facade.transport = transport  # type: ignore[attr-defined]
    yield facade
    await facade.close()


def allowed_by_rbac(sent: Sent) -> bool:
    """Is this request covered by a rule in :mod:`cmcp_operator.rbac` (group, resource, verb)?"""
    segs = sent.path.strip("/").split("/")
    group, rest = ("", segs[2:]) if segs[0] == "api" else (segs[1], segs[3:])
    assert rest[0] == "namespaces", sent.path  # the operator only touches namespaced objects
    resource, tail = rest[2], rest[3:]
    if len(tail) == 2:
        resource = f"{resource}/{tail[1]}"
    verb = VERBS.get(sent.method) or ("get" if tail else "list")
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for rule in rbac.rules())


async def call_everything(kube: Kube) -> None:
    await kube.get_bundle("ns", "b")
    await kube.get_route("ns", "r")
    await kube.list_routes("ns")
    await kube.patch_status(BUNDLE_PLURAL, "ns", "b", {"bundleHash": "h"})
    await kube.patch_route_status("ns", "r", {"replicas": 1})
    await kube.add_finalizer(BUNDLE_PLURAL, "ns", "b", [], "f")
    await kube.remove_finalizer(ROUTE_PLURAL, "ns", "r", ["f"], "f")
    for kind in ("Deployment", "Service"):  # what route_controller applies (ConfigMap: see below)
        await kube.apply({"kind": kind, "metadata": {"namespace": "ns", "name": "x"}})
    await kube.create_configmap_if_absent({"metadata": {"namespace": "ns", "name": "c"}})
    await kube.get_configmap_data("ns", "c")
    await kube.list_bundle_configmaps("ns", "b")
    await kube.delete_configmap("ns", "c", "uid-1")
    await kube.list_route_pods("ns", "r")
    await kube.set_attested_condition("ns", "p", True, "Attested", "ok", "T")


async def test_every_request_is_covered_by_the_rbac_list(kube: Any) -> None:
    await call_everything(kube)
    assert len(kube.transport.sent) == 15  # one request per call
    refused = [f"{s.method} {s.path}" for s in kube.transport.sent if not allowed_by_rbac(s)]
    assert refused == []
    assert all(r.released for r in kube.transport.responses)  # no connection leaks


async def test_applying_a_configmap_is_refused_not_sent(kube: Any) -> None:
    """RBAC grants no patch on ConfigMaps (least privilege): apply refuses the kind before any
    request, rather than send one a cluster would answer with 403."""
    before = len(kube.transport.sent)
    with pytest.raises(ValueError, match="cannot apply ConfigMap"):
        await kube.apply({"kind": "ConfigMap", "metadata": {"namespace": "ns", "name": "x"}})
    assert len(kube.transport.sent) == before


async def test_status_is_a_merge_patch_on_the_subresource(kube: Any) -> None:
    await kube.patch_route_status("ns", "r", {"replicas": 2})
    sent = kube.transport.sent[-1]
    assert sent.method == "PATCH"
    assert sent.path == f"/apis/{GROUP}/v1alpha1/namespaces/ns/{ROUTE_PLURAL}/r/status"
    assert sent.content_type == MERGE and sent.body == {"status": {"replicas": 2}}


async def test_finalizer_patches_are_guarded_by_a_test_of_what_we_saw(kube: Any) -> None:
    await kube.add_finalizer(BUNDLE_PLURAL, "ns", "b", [], "f")
    await kube.add_finalizer(BUNDLE_PLURAL, "ns", "b", ["other"], "f")
    await kube.remove_finalizer(BUNDLE_PLURAL, "ns", "b", ["other", "f"], "f")
    first, second, third = kube.transport.sent
    assert first.content_type == "application/json-patch+json"
    assert first.body == [{"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    assert second.body == [{"op": "test", "path": "/metadata/finalizers", "value": ["other"]},
                           {"op": "add", "path": "/metadata/finalizers/-", "value": "f"}]
    assert third.body == [{"op": "test", "path": "/metadata/finalizers/1", "value": "f"},
                          {"op": "remove", "path": "/metadata/finalizers/1"}]


@pytest.mark.parametrize("status", [404, 409, 422])
async def test_a_finalizer_race_is_left_to_the_next_event(kube: Any, status: int) -> None:
    kube.transport.status = status
    await kube.add_finalizer(BUNDLE_PLURAL, "ns", "b", ["x"], "f")
    await kube.remove_finalizer(BUNDLE_PLURAL, "ns", "b", ["f"], "f")


async def test_apply_is_server_side_apply_with_our_field_manager(kube: Any) -> None:
    await kube.apply({"kind": "Service", "metadata": {"namespace": "ns", "name": "svc"}, "spec": {}})
    sent = kube.transport.sent[-1]
    assert (sent.method, sent.content_type) == ("PATCH", APPLY)
    assert sent.path == "/api/v1/namespaces/ns/services/svc"
    assert sent.query["fieldManager"] == [FIELD_MANAGER] and sent.query["force"] == ["True"]
    with pytest.raises(ValueError, match="cannot apply Secret"):
        await kube.apply({"kind": "Secret", "metadata": {"namespace": "ns", "name": "s"}})


async def test_attested_condition_is_a_strategic_merge_of_only_ours(kube: Any) -> None:
    await kube.set_attested_condition("ns", "p", False, "Rogue", "m" * 2000, "2026-01-01T00:00:00Z")
    sent = kube.transport.sent[-1]
    assert (sent.path, sent.content_type) == ("/api/v1/namespaces/ns/pods/p/status", STRATEGIC)
    [cond] = sent.body["status"]["conditions"]
    assert cond["type"] == ATTESTED_CONDITION and cond["status"] == "False" and len(cond["message"]) == 1024
    assert cond["lastTransitionTime"] == cond["lastProbeTime"] == "2026-01-01T00:00:00Z"


async def test_label_selectors(kube: Any) -> None:
    await kube.list_route_pods("ns", "r1")
    await kube.list_bundle_configmaps("ns", "b1")
    pods, cms = kube.transport.sent
    assert pods.query["labelSelector"] == [f"{GROUP}/route=r1"]
    assert cms.query["labelSelector"] == [f"{GROUP}/policy-bundle=b1"]


async def test_absent_objects_read_as_none(kube: Any) -> None:
    kube.transport.status = 404
    assert await kube.get_bundle("ns", "b") is None
    assert await kube.get_configmap_data("ns", "c") is None
    await kube.delete_configmap("ns", "c", "uid-1")  # already gone: fine
    await kube.set_attested_condition("ns", "p", True, "Attested", "", "T")  # pod gone: nothing to gate


async def test_create_once_and_read_back(kube: Any) -> None:
    kube.transport.status, kube.transport.reply = 201, {"data": {"k": "v"}}
    assert await kube.create_configmap_if_absent({"metadata": {"namespace": "ns", "name": "c"}}) is True
    assert await kube.get_configmap_data("ns", "c") == {"k": "v"}
    kube.transport.status = 409
    assert await kube.create_configmap_if_absent({"metadata": {"namespace": "ns", "name": "c"}}) is False


async def test_lists_return_their_items_and_empty_bodies_read_as_empty(kube: Any) -> None:
    kube.transport.reply = {"items": [{"metadata": {"name": "r"}}]}
    assert await kube.list_routes("ns") == [{"metadata": {"name": "r"}}]
    kube.transport.reply = None  # an empty body
    assert await kube.list_routes("ns") == []
    assert await kube.get_configmap_data("ns", "c") == {}


@pytest.mark.parametrize("status", [401, 403, 500, 503])
async def test_other_errors_are_raised_not_swallowed(kube: Any, status: int) -> None:
    """Fail loud: a forbidden or failing apiserver never reads as 'absent' or 'done'."""
    kube.transport.status, kube.transport.reply = status, {"message": "no"}
    calls = (lambda: kube.get_route("ns", "r"), lambda: kube.get_configmap_data("ns", "c"),
             lambda: kube.delete_configmap("ns", "c", "uid-1"),
             lambda: kube.create_configmap_if_absent({"metadata": {"namespace": "ns", "name": "c"}}),
             lambda: kube.add_finalizer(ROUTE_PLURAL, "ns", "r", [], "f"),
             lambda: kube.set_attested_condition("ns", "p", True, "Attested", "", "T"))
    for call in calls:
        with pytest.raises(ApiException) as err:
            await call()
        assert err.value.status == status
    assert all(r.released for r in kube.transport.responses)


# ----------------------------------------------------------------------------- in-cluster configuration
OPERATOR_IN_POD = """
import asyncio, logging
import kopf
from cmcp_operator.kube import Kube, connection_info, load_client
async def main():
    kube = Kube(await load_client())
    try:
        print("route", await kube.get_route("cmcp", "r"))
    finally:
        await kube.close()
asyncio.run(main())
info = connection_info(logger=logging.getLogger("login"), settings=kopf.OperatorSettings())
print("kopf", info.server, info.token, info.ca_path, info.default_namespace)
"""


@needs_mount_namespaces
def test_in_a_pod_the_operator_and_kopf_use_the_service_account(tmp_path: Path) -> None:
    """Its own client and Kopf's login both reach KUBERNETES_SERVICE_HOST/PORT with the token,
    trusting only the ServiceAccount's CA (the stand-in's certificate is signed by it alone)."""
    with stand_in_apiserver(tmp_path) as apiserver:
        ran = run_in_pod(OPERATOR_IN_POD, apiserver, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert apiserver.seen == [(f"/apis/{GROUP}/v1alpha1/namespaces/cmcp/{ROUTE_PLURAL}/r", f"Bearer {TOKEN}")]
    kopf_line = next(line for line in ran.stdout.splitlines() if line.startswith("kopf "))
    assert kopf_line.split() == ["kopf", f"https://127.0.0.1:{apiserver.port}", TOKEN,
                                 f"{SERVICE_ACCOUNT_DIR}/ca.crt", "cmcp"]


@needs_mount_namespaces
def test_kopf_takes_the_kubeconfig_the_environment_names_even_in_a_pod(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://elsewhere.example:6443"}}],
        "users": [{"name": "u", "user": {"token": "from-the-kubeconfig"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    login = ("import logging\nimport kopf\nfrom cmcp_operator.kube import connection_info\n"
             "info = connection_info(logger=logging.getLogger('login'), settings=kopf.OperatorSettings())\n"
             "print(info.server, info.token)\n")
    with stand_in_apiserver(tmp_path) as apiserver:
        ran = run_in_pod(login, apiserver, tmp_path, env={"KUBECONFIG": str(kubeconfig)})
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.split() == ["https://elsewhere.example:6443", "from-the-kubeconfig"]
