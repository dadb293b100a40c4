"""Cedar decisions through the `Enclave`: allow, deny, error-as-deny, argument rules,
advisory and silent modes, catalog and audience refusal, the phase1 compatibility model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from cmcp_core import permit
from cmcp_core.binding import gpu_nonce
from cmcp_core.crypto import public_bytes
from cmcp_core.decision import verify_decision
from cmcp_core.digest import b64url_decode, json_digest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.gpu import decode_gpu_evidence, parse_gpu_report
from cmcp_core.proto import enclave_pb2
from cmcp_core.trust_record import gpu_evidence_digest, record_gpu_digests, record_report_data
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, inprocess_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.gpu import SimulatedGpuProvider
from cmcp_enclave.judging import RequestError
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.server import EnclaveService
from tests.helpers.enclave_calls import decide, exported, known, sid
from tests.paths import EXAMPLES, ROOT


@pytest.fixture
def realistic(tmp_path: Path) -> Enclave:
    return inprocess_enclave(EXAMPLES / "realistic", tmp_path)


def test_allow_is_signed_and_carries_a_valid_permit(realistic: Enclave) -> None:
    res = decide(realistic, "crm.lookup_customer", {"customer_id": "c-42"})
    doc = verify_decision(res.decision_json, res.signature, realistic.public_key,
                          expected={"tool": "crm.lookup_customer", "audience": DEFAULT_AUDIENCE})
    assert (doc["decision"], doc["effective"], doc["reason_code"]) == ("allow", "allow", None)
    assert doc["policy_ids"] == ["policies/base.cedar#allow-catalogued"]
    p = permit.verify(res.permit, trusted_keys={realistic.kid: realistic.public_key},
                      audience=DEFAULT_AUDIENCE, tool="crm.lookup_customer",
                      args_digest=json_digest({"customer_id": "c-42"}),
                      allowed_bundles=frozenset({realistic.bundle_hash}))
    assert p.sid == known(realistic, "s1") and p.bh == realistic.bundle_hash


def test_decision_signature_does_not_verify_when_edited(realistic: Enclave) -> None:
    res = decide(realistic, "web.search", {"query": "x"})
    forged = res.decision_json.replace(b'"decision":"allow"', b'"decision":"deny"')
    with pytest.raises(CmcpError) as err:
        verify_decision(forged, res.signature, realistic.public_key)
    assert err.value.code == Code.DECISION_UNVERIFIED
    with pytest.raises(CmcpError):
        verify_decision(res.decision_json, res.signature, realistic.public_key,
                        expected={"call_id": "another-call"})


def test_deny_names_the_forbid_and_has_no_permit(realistic: Enclave) -> None:
    res = decide(realistic, "payments.transfer", {"amount": 50_000, "currency": "EUR"})
    assert res.document["decision"] == "deny" and res.document["effective"] == "deny"
    assert res.document["reason_code"] == "POLICY_DENY"
    assert res.document["policy_ids"] == ["policies/arguments.cedar#transfer-limit"]
    assert res.permit == ""


def test_argument_aware_rules(realistic: Enclave) -> None:
    assert decide(realistic, "payments.transfer", {"amount": 10_000}).document["decision"] == "allow"
    assert decide(realistic, "payments.transfer", {"amount": 10_001}).document["decision"] == "deny"
    assert decide(realistic, "email.send_external", {"to": ["bob@partner.example"]},
                  session="m").document["decision"] == "allow"
    denied = decide(realistic, "email.send_external", {"to": ["bob@evil.example"]}, session="m2")
    assert denied.document["policy_ids"] == [PARTNER_ONLY]
    assert decide(realistic, "crm.lookup_customer", {"customer_id": "*"}).document["decision"] == "deny"
    assert decide(realistic, "crm.lookup_customer", {}).document["decision"] == "deny"


PARTNER_ONLY = "policies/arguments.cedar#external-mail-partner-only"
ATTACK = "exfil@attacker.test, bob@partner.example"
# Recipient lists an attacker sends to walk around a partner-only rule; each must be refused.
WALK_AROUNDS = [
    [ATTACK],
    ["bob@partner.example.attacker.test"],
    ["bob@partner.example", "exfil@attacker.test"],
    ["exfil@attacker.test", "bob@partner.example", "dr.who@partner.example"],
    ["BOB@partner.example"],
    ["bob@PARTNER.EXAMPLE"],
    [" bob@partner.example"],
    ["bob@partner.example "],
    ["bob@partner.example\n"],
    ["exfil@attacker.test\nbob@partner.example"],
    ["bob@partner.example\u0000"],
    ["exfil@attacker.test;bob@partner.example"],
    [],
]


@pytest.mark.parametrize("recipients", WALK_AROUNDS, ids=repr)
def test_partner_only_mail_refuses_every_walk_around(realistic: Enclave, recipients: list[str]) -> None:
    res = decide(realistic, "email.send_external", {"to": recipients, "body": "secret"})
    doc = res.document
    assert (doc["decision"], doc["effective"], doc["reason_code"]) == ("deny", "deny", "POLICY_DENY")
    assert doc["policy_ids"] == [PARTNER_ONLY] and res.permit == ""


@pytest.mark.parametrize("recipients", [["bob@partner.example"],
                                        ["dr.who@partner.example", "bob@partner.example"]])
def test_partner_only_mail_lets_the_partners_through(realistic: Enclave, recipients: list[str]) -> None:
    """The walk-arounds above are refused for their content, not because the rule refuses all mail."""
    assert decide(realistic, "email.send_external", {"to": recipients}).document["effective"] == "allow"


@pytest.mark.parametrize("to", [ATTACK, "bob@partner.example", {"bob@partner.example": True}])
def test_recipients_as_free_text_are_an_error_and_an_error_denies(realistic: Enclave, to: object) -> None:
    """The old argument shape (one string) cannot be compared as a set: Cedar errors, the enclave denies."""
    doc = decide(realistic, "email.send_external", {"to": to}).document
    assert (doc["decision"], doc["reason_code"]) == ("deny", "POLICY_EVAL_ERROR")
    assert [e["policy_id"] for e in doc["errors"]] == [PARTNER_ONLY]


def test_missing_recipients_are_denied(realistic: Enclave) -> None:
    doc = decide(realistic, "email.send_external", {"body": "secret"}).document
    assert (doc["reason_code"], doc["policy_ids"]) == ("POLICY_DENY", [PARTNER_ONLY])


SUFFIX_RULE = """@id("external-mail-partner-only")
forbid (principal, action == cMCP::Action::"call_tool", resource)
when {
  resource.name == "email.send_external" &&
  !(context.arguments has to && context.arguments.to like "*@partner.example")
};
"""


def test_weakened_suffix_rule_on_free_text_sends_the_attack(tmp_path: Path) -> None:
    """The rule the example used to ship: `like "*@partner.example"` over a string admits the
    attack, so the walk-around tests above fail against it (they would have caught the hole)."""
    bundle = tmp_path / "old"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    schema = bundle / "schema.cedarschema"
    schema.write_text(re.sub(r"to\?: Set<String>,", "to?: String,", schema.read_text()))
    rules = bundle / "policies" / "arguments.cedar"
    current = rules.read_text()
    start = current.index('@id("external-mail-partner-only")')
    end = current.index("};", start) + 3
    rules.write_text(current[:start] + SUFFIX_RULE + current[end:])
    weak = inprocess_enclave(bundle, tmp_path / "state")
    for to in (ATTACK, "exfil@attacker.test\nbob@partner.example", "exfil@attacker.test;bob@partner.example"):
        doc = decide(weak, "email.send_external", {"to": to, "body": "secret"}).document
        assert (doc["decision"], doc["effective"]) == ("allow", "allow"), to


def test_forbid_whose_condition_errors_is_a_deny_naming_it(realistic: Enclave) -> None:
    # "amount" as a string: `> 10000` errors at run time; Cedar skips the erroring forbid and
    # the broad permit would allow. The enclave must deny and name the policy.
    res = decide(realistic, "payments.transfer", {"amount": "a lot"})
    doc = res.document
    assert (doc["decision"], doc["reason_code"]) == ("deny", "POLICY_EVAL_ERROR")
    assert [e["policy_id"] for e in doc["errors"]] == ["policies/arguments.cedar#transfer-limit"]
    assert res.permit == ""


def test_tool_outside_catalog_is_refused(realistic: Enclave) -> None:
    res = decide(realistic, "shell.exec", {"cmd": "rm -rf /"})
    assert res.document["reason_code"] == "TOOL_NOT_IN_CATALOG" and res.document["effective"] == "deny"


def test_wrong_audience_is_refused(realistic: Enclave) -> None:
    res = decide(realistic, "web.search", {"query": "x"}, audience="urn:other-upstream")
    assert res.document["reason_code"] == "AUDIENCE_MISMATCH" and res.permit == ""


def test_arguments_that_smuggle_cedar_entities_are_refused(realistic: Enclave) -> None:
    res = decide(realistic, "payments.transfer",
                 {"amount": {"__entity": {"type": "cMCP::Agent", "id": "admin"}}})
    assert res.document["reason_code"] == "ARGS_INVALID" and res.document["effective"] == "deny"


def test_floats_and_nulls_do_not_break_evaluation(realistic: Enclave) -> None:
    res = decide(realistic, "web.search", {"query": "x", "limit": 2.5, "page": None, "tags": [1, 1.5]})
    assert res.document["decision"] == "allow"


def test_digest_mismatch_and_malformed_arguments_get_no_decision(realistic: Enclave) -> None:
    args = {"query": "x"}
    with pytest.raises(RequestError) as err:
        realistic.decide(session_id="s", call_id="c", principal="a", method="tools/call", tool="web.search",
                         arguments_json=json.dumps(args).encode(),
                         arguments_digest=json_digest({"query": "y"}), audience=DEFAULT_AUDIENCE)
    assert err.value.code == Code.ARGS_DIGEST_MISMATCH
    for raw in (b"{not json", b"[1,2]", b'"str"'):
        with pytest.raises(RequestError) as err:
            realistic.decide(session_id="s", call_id="c", principal="a", method="tools/call",
                             tool="web.search", arguments_json=raw, arguments_digest="sha256:00",
                             audience=DEFAULT_AUDIENCE)
        assert err.value.code == Code.ARGS_INVALID
    with pytest.raises(RequestError):
        realistic.decide(session_id="", call_id="c", principal="a", method="tools/call", tool="t",
                         arguments_json=b"{}", arguments_digest=json_digest({}), audience=DEFAULT_AUDIENCE)
    assert realistic.audit_entries_total == 0  # nothing decided, nothing audited


@pytest.mark.parametrize("mode", ["advisory", "silent"])
def test_advisory_and_silent_forward_and_record_advisory_deny(tmp_path: Path, mode: str) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(EXAMPLES / "advisory", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["enforcement_mode"] = mode
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    enc = inprocess_enclave(bundle, tmp_path)
    assert decide(enc, "ehr.read_patient_record", {"patient_id": "p"}).document["decision"] == "allow"
    res = decide(enc, "email.send_external", {"to": "x@y.example"})
    doc = res.document
    assert (doc["decision"], doc["effective"], doc["advisory_deny"], doc["mode"]) == \
        ("deny", "allow", True, mode)
    assert doc["policy_ids"] == ["policies/trial.cedar#trial-no-external-send-after-phi"]
    assert res.permit  # forwarded, so the guard needs a permit
    entries = exported(enc, "s1")
    assert entries[-1]["data"]["advisory_deny"] is True
    # a tool outside the catalog is refused even in advisory mode
    off = decide(enc, "shell.exec")
    assert (off.document["effective"], off.document["advisory_deny"]) == ("deny", False)


def test_phase1_model_reads_origin_shapes(tmp_path: Path) -> None:
    enc = inprocess_enclave(ROOT / "tests" / "data" / "bundles" / "phase1-catalog", tmp_path)
    assert enc.engine.model == "phase1"
    assert decide(enc, "export_report").document["decision"] == "allow"
    assert decide(enc, "read_ledger").document["decision"] == "allow"
    res = decide(enc, "export_report")  # session_max_sensitivity is now "restricted"
    assert res.document["policy_ids"] == ["policies.cedar#no-export-after-restricted"]
    assert decide(enc, "not_catalogued").document["reason_code"] == "TOOL_NOT_IN_CATALOG"


def test_origin_minimal_bundle_serves_and_catalog_is_the_allowlist(tmp_path: Path) -> None:
    enc = inprocess_enclave(ROOT / "tests" / "data" / "bundles" / "origin-minimal", tmp_path)
    assert enc.bundle_hash == "sha256:0f30eae7f46868c8250b1b78be3bfd0cd25b247c0c110271ebd599e7aa5a0e74"
    assert decide(enc, "anything").document["reason_code"] == "TOOL_NOT_IN_CATALOG"


def test_list_tools_is_filtered_by_cedar(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    (bundle / "policies" / "hide.cedar").write_text(
        '@id("hide-payments")\nforbid (principal, action == cMCP::Action::"list_tools", resource)\n'
        'when { resource.name == "payments.transfer" };\n')
    enc = inprocess_enclave(bundle, tmp_path)
    tools = enc.list_tools(session_id=sid(enc, "s", "a"), principal="a")
    assert "payments.transfer" not in tools and "web.search" in tools and "résumé.parse" in tools


def test_arguments_over_the_tools_bound_are_refused_before_they_are_parsed(tmp_path: Path) -> None:
    """A tool's ``max_argument_bytes`` in the catalog bounds what one call may make Cedar chew on."""
    bundle = tmp_path / "bundle"
    shutil.copytree(EXAMPLES / "realistic", bundle)
    catalog = json.loads((bundle / "catalog.json").read_text())
    for entry in catalog:
        if entry.get("tool_name") == "web.search":
            entry["max_argument_bytes"] = 64
    (bundle / "catalog.json").write_text(json.dumps(catalog))
    enclave = inprocess_enclave(bundle, tmp_path / "work")
    fits, too_big = {"query": "x" * 40}, {"query": "x" * 60}
    assert decide(enclave, "web.search", fits).document["effective"] == "allow"
    with pytest.raises(RequestError) as err:
        decide(enclave, "web.search", too_big)
    assert err.value.code is Code.ARGS_TOO_LARGE
    assert decide(enclave, "crm.lookup_customer", {"customer_id": "c" * 100}).document["effective"] == "allow"


# ---- the Trust Record of an enclave beside GPUs (ADR 0031) -----------------------------------


class FlakyGpu:
    """A GPU provider the test switches: answers like the simulated GPU, fails, or answers nothing."""

    name = "flaky"

    def __init__(self) -> None:
        self.gpu = SimulatedGpuProvider()
        self.mode = "answer"
        self.asked: list[bytes] = []

    def evidence(self, nonce: bytes) -> tuple[bytes, ...]:
        self.asked.append(nonce)
        if self.mode == "fail":
            raise CmcpError(Code.TEE_PROVIDER_FAILED, "NVML: GPU is lost")
        if self.mode == "nothing":
            return ()
        return self.gpu.evidence(nonce)


def test_a_gpu_enclave_signs_the_digest_of_evidence_for_the_records_own_nonce(tmp_path: Path) -> None:
    gpus = FlakyGpu()
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, gpus=gpus)
    decide(enc, "crm.lookup_customer", {"customer_id": "c-42"})
    done = enc.close(known(enc, "s1"))
    assert done.record is not None and len(done.gpu_evidence) == 1
    envelope = done.gpu_evidence[0]
    report_data = record_report_data(public_bytes(enc.public_key), enc.bundle_hash, enc.catalog_hash,
                                     enc.mode, done.tip)
    assert b64url_decode(done.record["runtime"]["nonce"]) == report_data
    request = parse_gpu_report(decode_gpu_evidence(envelope).report).request
    assert request.nonce == gpu_nonce(report_data) == gpus.asked[-1]  # this record's, not an Attest's
    refs = [r for r in done.record["references"] if r["rel"] == "gpu-attestation"]
    assert refs == [{"rel": "gpu-attestation", "id": "gpu-0", "resolver": "urn:cmcp:trust-record-store",
                     "digest": "sha256:" + hashlib.sha256(envelope).hexdigest()}]
    assert record_gpu_digests(done.record) == (refs[0]["digest"],)
    assert enc.close(known(enc, "s1")) is done  # idempotent: the same record and evidence, GPUs not asked
    assert len(gpus.asked) == 2  # start-up probe, then the record


def test_an_enclave_without_gpus_names_no_gpu_evidence(realistic: Enclave) -> None:
    decide(realistic, "crm.lookup_customer", {"customer_id": "c-42"})
    done = realistic.close(known(realistic, "s1"))
    assert done.gpu_evidence == () and record_gpu_digests(done.record or {}) == ()
    assert [r["rel"] for r in (done.record or {})["references"]] == ["cmcp-session-ledger"]


@pytest.mark.parametrize(("mode", "code"), [("fail", Code.TEE_PROVIDER_FAILED),
                                            ("nothing", Code.GPU_EVIDENCE_MISSING)])
def test_a_gpu_that_cannot_answer_fails_the_close_and_no_record_omits_it(
        tmp_path: Path, mode: str, code: Code) -> None:
    """Fail closed: no record without the GPU; the session stays closed, and the next close (the
    GPU answering again) signs the record for the same chain tip, with one close entry only."""
    gpus = FlakyGpu()
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, gpus=gpus)
    decide(enc, "crm.lookup_customer", {"customer_id": "c-42"})
    session = known(enc, "s1")
    gpus.mode = mode
    with pytest.raises(RequestError) as refused:
        enc.close(session)
    assert refused.value.code is code
    assert enc.closed[session].record is None
    with pytest.raises(RequestError) as again:
        decide(enc, "crm.lookup_customer", {"customer_id": "c-42"})
    assert again.value.code is Code.SESSION_CLOSED  # closed, not reopened by the failure
    gpus.mode = "answer"
    done = enc.close(session)
    assert done.record is not None and len(record_gpu_digests(done.record)) == 1
    entries = exported(enc, "s1")
    assert [e["kind"] for e in entries].count("close") == 1
    assert done.record["tool_transcript"]["hash"] == entries[-1]["hash"] == done.tip


def test_idle_and_shutdown_closes_go_on_past_a_failing_gpu(tmp_path: Path) -> None:
    gpus = FlakyGpu()
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, gpus=gpus)
    decide(enc, "crm.lookup_customer", {"customer_id": "c-42"}, session="a")
    decide(enc, "crm.lookup_customer", {"customer_id": "c-43"}, session="b")
    gpus.mode = "fail"
    assert enc.close_all() == 2 and not enc.sessions
    assert all(enc.closed[known(enc, n)].record is None for n in ("a", "b"))


def test_close_session_response_carries_the_envelopes_the_record_names(tmp_path: Path) -> None:
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, gpus=FlakyGpu())
    decide(enc, "crm.lookup_customer", {"customer_id": "c-42"})
    service = EnclaveService(enc, Metrics())
    resp = asyncio.run(service.CloseSession(
        enclave_pb2.CloseSessionRequest(session_id=known(enc, "s1")), None))
    record = json.loads(resp.trust_record_json)
    assert tuple(gpu_evidence_digest(e) for e in resp.gpu_evidence) == record_gpu_digests(record) != ()
