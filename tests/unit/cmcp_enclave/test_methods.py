"""Every MCP method decided by the enclave: resources, prompts, completion and logging resolve to
their measured catalog entry, get their own Cedar action, taint the principal when they hand it
data, and get a permit for exactly that method and target.

The attacker is the agent (reads PHI as a resource, then mails it out) and a gateway that asks
about something the catalog does not offer; a weakened enclave that does not taint on reads
shows the taint test would catch the hole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmcp_core import permit as permits
from cmcp_core.bundle import BundleError, load_bundle
from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.engine import CedarEngine
from cmcp_enclave.judging import RequestError
from tests.helpers.enclave_calls import decide, sid
from tests.paths import EXAMPLES

MAIL = {"to": ["bob@partner.example"]}
TEMPLATE = "ehr://patients/{patient_id}"


@pytest.fixture
def enc(tmp_path: Path) -> Enclave:
    return inprocess_enclave(EXAMPLES / "realistic", tmp_path / "enc")


@pytest.fixture(scope="module")
def engine() -> CedarEngine:
    return CedarEngine(load_bundle(EXAMPLES / "realistic"))


def test_each_method_resolves_to_its_catalog_entry(engine: CedarEngine) -> None:
    assert engine.resolve("resources/read", "ehr://patients/p-1", {}) == ("resource", TEMPLATE)
    assert engine.resolve("resources/subscribe", "docs://handbook", {}) == ("resource", "docs://handbook")
    assert engine.resolve("prompts/get", "summarise_record", {}) == ("prompt", "summarise_record")
    assert engine.resolve("completion/complete", TEMPLATE,
                          {"ref": {"type": "ref/resource", "uri": TEMPLATE}}) == ("resource", TEMPLATE)
    assert engine.resolve("logging/setLevel", "logging", {"level": "debug"}) == ("server", "logging")
    assert engine.resolve("tools/call", "web.search", {}) == ("tool", "web.search")


@pytest.mark.parametrize(("method", "name", "arguments", "code"), [
    ("resources/read", "ehr://export/all", {}, Code.RESOURCE_NOT_IN_CATALOG),
    ("resources/read", "ehr://patients/p-1/notes", {}, Code.RESOURCE_NOT_IN_CATALOG),  # one segment only
    ("resources/read", "ehr://patients/..", {}, Code.RESOURCE_NOT_IN_CATALOG),  # no climbing out
    ("resources/read", "ehr://patients/%2E%2e", {}, Code.RESOURCE_NOT_IN_CATALOG),
    ("prompts/get", "exfiltrate", {}, Code.PROMPT_NOT_IN_CATALOG),
    ("tools/call", "summarise_record", {}, Code.TOOL_NOT_IN_CATALOG),  # a prompt is no tool
    ("completion/complete", "summarise_record",  # the ref names another target than the request
     {"ref": {"type": "ref/prompt", "name": "other"}}, Code.ARGS_INVALID),
    ("sampling/createMessage", "x", {}, Code.METHOD_NOT_IN_MODEL),
])
def test_what_the_catalog_does_not_offer_is_refused(
    engine: CedarEngine, method: str, name: str, arguments: dict[str, object], code: Code
) -> None:
    with pytest.raises(CmcpError) as refused:
        engine.resolve(method, name, arguments)
    assert refused.value.code is code


def test_the_phase1_model_decides_tools_only(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    manifest = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(manifest.replace('"native"', '"phase1"'))
    engine = CedarEngine(load_bundle(bundle))
    assert engine.model == "phase1"
    with pytest.raises(CmcpError) as refused:
        engine.resolve("resources/read", "docs://handbook", {})
    assert refused.value.code is Code.METHOD_NOT_IN_MODEL
    assert engine.resolve("tools/call", "web.search", {}) == ("tool", "web.search")


def test_an_allowed_read_gets_a_permit_for_that_method_and_uri_only(enc: Enclave) -> None:
    res = decide(enc, "ehr://patients/p-1", {}, method="resources/read")
    assert res.document["effective"] == "allow" and res.document["method"] == "resources/read"
    permit, _, _ = permits.decode(res.permit)
    assert (permit.method, permit.tool) == ("resources/read", "ehr://patients/p-1")


def test_logging_is_denied_without_a_policy_that_permits_it(enc: Enclave) -> None:
    res = decide(enc, "logging", {"level": "debug"}, method="logging/setLevel")
    assert (res.document["effective"], res.document["reason_code"], res.permit) == ("deny", "POLICY_DENY", "")


def test_a_record_read_as_a_resource_taints_the_principal(enc: Enclave) -> None:
    assert decide(enc, "ehr://patients/p-1", {}, method="resources/read").document["effective"] == "allow"
    for session in ("s1", "s2"):  # this session, and a new one
        res = decide(enc, "email.send_external", MAIL, session=session)
        assert res.document["policy_ids"] == ["policies/taint.cedar#no-external-send-after-phi"], session
    view = enc.prepare(session_id=sid(enc, "s3"), principal="agent-a", call_id="x")
    assert view.principal.call_count == 0  # a read taints; it is no tool call for budgets


def test_weakened_enclave_that_does_not_taint_on_reads_lets_the_record_out(
    enc: Enclave, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Enclave, "_record_taint", lambda *args: None)
    decide(enc, "ehr://patients/p-1", {}, method="resources/read")
    assert decide(enc, "email.send_external", MAIL).document["effective"] == "allow"


def test_lists_are_filtered_per_method(enc: Enclave) -> None:
    session = sid(enc, "s1")
    assert enc.list_tools(session_id=session, principal="agent-a", method="resources/list") == [
        "docs://handbook", TEMPLATE]
    prompts = enc.list_tools(session_id=session, principal="agent-a", method="prompts/list")
    assert prompts == ["summarise_record"]
    assert "web.search" in enc.list_tools(session_id=session, principal="agent-a")


@pytest.mark.parametrize(("entry", "message"), [
    ({"tool_name": "a", "prompt_name": "b"}, "exactly one of"),
    ({"server": "x"}, "exactly one of"),
    ({"resource_template": "ehr://patients/{"}, "RFC 6570"),
    ({"resource_template": "ehr://patients/all"}, "RFC 6570"),  # no variable: that is a resource_uri
    ({"prompt_name": ""}, "non-empty"),
])
def test_the_catalog_refuses_ambiguous_entries(tmp_path: Path, entry: dict[str, str], message: str) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    (bundle / "catalog.json").write_text(json.dumps([entry]))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def _listen(*uris: str) -> dict[str, object]:
    return {"notifications": {"resourceSubscriptions": list(uris)}}


def test_a_listen_stream_is_a_subscription_to_each_resource_it_follows(enc: Enclave) -> None:
    res = decide(enc, "subscriptions", _listen("docs://handbook", "ehr://patients/p-1"),
                 method="subscriptions/listen")
    assert res.document["effective"] == "allow"
    assert permits.decode(res.permit)[0].method == "subscriptions/listen"
    one_too_many = decide(enc, "subscriptions", _listen("docs://handbook", "ehr://export/all"),
                          method="subscriptions/listen")  # the catalog does not offer the export
    denied = one_too_many.document
    assert (denied["effective"], denied["reason_code"]) == ("deny", "RESOURCE_NOT_IN_CATALOG")
    assert one_too_many.permit == ""


@pytest.mark.parametrize("arguments", [
    _listen("ehr://patients/p-1", "docs://handbook"),  # not in the one form both ends bind
    {"notifications": {"resourceSubscriptions": ["docs://handbook"], "toolsListChanged": True}},
    {"notifications": {"resourceSubscriptions": "docs://handbook"}},
])
def test_a_listen_binds_only_its_sorted_resources(enc: Enclave, arguments: dict[str, object]) -> None:
    with pytest.raises(RequestError) as refused:
        decide(enc, "subscriptions", arguments, method="subscriptions/listen")
    assert refused.value.code is Code.ARGS_INVALID
