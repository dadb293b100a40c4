"""Trust Records and audit exports from the real `Enclave`, verified offline (library + CLI)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from cmcp_core import initdata
from cmcp_core.binding import gpu_nonce
from cmcp_core.bundle import load_bundle
from cmcp_core.crypto import public_jwk
from cmcp_core.digest import json_digest
from cmcp_core.errors import Code
from cmcp_core.evidence.gpu import decode_gpu_evidence, gpu_evidence_file, parse_gpu_report
from cmcp_core.proto import enclave_pb2
from cmcp_core.trust_record import record_gpu_digests
from cmcp_core.verify import Verdict, appraise_attestation
from cmcp_core.verify import record as record_module
from cmcp_core.verify.gpu_requirement import GpuRequirement
from cmcp_core.verify.record import load_audit_export, verify_audit_export, verify_trust_record
from cmcp_ctl.main import main as cmcpctl
from cmcp_devkit.enclave import inprocess_enclave
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import dev_appraisal, dev_release, release_argv
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.gpu import SimulatedGpuProvider, with_gpus
from cmcp_enclave.startup import start
from cmcp_enclave.tee import SimulatedProvider
from tests.helpers.enclave_calls import exported, known, sid
from tests.paths import EXAMPLES

BUNDLE_DIR = EXAMPLES / "minimal"


@dataclass
class Closed:
    enclave: Enclave
    record: dict[str, Any]
    audit: list[dict[str, Any]]
    verdict: Verdict
    response: enclave_pb2.AttestResponse
    nonce: bytes
    record_gpu: tuple[bytes, ...] = ()  # the GPU evidence the record names (CloseSessionResponse)


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Closed:
    """A simulated enclave attested by the verifier, one allowed call, then session close."""
    return _closed_session(tmp_path_factory.mktemp("enclave"))


@pytest.fixture(scope="module")
def closed_gpu(tmp_path_factory: pytest.TempPathFactory) -> Closed:
    """The same with a simulated GPU: its AttestResponse carries CPU and GPU evidence."""
    return _closed_session(tmp_path_factory.mktemp("enclave-gpu"), gpu=True)


def _closed_session(workdir: Path, gpu: bool = False) -> Closed:
    bundle = load_bundle(BUNDLE_DIR)
    entry = initdata.CmcpEntry(
        bundle.bundle_hash, bundle.catalog_hash, bundle.enforcement_mode, "team/route", "http://upstream"
    )
    toml = initdata.render(entry, image=TEST_IMAGE, command=["cmcp-enclave"])
    path = workdir / "initdata.toml"
    path.write_bytes(toml)
    cpu = SimulatedProvider(initdata.tdx_mrconfigid(toml).hex())
    enc = start(
        bundle_dir=BUNDLE_DIR,
        initdata_path=path,
        provider=with_gpus(cpu, SimulatedGpuProvider() if gpu else None),
    )
    nonce = os.urandom(32)
    report, report_data = enc.attest(nonce)
    verdict = appraise_attestation(
        report.platform,
        report.evidence,
        aux=report.aux,
        initdata=enc.initdata_bytes,
        public_key_jwk=enc.public_jwk,
        bundle_hash=enc.bundle_hash,
        catalog_hash=enc.catalog_hash,
        enforcement_mode=enc.mode,
        nonce=nonce,
        claimed_report_data=report_data,
        expected_bundle_hash=bundle.bundle_hash,
        policy=dev_appraisal(),
    )
    assert verdict.passed, verdict.message
    args = {"text": "héllo"}
    enc.decide(
        session_id=sid(enc, "s1", "agent"),
        call_id="c1",
        principal="agent",
        method="tools/call",
        tool="echo",
        arguments_json=json.dumps(args).encode(),
        arguments_digest=json_digest(args),
        audience="http://upstream",
    )
    done = enc.close(known(enc, "s1"))
    response = enclave_pb2.AttestResponse(
        platform=report.platform,
        evidence=report.evidence,
        aux=report.aux,
        initdata=enc.initdata_bytes,
        public_key_jwk=json.dumps(enc.public_jwk),
        bundle_hash=enc.bundle_hash,
        catalog_hash=enc.catalog_hash,
        enforcement_mode=enc.mode,
        report_data=report_data,
        gpu_evidence=list(report.gpu_evidence),
    )
    assert done.record is not None
    return Closed(enc, done.record, exported(enc, "s1"), verdict, response, nonce, done.gpu_evidence)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _edit(record: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    out = copy.deepcopy(record)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    old = node[path[-1]]
    if isinstance(old, bool):
        node[path[-1]] = not old
    elif isinstance(old, int):
        node[path[-1]] = old + 1
    elif isinstance(old, str):
        node[path[-1]] = old + "x" if not old else old[:-1] + ("A" if old[-1] != "A" else "B")
    else:
        node[path[-1]] = "edited"
    return out


def _verify(c: Closed, record: dict[str, Any] | None = None, **kw: Any) -> Verdict:
    kw.setdefault("key", c.enclave.public_jwk)
    kw.setdefault("now", record["iat"] if record else c.record["iat"])
    return verify_trust_record(record if record is not None else c.record, **kw)


def test_record_from_the_enclave_verifies(closed: Closed) -> None:
    v = _verify(
        closed,
        verdict=closed.verdict,
        audit_entries=closed.audit,
        pinned_bundle_hash=closed.verdict.bundle_hash,
    )
    assert v.passed, v.message
    assert v.checks == (
        "trace-verify-record",
        "cnf-key",
        "measured-bundle",
        "runtime-nonce",
        "audit-chain-tip",
    )
    assert v.assurance == "software-only" and v.platform == "software-only"


def test_every_field_edit_is_rejected(closed: Closed) -> None:
    paths = list(_leaves(closed.record))
    assert len(paths) > 15
    for path in paths:
        v = _verify(closed, _edit(closed.record, path))
        assert not v.passed, f"edit of {path} was accepted"


def test_key_pinning_and_freshness(closed: Closed) -> None:
    other = public_jwk(Ed25519PrivateKey.generate().public_key())
    assert _verify(closed, key=other).code == Code.RECORD_INVALID
    assert _verify(closed, now=closed.record["iat"] + 2 * 86400).code == Code.RECORD_STALE
    assert _verify(closed, now=closed.record["iat"] + 2 * 86400, max_age_seconds=None).passed
    assert _verify(closed, now=closed.record["iat"] - 3600).code == Code.RECORD_STALE
    assert verify_trust_record(closed.record).code == Code.VERIFY_INPUT_INVALID


def test_record_must_match_the_attested_enclave(closed: Closed) -> None:
    v = dataclasses.replace(closed.verdict, bundle_hash="sha256:" + "00" * 32)
    assert _verify(closed, verdict=v).code == Code.RECORD_BUNDLE_MISMATCH
    other = public_jwk(Ed25519PrivateKey.generate().public_key())
    v = dataclasses.replace(closed.verdict, public_key_jwk=other)
    assert _verify(closed, verdict=v).code == Code.RECORD_KEY_MISMATCH
    v = dataclasses.replace(closed.verdict, catalog_hash="sha256:" + "11" * 32)
    assert _verify(closed, verdict=v).code == Code.RECORD_INVALID  # runtime.nonce binds the catalog
    v = dataclasses.replace(closed.verdict, platform="tdx")
    assert _verify(closed, verdict=v).code == Code.RECORD_INVALID  # software-only record, TDX evidence
    failed = dataclasses.replace(closed.verdict, passed=False, code="EVIDENCE_BAD_SIGNATURE")
    assert not _verify(closed, verdict=failed).passed
    assert _verify(closed, pinned_bundle_hash="sha256:" + "22" * 32).code == Code.RECORD_BUNDLE_MISMATCH


def test_audit_export_against_the_record(closed: Closed) -> None:
    assert _verify(closed, audit_entries=closed.audit[:-1]).code == Code.RECORD_TRANSCRIPT_MISMATCH
    edited = copy.deepcopy(closed.audit)
    edited[1]["data"]["tool"] = "other"
    assert _verify(closed, audit_entries=edited).code == Code.AUDIT_ENTRY_EDITED
    swapped = [closed.audit[0], closed.audit[2], closed.audit[1]]
    assert not _verify(closed, audit_entries=swapped).passed
    assert verify_audit_export(
        closed.audit, closed.enclave.public_jwk, closed.record["tool_transcript"]["hash"]
    ).passed
    assert not verify_audit_export(closed.audit[1:], closed.enclave.public_jwk).passed


def test_audit_export_formats() -> None:
    entries = [{"seq": 0}, {"seq": 1}]
    assert load_audit_export(json.dumps(entries).encode()) == entries
    assert load_audit_export(json.dumps({"entries": entries}).encode()) == entries
    assert load_audit_export(b"\n".join(json.dumps(e).encode() for e in entries)) == entries


def _write(tmp: Path, name: str, doc: Any) -> str:
    p = tmp / name
    p.write_text(json.dumps(doc, ensure_ascii=False))
    return str(p)


def test_cli_record_and_audit(closed: Closed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = json.dumps(closed.enclave.public_jwk)
    rec = _write(tmp_path, "record.json", closed.record)
    audit = _write(tmp_path, "audit.json", closed.audit)
    now = str(closed.record["iat"])
    assert cmcpctl(["verify", "record", rec, "--key", key, "--audit", audit, "--now", now, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["code"] == "OK"
    for path in _leaves(closed.record):  # every field edit, through the CLI
        bad = _write(tmp_path, "bad.json", _edit(closed.record, path))
        assert cmcpctl(["verify", "record", bad, "--key", key, "--now", now]) == 1
    assert (
        cmcpctl(["verify", "audit", audit, "--key", key, "--tip", closed.record["tool_transcript"]["hash"]])
        == 0
    )
    assert cmcpctl(["verify", "audit", audit, "--key", key, "--tip", "sha256:" + "0" * 64]) == 1
    assert cmcpctl(["verify", "record", str(tmp_path / "missing.json"), "--key", key]) == 2
    assert cmcpctl(["verify", "record", rec, "--key", "{not json"]) == 2
    with pytest.raises(SystemExit) as exit_:
        cmcpctl(["verify", "record"])
    assert exit_.value.code == 2


def test_cli_record_against_the_attest_response(
    closed: Closed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = _write(tmp_path, "record.json", closed.record)
    resp = tmp_path / "attest.json"
    resp.write_text(json_format.MessageToJson(closed.response))
    now = str(closed.record["iat"])
    base = ["verify", "record", rec, "--response", str(resp), "--now", now, "--json",
            *release_argv(tmp_path / "release", dev_release())]
    assert cmcpctl([*base, "--nonce", closed.nonce.hex(), "--allow-simulated"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and "runtime-nonce" in out["checks"] and out["assurance"] == "software-only"
    assert cmcpctl([*base, "--nonce", closed.nonce.hex()]) == 1  # simulated evidence not allowed
    assert json.loads(capsys.readouterr().out)["code"] == "SIMULATED_NOT_ALLOWED"
    assert cmcpctl([*base, "--nonce", os.urandom(32).hex(), "--allow-simulated"]) == 1  # other nonce
    assert cmcpctl(base) == 2
    assert cmcpctl(["verify", "record", rec]) == 2  # neither a key nor a response


def _gpu_response(closed: Closed, tmp_path: Path, envelopes: list[bytes] | None = None) -> str:
    resp = enclave_pb2.AttestResponse()
    resp.CopyFrom(closed.response)
    if envelopes is not None:
        del resp.gpu_evidence[:]
        resp.gpu_evidence.extend(envelopes)
    path = tmp_path / f"attest-{os.urandom(4).hex()}.json"
    path.write_text(json_format.MessageToJson(resp))
    return str(path)


def test_cli_record_with_cpu_and_gpu_evidence(
    closed_gpu: Closed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An auditor holding the record and the AttestResponse (CPU and simulated GPU evidence)."""
    rec = _write(tmp_path, "record.json", closed_gpu.record)
    base = ["verify", "record", rec, "--now", str(closed_gpu.record["iat"]),
            "--nonce", closed_gpu.nonce.hex(), "--allow-simulated",
            *release_argv(tmp_path / "release", dev_release())]
    assert cmcpctl([*base, "--response", _gpu_response(closed_gpu, tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and "runtime-nonce" in out["checks"] and "gpu:1" in out["checks"]
    assert out["gpus"][0]["revocation"] == "not-checked" and out["gpus"][0]["assurance"] == "software-only"
    assert cmcpctl([*base, "--response", _gpu_response(closed_gpu, tmp_path)]) == 0
    assert "gpus=1 gpu-revocation=not-checked" in capsys.readouterr().out

    def code(*extra: str, envelopes: list[bytes] | None = None) -> str:
        assert cmcpctl([*base, "--response", _gpu_response(closed_gpu, tmp_path, envelopes), "--json",
                        *extra]) == 1
        return str(json.loads(capsys.readouterr().out)["code"])

    genuine = bytes(closed_gpu.response.gpu_evidence[0])
    doc = json.loads(genuine)
    report = bytearray(base64.b64decode(doc["report"]))
    report[60] ^= 1
    flipped = json.dumps({**doc, "report": base64.b64encode(bytes(report)).decode()}).encode()
    other_gpu = SimulatedGpuProvider().evidence(gpu_nonce(closed_gpu.response.report_data))[0]
    replayed = SimulatedGpuProvider().evidence(gpu_nonce(os.urandom(64)))[0]
    assert code(envelopes=[flipped]) == "GPU_EVIDENCE_BAD_SIGNATURE"
    assert code(envelopes=[replayed]) == "GPU_NONCE_MISMATCH"
    assert code("--require-gpu", "1", envelopes=[]) == "GPU_EVIDENCE_MISSING"
    assert code("--require-gpu", "2") == "GPU_EVIDENCE_MISSING"
    assert code("--gpu-revocation", "ocsp-stapled") == "GPU_OCSP_INVALID"
    # another (simulated) GPU answering this very nonce passes: simulator roots are not pinned here
    assert cmcpctl([*base, "--response", _gpu_response(closed_gpu, tmp_path, [other_gpu])]) == 0
    capsys.readouterr()
    # without --require-gpu a response stripped of its GPU evidence is only CPU evidence: said so
    assert cmcpctl([*base, "--response", _gpu_response(closed_gpu, tmp_path, []), "--json"]) == 0
    assert "gpus" not in json.loads(capsys.readouterr().out)


def test_cli_evidence_response_with_gpu(
    closed_gpu: Closed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["verify", "evidence", "--response", _gpu_response(closed_gpu, tmp_path), "--nonce",
            closed_gpu.nonce.hex(), *release_argv(tmp_path / "release", dev_release()), "--json"]
    assert cmcpctl([*base, "--allow-simulated"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"][0]["passed"] is True
    assert cmcpctl(base) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "SIMULATED_NOT_ALLOWED"


# ---- the record's own GPU evidence (ADR 0031) -------------------------------------------------


def _record_gpu(c: Closed, envelopes: Any = None, record: dict[str, Any] | None = None, **kw: Any) -> Verdict:
    """The record, its verified attestation and GPU evidence, a simulated GPU allowed."""
    kw.setdefault("verdict", c.verdict)
    kw.setdefault("gpu", GpuRequirement())
    kw.setdefault("allow_simulated", True)
    kw.setdefault("gpu_evidence", c.record_gpu if envelopes is None else envelopes)
    return _verify(c, record, **kw)


def _report_data(c: Closed) -> bytes:
    return base64.urlsafe_b64decode(c.record["runtime"]["nonce"] + "==")


def _other_session_evidence(c: Closed) -> bytes:
    """GPU evidence the same enclave signed into the record of another session."""
    other = c.enclave.close(sid(c.enclave, f"other-{os.urandom(4).hex()}", "agent"))
    return other.gpu_evidence[0]


def _enclave_with_gpus(tmp_path: Path, gpus: Any) -> tuple[Enclave, dict[str, Any], Verdict]:
    """An enclave whose GPU provider is ``gpus``, attested, one session closed: its record."""
    enc = inprocess_enclave(BUNDLE_DIR, tmp_path, gpus=gpus)
    nonce = os.urandom(32)
    report, report_data = enc.attest(nonce)
    verdict = appraise_attestation(
        report.platform, report.evidence, aux=report.aux, initdata=enc.initdata_bytes,
        public_key_jwk=enc.public_jwk, bundle_hash=enc.bundle_hash, catalog_hash=enc.catalog_hash,
        enforcement_mode=enc.mode, nonce=nonce, claimed_report_data=report_data,
        policy=dev_appraisal())
    assert verdict.passed, verdict.message
    done = enc.close(sid(enc, "s", "agent"))
    assert done.record is not None
    return enc, done.record, verdict


def test_the_records_gpu_evidence_verifies(closed_gpu: Closed) -> None:
    v = _record_gpu(closed_gpu)
    assert v.passed, v.message
    assert {"gpu-references", "record-gpus:1", "runtime-nonce"} <= set(v.checks)
    assert len(v.gpus) == 1 and v.gpus[0].assurance == "software-only"
    key_only = _record_gpu(closed_gpu, verdict=None)  # the signed runtime.nonce, under the pinned key
    assert key_only.passed and key_only.assurance == "none" and len(key_only.gpus) == 1


def test_gpu_evidence_the_record_does_not_name_is_refused(closed_gpu: Closed) -> None:
    """Another session's, an Attest's (same GPU, other nonce), and another GPU's for this very
    record's nonce (a valid report the enclave never saw): none is named by the record."""
    foreign = SimulatedGpuProvider().evidence(gpu_nonce(_report_data(closed_gpu)))[0]
    attest = bytes(closed_gpu.response.gpu_evidence[0])
    for envelope in (_other_session_evidence(closed_gpu), attest, foreign):
        v = _record_gpu(closed_gpu, [envelope])
        assert (v.passed, v.code) == (False, "GPU_EVIDENCE_UNREFERENCED"), v.message
    v = _record_gpu(closed_gpu, [*closed_gpu.record_gpu, foreign])  # one extra beside the genuine
    assert v.code == "GPU_EVIDENCE_UNREFERENCED"
    v = _record_gpu(closed_gpu, [closed_gpu.record_gpu[0], closed_gpu.record_gpu[0]])  # named once
    assert v.code == "GPU_EVIDENCE_UNREFERENCED"


def test_a_gpu_reference_removed_or_edited_breaks_the_record_signature(closed_gpu: Closed) -> None:
    gpu_ref = next(i for i, r in enumerate(closed_gpu.record["references"]) if r["rel"] == "gpu-attestation")
    removed = copy.deepcopy(closed_gpu.record)
    del removed["references"][gpu_ref]
    edited = _edit(closed_gpu.record, ("references", gpu_ref, "digest"))
    for record in (removed, edited):
        v = _record_gpu(closed_gpu, record=record)
        assert (v.passed, v.code) == (False, "RECORD_INVALID"), v.message


def test_required_gpu_evidence_must_be_supplied(closed_gpu: Closed, closed: Closed) -> None:
    v = _record_gpu(closed_gpu, gpu_evidence=None)
    assert (v.passed, v.code) == (False, "GPU_EVIDENCE_MISSING")
    assert _verify(closed_gpu, verdict=closed_gpu.verdict).passed  # not required: TRACE 3.1.2
    assert _record_gpu(closed_gpu, [], gpu=None).code == "GPU_EVIDENCE_MISSING"  # named, not supplied
    assert _record_gpu(closed_gpu, gpu=GpuRequirement(count=2)).code == "GPU_EVIDENCE_MISSING"
    assert _record_gpu(closed, [], verdict=closed.verdict).code == "GPU_EVIDENCE_MISSING"  # none named
    assert _record_gpu(closed_gpu, allow_simulated=False).code == "SIMULATED_NOT_ALLOWED"
    ocsp = _record_gpu(closed_gpu, gpu=GpuRequirement(revocation="ocsp-stapled"))
    assert ocsp.code == "GPU_OCSP_INVALID" and len(ocsp.gpus) == 1


def test_two_gpus_both_named_both_needed(tmp_path: Path) -> None:
    two = _TwoGpus()
    enc, record, verdict = _enclave_with_gpus(tmp_path, two)
    evidence = two.last
    assert len(record_gpu_digests(record)) == 2
    base = {"key": enc.public_jwk, "verdict": verdict, "now": record["iat"], "allow_simulated": True}
    assert verify_trust_record(record, gpu_evidence=evidence, gpu=GpuRequirement(count=2), **base).passed
    assert verify_trust_record(record, gpu_evidence=evidence[::-1], **base).passed  # any order
    v = verify_trust_record(record, gpu_evidence=evidence[:1], **base)  # one of the two withheld
    assert (v.passed, v.code) == (False, "GPU_EVIDENCE_MISSING")


class _TwoGpus:
    name = "two"

    def __init__(self) -> None:
        self.gpus = (SimulatedGpuProvider(), SimulatedGpuProvider())
        self.last: tuple[bytes, ...] = ()

    def evidence(self, nonce: bytes) -> tuple[bytes, ...]:
        self.last = tuple(g.evidence(nonce)[0] for g in self.gpus)
        return self.last


class _HostFedGpu:
    """The host feeds the enclave's GPU channel: stale evidence of the same GPU (another nonce), or
    a report with one bit flipped. The enclave does not appraise it; it names what it was given."""

    name = "host-fed"

    def __init__(self, how: str) -> None:
        self.gpu, self.how = SimulatedGpuProvider(), how

    def evidence(self, nonce: bytes) -> tuple[bytes, ...]:
        if self.how == "stale":
            return self.gpu.evidence(gpu_nonce(os.urandom(64)))
        doc = json.loads(self.gpu.evidence(nonce)[0])
        report = bytearray(base64.b64decode(doc["report"]))
        report[60] ^= 1
        return (json.dumps({**doc, "report": base64.b64encode(bytes(report)).decode()}).encode(),)


@pytest.mark.parametrize(("how", "code"), [("stale", "GPU_NONCE_MISMATCH"),
                                           ("flipped", "GPU_EVIDENCE_BAD_SIGNATURE")])
def test_named_gpu_evidence_still_has_to_appraise(tmp_path: Path, how: str, code: str) -> None:
    """The digest says what the enclave was given, not that it is good: stale or forged evidence
    the host fed it fails on its own (nonce derived from the record, signature)."""
    gpus = _HostFedGpu(how)
    enc, record, verdict = _enclave_with_gpus(tmp_path, gpus)
    envelopes = enc.closed[sid(enc, "s", "agent")].gpu_evidence
    v = verify_trust_record(record, key=enc.public_jwk, verdict=verdict, now=record["iat"],
                            gpu_evidence=envelopes, gpu=GpuRequirement(), allow_simulated=True)
    assert (v.passed, v.code) == (False, code), v.message
    assert "gpu-references" in v.checks  # it was named: the GPU's own check caught it


# ---- weakened verifiers: each check is the one that catches its attack -----------------------


def _weak_appraise_gpus(envelopes: Any, requirement: Any, *, report_data: bytes, **kw: Any) -> Any:
    """Takes each GPU report's nonce from the report itself instead of deriving it from the record."""
    from cmcp_core.verify import gpu_requirement

    first = parse_gpu_report(decode_gpu_evidence(bytes(envelopes[0])).report).request.nonce
    real_nonce = gpu_requirement.gpu_nonce
    try:
        gpu_requirement.gpu_nonce = lambda _rd: first  # type: ignore[assignment]
        return gpu_requirement.appraise_gpus(envelopes, requirement, report_data=report_data, **kw)
    finally:
        gpu_requirement.gpu_nonce = real_nonce  # type: ignore[assignment]


def test_weakened_verifier_without_the_digest_check_takes_another_gpus_evidence(
        closed_gpu: Closed, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = SimulatedGpuProvider().evidence(gpu_nonce(_report_data(closed_gpu)))[0]
    monkeypatch.setattr(record_module, "check_record_gpu_references", lambda _r, _e: None)
    v = _record_gpu(closed_gpu, [foreign])
    assert v.passed, "without the digest check a GPU the enclave never used speaks for the record"


def test_weakened_verifier_trusting_the_reports_nonce_takes_stale_evidence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc, record, verdict = _enclave_with_gpus(tmp_path, _HostFedGpu("stale"))
    envelopes = enc.closed[sid(enc, "s", "agent")].gpu_evidence
    monkeypatch.setattr(record_module, "appraise_gpus", _weak_appraise_gpus)
    v = verify_trust_record(record, key=enc.public_jwk, verdict=verdict, now=record["iat"],
                            gpu_evidence=envelopes, gpu=GpuRequirement(), allow_simulated=True)
    assert v.passed, "with the report's own nonce, stale GPU evidence passes for this record"


def test_weakened_verifier_with_neither_check_takes_another_sessions_evidence(
        closed_gpu: Closed, monkeypatch: pytest.MonkeyPatch) -> None:
    swapped = _other_session_evidence(closed_gpu)
    assert _record_gpu(closed_gpu, [swapped]).code == "GPU_EVIDENCE_UNREFERENCED"
    monkeypatch.setattr(record_module, "check_record_gpu_references", lambda _r, _e: None)
    assert _record_gpu(closed_gpu, [swapped]).code == "GPU_NONCE_MISMATCH"  # the nonce still catches it
    monkeypatch.setattr(record_module, "appraise_gpus", _weak_appraise_gpus)
    assert _record_gpu(closed_gpu, [swapped]).passed, "another session's GPU evidence passes"


# ---- cmcpctl verify record --gpu-evidence -----------------------------------------------------


def test_cli_record_with_its_gpu_evidence(
    closed_gpu: Closed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = _write(tmp_path, "record.json", closed_gpu.record)
    side = tmp_path / "s.gpu-evidence.json"
    side.write_bytes(gpu_evidence_file(closed_gpu.record_gpu))
    attest = _gpu_response(closed_gpu, tmp_path)
    base = ["verify", "record", rec, "--now", str(closed_gpu.record["iat"]), "--response", attest,
            "--nonce", closed_gpu.nonce.hex(), "--allow-simulated",
            *release_argv(tmp_path / "release", dev_release())]
    assert cmcpctl([*base, "--gpu-evidence", str(side), "--require-gpu", "1"]) == 0
    summary = "PASS OK [software-only, software-only gpus=1 gpu-revocation=not-checked]"
    assert summary in capsys.readouterr().out
    assert cmcpctl([*base, "--gpu-evidence", str(side), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "record-gpus:1" in out["checks"] and out["gpus"][0]["checks"][-1] == "measurements"

    def code(*extra: str) -> str:
        assert cmcpctl([*base, "--json", *extra]) == 1
        return str(json.loads(capsys.readouterr().out)["code"])

    assert code("--gpu-evidence", attest) == "GPU_EVIDENCE_UNREFERENCED"  # the Attest's, one reader
    assert code("--require-gpu", "1") == "GPU_EVIDENCE_MISSING"
    assert code("--gpu-evidence", str(side), "--gpu-revocation", "ocsp-stapled") == "GPU_OCSP_INVALID"
    key = ["verify", "record", rec, "--now", str(closed_gpu.record["iat"]), "--key",
           json.dumps(closed_gpu.enclave.public_jwk), "--gpu-evidence", str(side), "--json"]
    assert cmcpctl(key) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "SIMULATED_NOT_ALLOWED"
    assert cmcpctl([*key, "--allow-simulated"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text('{"gpuEvidence": "not a list"}')
    assert cmcpctl([*base, "--gpu-evidence", str(bad)]) == 2  # usage: not a GPU evidence file
    assert cmcpctl([*base, "--gpu-evidence", str(tmp_path / "absent.json")]) == 2
    assert cmcpctl([*key, "--require-gpu", "9"]) == 2  # at most 8
