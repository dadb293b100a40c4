"""The demo's story: the steps and what they expect, the checks on a real enclave's evidence, the
output folder, and the console the user reads.

The expected outcomes of :func:`agent_steps` are checked against a real in-process enclave on the
demo's bundle (``examples/realistic``, real Cedar), and :func:`verify_run` runs the verifier
library on that enclave's own record, chain and evidence. The whole demo with real processes is
``tests/integration/test_demo.py``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cmcp_ctl import demo_story
from cmcp_ctl.demo_story import Console, Run, Step
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_devkit.release import dev_appraisal
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.gpu import SimulatedGpuProvider
from cmcp_enclave.server import attest_response
from tests.helpers.enclave_calls import decide, exported, known
from tests.paths import EXAMPLES


def test_step_passes_only_on_exact_code_and_execution() -> None:
    step = demo_story.Step("t", "agent", "x", {}, "POLICY_DENY", False, "rule")
    step.actual_code, step.executed = "POLICY_DENY", False
    assert step.passed
    step.executed = True  # denied yet executed: the worst outcome, never a pass
    assert not step.passed
    step.executed, step.actual_code = False, None
    assert not step.passed


def test_a_step_with_an_error_never_passes() -> None:
    step = Step("t", "host", "x", {}, "PERMIT_REPLAYED", False, "rule", actual_code="PERMIT_REPLAYED",
                executed=False, error="nothing to replay")
    assert not step.passed
    unrun = Step("t", "agent", "x", {}, None, True, "rule")  # executed None: never observed
    assert not unrun.passed


def test_run_passes_only_with_steps_and_every_step_and_check_passed(tmp_path: Path) -> None:
    ok = Step("t", "agent", "x", {}, None, True, "r", actual_code=None, executed=True)
    assert not Run(out=tmp_path).passed, "a run with no steps proves nothing"
    assert Run(out=tmp_path, steps=[ok], checks=[("c", True, "")]).passed
    assert not Run(out=tmp_path, steps=[ok], checks=[("c", True, ""), ("d", False, "bad")]).passed
    bad = Step("t", "agent", "x", {}, "POLICY_DENY", False, "r", actual_code=None, executed=True)
    assert not Run(out=tmp_path, steps=[ok, bad]).passed


def test_agent_steps_tell_the_taint_story_in_order() -> None:
    steps = demo_story.agent_steps()
    assert all(s.actor == "agent" for s in steps)
    assert all(s.executed is None and s.actual_code is None for s in steps), "fresh steps, nothing observed"
    phi = next(i for i, s in enumerate(steps) if s.tool == "ehr.read_patient_record")
    taint = next(i for i, s in enumerate(steps) if s.why == "no-external-send-after-phi")
    partner_before = next(i for i, s in enumerate(steps) if s.title == "mail to partner")
    assert partner_before < phi < taint
    assert steps[partner_before].arguments == steps[taint].arguments, "the same mail, before and after PHI"
    for s in steps:
        assert s.expect_executed is (s.expect_code is None), s.title
    assert demo_story.agent_steps() is not steps and demo_story.agent_steps()[0] is not steps[0]


@dataclass
class Session:
    enclave: Enclave
    steps: list[Step]
    run: Run
    response: Any
    nonce: bytes


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """The agent's steps decided by a real enclave on the demo bundle, closed, attested afresh."""
    work = tmp_path_factory.mktemp("story")
    enc = inprocess_enclave(EXAMPLES / "realistic", work)
    steps = demo_story.agent_steps()
    for step in steps:
        res = decide(enc, step.tool, step.arguments, session="demo")
        denied = res.document["effective"] == "deny"
        step.actual_code = res.document["reason_code"] if denied else None
        step.executed = False  # nothing runs in this test; "ran" checks then expect no outcomes
        if denied:
            step.signed_decision = (res.decision_json, res.signature)
    done = enc.close(known(enc, "demo"))
    nonce = os.urandom(32)
    response = attest_response(enc, nonce)
    run = Run(out=work, steps=steps, session_id="demo", record=done.record,
              entries=exported(enc, "demo"), key_jwk=dict(enc.public_jwk),
              bundle_hash=enc.bundle_hash)
    return Session(enc, steps, run, response, nonce)


def test_the_demo_bundle_decides_what_the_agent_steps_expect(session: Session) -> None:
    for step in session.steps:
        assert step.actual_code == step.expect_code, step.title


def test_verify_run_passes_every_check_on_an_honest_run(session: Session, tmp_path: Path) -> None:
    run = Run(out=tmp_path, steps=session.run.steps, record=session.run.record,
              entries=session.run.entries, key_jwk=session.run.key_jwk, bundle_hash=session.run.bundle_hash)
    demo_story.verify_run(run, session.response, session.nonce, dev_appraisal())
    names = [name for name, _, _ in run.checks]
    assert names == [
        "evidence appraised: release, binding + initdata",
        "Trust Record: key from evidence, bundle pinned",
        "every deny signed by the attested key",
        "audit chain verifies, tip = record's hash",
        "audit: one decision per call, same effect",
        "audit: an outcome for each call that ran",
    ]
    assert all(ok for _, ok, _ in run.checks), run.checks
    denies = sum(1 for s in run.steps if s.expect_code)
    signed = ("every deny signed by the attested key", True, f"{denies} of {denies} denies verified")
    assert signed in run.checks


def test_verify_run_fails_what_was_tampered(session: Session, tmp_path: Path) -> None:
    steps = demo_story.agent_steps()
    for fresh, seen in zip(steps, session.steps, strict=True):
        fresh.actual_code, fresh.executed = seen.actual_code, False
        fresh.signed_decision = seen.signed_decision
    denied = next(s for s in steps if s.expect_code == "POLICY_DENY")
    assert denied.signed_decision is not None
    document, signature = denied.signed_decision
    denied.signed_decision = (document.replace(b'"deny"', b'"allow"'), signature)  # a gateway's edit
    entries = [dict(e) for e in session.run.entries]
    del entries[2]  # a decision dropped from the export
    run = Run(out=tmp_path, steps=steps, record=session.run.record, entries=entries,
              key_jwk=session.run.key_jwk, bundle_hash=session.run.bundle_hash)
    demo_story.verify_run(run, session.response, session.nonce, dev_appraisal())
    result = {name: ok for name, ok, _ in run.checks}
    assert result["evidence appraised: release, binding + initdata"] is True
    assert result["every deny signed by the attested key"] is False
    assert result["audit chain verifies, tip = record's hash"] is False
    assert result["audit: one decision per call, same effect"] is False


def test_verify_run_fails_evidence_for_another_nonce(session: Session, tmp_path: Path) -> None:
    run = Run(out=tmp_path, steps=session.run.steps, record=session.run.record,
              entries=session.run.entries, key_jwk=session.run.key_jwk, bundle_hash=session.run.bundle_hash)
    demo_story.verify_run(run, session.response, os.urandom(32), dev_appraisal())
    result = {name: ok for name, ok, _ in run.checks}
    assert result["evidence appraised: release, binding + initdata"] is False
    assert result["every deny signed by the attested key"] is False, "no attested key: no deny verifies"


def test_verify_commands_name_the_written_files(tmp_path: Path) -> None:
    run = Run(out=tmp_path, nonce_hex="ab" * 32, bundle_hash="sha256:" + "1" * 64,
              record={"tool_transcript": {"hash": "sha256:" + "2" * 64}})
    run.files = {k: tmp_path / f"{k}.json" for k in ("record", "attest", "audit", "key")}
    record_cmd, audit_cmd = demo_story.verify_commands(run)
    assert record_cmd[:3] == ["verify", "record", str(run.files["record"])]
    def flag(name: str) -> str:
        return record_cmd[record_cmd.index(name) + 1]

    assert flag("--response") == str(run.files["attest"]) and flag("--nonce") == "ab" * 32
    assert flag("--bundle-hash") == run.bundle_hash and flag("--audit") == str(run.files["audit"])
    assert "--allow-simulated" in record_cmd
    assert audit_cmd == ["verify", "audit", str(run.files["audit"]), "--key", f"@{run.files['key']}",
                         "--tip", "sha256:" + "2" * 64]


def test_run_cmcpctl_captures_output_and_usage_errors() -> None:
    code, output = demo_story._run_cmcpctl(["conformance", "--list"])
    assert code == 0 and output.startswith("ATTEST-001")
    code, output = demo_story._run_cmcpctl(["verify", "record"])
    assert code == 2 and "usage:" in output


def test_deny_detail_reads_the_signed_decision() -> None:
    doc = {"policy_ids": ["policies/taint.cedar#no-external-send-after-phi"], "reason_code": "POLICY_DENY"}
    data = {"decision": {"document": json.dumps(doc), "signature": "x"}}
    assert demo_story._deny_detail(data) == "signed deny: no-external-send-after-phi"
    no_ids = {"decision": {"document": json.dumps({"policy_ids": [], "reason_code": "TOOL_NOT_IN_CATALOG"})}}
    assert demo_story._deny_detail(no_ids) == "signed deny: TOOL_NOT_IN_CATALOG"
    for junk in (None, {}, {"decision": "x"}, {"decision": {"document": "{not json"}}):
        assert demo_story._deny_detail(junk) == ""


def test_result_detail_prefers_structured_content() -> None:
    structured = {"structuredContent": {"name": "Zoë"}, "content": []}
    assert demo_story._result_detail(structured) == '{"name": "Zoë"}'
    assert demo_story._result_detail({"content": [{"type": "image"}, {"type": "text", "text": "hi"}]}) == "hi"
    assert demo_story._result_detail({"content": []}) == "ok"
    assert demo_story._result_detail(None) == ""


def test_audit_entries_read_as_short_lines() -> None:
    decision = {"kind": "decision", "data": {"tool": "email.send_external", "effective": "deny",
                                              "reason_code": "POLICY_DENY",
                                              "policy_ids": ["policies/a.cedar#p1", "policies/b.cedar#p2"]}}
    assert demo_story._entry_tool(decision) == "email.send_external"
    assert demo_story._entry_outcome(decision) == "deny POLICY_DENY p1,p2"
    allow = {"kind": "decision", "data": {"effective": "allow", "reason_code": None, "policy_ids": []}}
    assert demo_story._entry_outcome(allow) == "allow"
    complete = {"kind": "complete", "data": {"tool": "t", "response_bytes": 42}}
    assert demo_story._entry_outcome(complete) == "upstream answered, 42 bytes"
    failed = {"kind": "complete", "data": {"response_bytes": 0, "error_code": "UPSTREAM_ERROR"}}
    assert demo_story._entry_outcome(failed) == "upstream answered, 0 bytes, UPSTREAM_ERROR"
    opened = {"kind": "open", "data": {"principal": "demo-agent", "n": 1, "nested": {"x": 1}}}
    assert demo_story._entry_outcome(opened) == "principal=demo-agent, n=1"
    assert demo_story._entry_tool({"data": "text"}) == "" and demo_story._entry_outcome({"data": []}) == ""
    assert demo_story._policy_name("no-hash") == "no-hash"


def test_prepare_out_replaces_our_previous_files_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "run").mkdir(parents=True)
    (out / "run" / "old.log").write_text("old")
    (out / "s1.trust-record.json").write_text("{}")
    (out / "s1.audit.json").write_text("[]")
    (out / "notes.txt").write_text("mine")
    assert demo_story.prepare_out(str(out)) == out.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "run"]
    assert list((out / "run").iterdir()) == []


def test_prepare_out_without_a_folder_makes_a_stamped_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = demo_story.prepare_out(None)
    assert out.parent == tmp_path.resolve() and out.name.startswith("cmcp-demo-") and (out / "run").is_dir()


def test_rel_and_shown_shorten_paths_under_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inside = tmp_path.resolve() / "out" / "a.json"
    assert demo_story._rel(inside) == "out/a.json"
    assert demo_story._rel(Path("/elsewhere/b.json")) == "/elsewhere/b.json"
    assert demo_story._shown(f"@{inside}") == "@out/a.json"
    assert demo_story._shown("--nonce") == "--nonce"
    assert demo_story._quote("sha256:ab") == "sha256:ab"
    assert demo_story._quote("two words") == '"two words"' and demo_story._quote("") == '""'


def test_default_bundle_dir_is_the_repository_example() -> None:
    assert demo_story.default_bundle_dir() == (EXAMPLES / "realistic").resolve()


class _Utf8(io.StringIO):
    encoding = "utf-8"


def test_console_table_aligns_and_cuts_long_cells() -> None:
    stream = io.StringIO()
    Console(stream).table(["a", "bb"], [["x" * 60, "y"], ["z", "two\n lines"]])
    header, rule, first, second = stream.getvalue().splitlines()
    assert header == "a" + " " * 51 + "  bb" and rule == "-" * 52 + "  " + "-" * 9
    assert first == "x" * 51 + "…  y"
    assert second == "z" + " " * 51 + "  two lines"


def test_console_marks_follow_the_stream_encoding() -> None:
    plain, fancy = Console(io.StringIO()), Console(_Utf8())
    assert (plain.ok_mark, plain.fail_mark) == ("ok", "FAIL")
    assert (fancy.ok_mark, fancy.fail_mark) == ("✔", "✘")
    fancy.heading("Title")
    assert fancy.stream.getvalue() == "\nTitle\n─────\n"


def test_progress_off_a_terminal_prints_a_start_and_a_result_line() -> None:
    stream = io.StringIO()
    console = Console(stream)
    with console.progress("starting the enclave"):
        pass
    with pytest.raises(RuntimeError), console.progress("starting the gateway"):
        raise RuntimeError("boom")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "  ... starting the enclave"
    assert lines[1].startswith("  ok starting the enclave (") and lines[1].endswith("s)")
    assert lines[2] == "  ... starting the gateway"
    assert lines[3].startswith("  FAIL starting the gateway (")
    assert "\r" not in stream.getvalue(), "no spinner frames in a log"


def test_report_stop_and_success(tmp_path: Path) -> None:
    stream = io.StringIO()
    console = Console(stream)
    assert demo_story.report_stop(console, "the enclave did not start", "read run/*.log", exit_code=2) == 2
    assert stream.getvalue() == "\nFAIL the enclave did not start\n  next: read run/*.log\n"
    stream.truncate(0), stream.seek(0)
    failing = Run(out=tmp_path, steps=[Step("t", "agent", "x", {}, None, True, "r")])
    assert demo_story.report_success(console, failing, 1.0) is False and stream.getvalue() == "\n"
    ok = Step("t", "agent", "x", {}, None, True, "r", executed=True)
    run = Run(out=tmp_path, steps=[ok], checks=[("c", True, "")],
              files={"record": tmp_path / "s.trust-record.json", "audit": tmp_path / "s.audit.json"})
    assert demo_story.report_success(console, run, 12.4, where="on the cluster ") is True
    assert "ok All 1 steps and 1 checks came out as expected on the cluster (12s)." in stream.getvalue()


def test_explain_failures_names_each_failed_step_and_check_with_a_next_step(tmp_path: Path) -> None:
    stream = io.StringIO()
    leaked = Step("partner mail after PHI", "agent", "email.send_external", {}, "POLICY_DENY", False, "r",
                  actual_code=None, executed=True)
    host = Step("replay", "host", "t", {}, "PERMIT_REPLAYED", False, "r", error="nothing to replay")
    fine = Step("fine", "agent", "t", {}, None, True, "r", executed=True)
    run = Run(out=tmp_path, steps=[leaked, host, fine], checks=[("audit chain", False, "AUDIT_SEQ_GAP")])
    demo_story._explain_failures(Console(stream), run)
    text = stream.getvalue()
    assert ("step 'partner mail after PHI': expected POLICY_DENY (upstream ran: False), "
            "got allowed, upstream ran: True.") in text
    assert "step 'replay': expected PERMIT_REPLAYED (upstream ran: False), got nothing to replay." in text
    assert "gateway.log" in text and "guard.log" in text and "- audit chain: AUDIT_SEQ_GAP" in text
    assert "'fine'" not in text


def test_verify_run_checks_the_records_gpu_evidence(tmp_path: Path) -> None:
    """`cmcpctl demo --gpu simulated`: the record's GPU evidence is checked; evidence the record does
    not name (here the Attest's, same GPU) fails the record and the GPU check."""
    enc = inprocess_enclave(EXAMPLES / "realistic", tmp_path, gpus=SimulatedGpuProvider())
    decide(enc, "crm.lookup_customer", {"customer_id": "C-1042"}, session="gpu")
    done = enc.close(known(enc, "gpu"))
    nonce = os.urandom(32)
    response = attest_response(enc, nonce)
    gpu_check = "the record's GPU evidence: named by it, answers its nonce"

    def checks(evidence: tuple[bytes, ...]) -> dict[str, bool]:
        run = Run(out=tmp_path, record=done.record or {}, entries=exported(enc, "gpu"),
                  key_jwk=dict(enc.public_jwk), bundle_hash=enc.bundle_hash, gpu_evidence=evidence)
        demo_story.verify_run(run, response, nonce, dev_appraisal())
        return {name: ok for name, ok, _ in run.checks}

    honest = checks(done.gpu_evidence)
    assert honest[gpu_check] and honest["Trust Record: key from evidence, bundle pinned"]
    swapped = checks(tuple(response.gpu_evidence))
    assert not swapped[gpu_check] and not swapped["Trust Record: key from evidence, bundle pinned"]
