"""The suite's view of a deployment: endpoints, the powers it grants, and the auditor's enclave access.

The enclave calls go over real gRPC to a real ``cmcp-enclave`` process (the shared ``enclave``
fixture, simulated TEE); the upstream counter is read from the dev kit's real upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_conformance.target import Profile, TargetDeployment
from cmcp_core.audit_store import AuditStore, open_audit_store, rows_of
from cmcp_core.digest import json_digest
from cmcp_core.gateway_identity import initdata_value
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify import appraise_response
from cmcp_devkit.enclave import NO_TRAIL, EnclaveProcess, render_initdata, start_enclave
from cmcp_devkit.release import dev_appraisal
from cmcp_devkit.upstream import run_upstream
from tests.helpers.gateway_stack import AUDIENCE
from tests.paths import EXAMPLES


def _target(**fields: object) -> TargetDeployment:
    return TargetDeployment(name="t", mcp_url="http://127.0.0.1:9/mcp/x", **fields)  # type: ignore[arg-type]


def test_auth_headers_only_with_a_token() -> None:
    assert _target().auth_headers() == {}
    assert _target(token="s3cret").auth_headers() == {"Authorization": "Bearer s3cret"}


def test_describe_lists_the_endpoints_it_has() -> None:
    assert _target().describe() == "t: gateway=http://127.0.0.1:9/mcp/x"
    full = _target(enclave_address="127.0.0.1:5", upstream_url="http://127.0.0.1:6/mcp")
    assert full.describe() == "t: gateway=http://127.0.0.1:9/mcp/x, enclave=127.0.0.1:5, upstream=http://127.0.0.1:6/mcp"


def test_a_bare_target_grants_no_powers() -> None:
    target = _target()
    assert target.powers is None and target.outage is None and target.cluster is None
    assert target.allow_simulated is False and target.notes == []
    assert target.upstream_calls() is None, "no counter URL: executions are unobservable, not zero"


def test_profile_names_are_distinct_and_one_is_not_ascii() -> None:
    p = Profile()
    names = [p.allowed_tool, p.denied_tool, p.uncatalogued_tool, p.phi_tool, p.external_tool,
             p.non_ascii_tool]
    assert len(set(names)) == len(names)
    assert not p.non_ascii_tool.isascii() and all(n.isascii() for n in names if n != p.non_ascii_tool)
    assert _target().profile == p and _target().profile is not _target().profile


@pytest.mark.parametrize("call", ["attest", "close_session"])
def test_enclave_calls_without_an_address_refuse(call: str) -> None:
    argument: object = os.urandom(32) if call == "attest" else "s"
    with pytest.raises(RuntimeError, match="target offers no enclave access"):
        getattr(_target(), call)(argument)


def test_an_export_without_an_audit_store_refuses() -> None:
    with pytest.raises(RuntimeError, match="target offers no audit store"):
        _target(enclave_address="127.0.0.1:9").export_audit("s")


async def test_upstream_calls_reads_the_real_counter() -> None:
    async with run_upstream(profile="test") as up:
        base = up.url.rsplit("/mcp", 1)[0]
        target = _target(upstream_counter_url=f"{base}/calls")
        assert await asyncio.to_thread(target.upstream_calls) == 0
        up.counter.update({"echo": 2, "add": 1})
        assert await asyncio.to_thread(target.upstream_calls) == 3
        broken = _target(upstream_counter_url=f"{base}/not-the-counter")
        with pytest.raises(httpx.HTTPStatusError):
            await asyncio.to_thread(broken.upstream_calls)


def _open(address: str, store: AuditStore) -> str:
    """A session opened as the gateway opens one: its entries go to the audit store."""
    with grpc.insecure_channel(address) as channel:
        opened = enclave_pb2_grpc.EnclaveStub(channel).OpenSession(
            enclave_pb2.OpenSessionRequest(principal="agent", trail=NO_TRAIL), timeout=10.0)
    store.append(rows_of(list(opened.audit_entries)))
    return str(opened.session_id)


def _decide(address: str, session: str, tool: str, args: dict[str, object], store: AuditStore) -> None:
    with grpc.insecure_channel(address) as channel:
        resp = enclave_pb2_grpc.EnclaveStub(channel).Decide(enclave_pb2.DecideRequest(
            session_id=session, call_id=f"c-{uuid.uuid4().hex}", principal="agent", method="tools/call",
            tool=tool, arguments_json=json.dumps(args).encode(), arguments_digest=json_digest(args),
            audience=AUDIENCE), timeout=10.0)
    store.append(rows_of(list(resp.audit_entries)))


def test_attest_answers_for_this_nonce(enclave: EnclaveProcess) -> None:
    target = _target(enclave_address=enclave.address)
    nonce = os.urandom(32)
    response = target.attest(nonce)
    policy = dev_appraisal()  # the signed dev release the dev kit's enclaves are
    verdict = appraise_response(response, nonce, policy, expected_bundle_hash=enclave.bundle_hash)
    assert verdict.passed, verdict.message
    assert not appraise_response(response, os.urandom(32), policy).passed, "evidence for another nonce"


def test_audit_export_and_trust_record_of_a_session(enclave: EnclaveProcess, tmp_path: Path) -> None:
    spec = f"sqlite:{tmp_path / 'audit.sqlite'}"
    target = _target(enclave_address=enclave.address, audit_store=spec)
    store = open_audit_store(spec)
    session = _open(enclave.address, store)
    _decide(enclave.address, session, "web.search", {"query": "q"}, store)
    _decide(enclave.address, session, "shell.exec", {}, store)
    store.close()
    record = target.close_session(session)  # the close entries come to the target: it stores them
    entries = target.export_audit(session)
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "open" and kinds[-1] == "close"
    assert [e["data"]["tool"] for e in entries if e["kind"] == "decision"] == ["web.search", "shell.exec"]
    assert all(e["session_id"] == session for e in entries)
    assert record["tool_transcript"]["hash"] == entries[-1]["hash"]
    assert record["policy"]["bundle_hash"] == enclave.bundle_hash
    assert target.close_session(session) == record, "closing again returns the stored record"


def test_an_explicit_address_overrides_the_targets(enclave: EnclaveProcess) -> None:
    target = _target(enclave_address="127.0.0.1:9")  # nothing listens there
    response = target.attest(os.urandom(32), address=enclave.address)
    assert response.bundle_hash == enclave.bundle_hash
    with pytest.raises(grpc.RpcError):
        target.attest(os.urandom(32))


def test_with_the_gateway_key_the_tester_may_do_what_the_gateway_does(tmp_path: Path) -> None:
    """An enclave pinning a gateway key closes a session for a tester holding that key, and
    refuses the same tester without it (the tester plays the gateway, or a compromised one)."""
    key = Ed25519PrivateKey.generate()
    with start_enclave(EXAMPLES / "realistic", tmp_path, audience=AUDIENCE,
                       initdata_bytes=render_initdata(EXAMPLES / "realistic", audience=AUDIENCE,
                                                      gateway_keys=[initdata_value(key)])) as enclave:
        keyless = _target(enclave_address=enclave.address)
        keyed = _target(enclave_address=enclave.address, gateway_key=key)
        with keyless.enclave_channel() as channel, pytest.raises(grpc.RpcError) as refused:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="a", trail=NO_TRAIL))
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        with keyed.enclave_channel() as channel:
            stub = enclave_pb2_grpc.EnclaveStub(channel)
            opened = stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="a", trail=NO_TRAIL))
        record = keyed.close_session(opened.session_id)
        assert record["eat_profile"]
