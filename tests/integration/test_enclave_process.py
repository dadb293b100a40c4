"""Integration: ``cmcp-enclave`` as a real process on the simulated TEE, driven over gRPC.

Attest (appraised by the verifier), a session with allow, taint deny and a completed call,
close, then the Trust Record (agentrust_trace.verify_record, key pinned to the *attested* key)
and the exported audit chain (audit.verify_chain up to the record's tip)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest
from agentrust_trace import verify_record

from cmcp_core.audit import verify_chain
from cmcp_core.crypto import key_from_jwk
from cmcp_core.decision import verify_decision
from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify.appraise import appraise_response
from cmcp_devkit.enclave import NO_TRAIL, EnclaveProcess, start_enclave
from cmcp_devkit.release import dev_appraisal
from tests.paths import EXAMPLES


@pytest.fixture
def enclave(tmp_path: Path) -> EnclaveProcess:
    proc = start_enclave(EXAMPLES / "realistic", tmp_path)
    yield proc  # type: ignore[misc]
    assert proc.stop() == 0  # clean shutdown on SIGTERM


def test_session_over_grpc_with_record_and_audit(enclave: EnclaveProcess) -> None:
    with grpc.insecure_channel(enclave.address) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        nonce = os.urandom(32)
        verdict = appraise_response(stub.Attest(enclave_pb2.AttestRequest(nonce=nonce)), nonce,
                                    dev_appraisal(),
                                    expected_initdata=enclave.initdata)
        assert verdict.passed, verdict.message
        assert verdict.public_key_jwk is not None
        key = key_from_jwk(verdict.public_key_jwk)  # trust comes from the appraisal, not the ready file

        carried: list[bytes] = []  # every answer's audit entries: what the gateway stores
        opened = stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="agent://billing", trail=NO_TRAIL))
        session = opened.session_id
        carried.extend(opened.audit_entries)

        def call(call_id: str, tool: str, args: dict[str, object]) -> dict[str, object]:
            resp = stub.Decide(enclave_pb2.DecideRequest(
                session_id=session, call_id=call_id, principal="agent://billing", method="tools/call",
                tool=tool, arguments_json=json.dumps(args).encode(), arguments_digest=json_digest(args),
                audience=enclave.audience))
            carried.extend(resp.audit_entries)
            return verify_decision(resp.decision_json, resp.signature, key, expected={"call_id": call_id})

        assert call("1", "ehr.read_patient_record", {"patient_id": "p-1"})["effective"] == "allow"
        done = stub.Complete(enclave_pb2.CompleteRequest(session_id=session, call_id="1",
                                                         response_digest=json_digest({"ok": True}),
                                                         response_bytes=12))
        carried.extend(done.audit_entries)
        denied = call("2", "email.send_external", {"to": ["bob@partner.example"]})
        assert denied["reason_code"] == "POLICY_DENY"
        assert call("3", "résumé.parse", {"body": "Zoë"})["effective"] == "allow"
        tools = stub.ListTools(enclave_pb2.ListToolsRequest(session_id=session, principal="agent://billing"))
        assert "résumé.parse" in tools.tools

        closed = stub.CloseSession(enclave_pb2.CloseSessionRequest(session_id=session, reason="done"))
        carried.extend(closed.audit_entries)
        record = json.loads(closed.trust_record_json)
        assert verify_record(record, key) is not None
        assert record["policy"]["bundle_hash"] == verdict.bundle_hash == enclave.bundle_hash
        assert record["runtime"]["platform"] == "software-only"

        entries = [e for e in map(json.loads, carried) if e["session_id"] == session]
        result = verify_chain(entries, key, expected_tip=record["tool_transcript"]["hash"])
        assert result.ok, result.message
        assert result.count == closed.entries == 6  # open, 3 decisions, complete, close
        assert [e["kind"] for e in entries] == [
            "open", "decision", "complete", "decision", "decision", "close"]
        ledger = [e for e in map(json.loads, carried) if e["session_id"].startswith("ledger:")]
        assert [e["kind"] for e in ledger] == ["adopt", "open", "close"] and verify_chain(ledger, key).ok
        with pytest.raises(grpc.RpcError) as reused:  # a closed id is never decided on again
            call("4", "résumé.parse", {"body": "Zoë"})
        assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_metrics_listener_and_health(tmp_path: Path) -> None:
    import socket

    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_enclave(EXAMPLES / "minimal", tmp_path, extra_args=["--metrics-listen", f"127.0.0.1:{port}"])
    try:
        with grpc.insecure_channel(proc.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="cmcp.enclave.v1.Enclave")).status == \
                health_pb2.HealthCheckResponse.SERVING
            enclave_pb2_grpc.EnclaveStub(channel).Attest(enclave_pb2.AttestRequest(nonce=os.urandom(16)))
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'cmcp_enclave_attest_requests_total{result="ok"} 1.0' in text
        assert "cmcp_enclave_decision_seconds_bucket" in text
        # nothing secret in logs: no private key material, no permits
        log = proc.stderr_text()
        assert "serving" in log and "v1." not in log and '"d":' not in log
    finally:
        assert proc.stop() == 0
