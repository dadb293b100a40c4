"""POLICY-TEE-001..005 exactly as the catalogue (conformance/README.md) defines them.

Several checks take the position of a compromised host: it can call the enclave's gRPC API
(Decide, to obtain genuine permits), reach the guarded upstream directly, relaunch enclaves and
hold the audit export. What it must not achieve is an executed call the enclave did not allow,
a record naming another bundle, or an undetected audit edit.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_conformance import bundle as conformance_bundle
from cmcp_conformance.agent import CallOutcome, DirectUpstream, agent
from cmcp_conformance.local import render_initdata
from cmcp_conformance.suite.conftest import Attested, attest, need_outage, need_powers, need_upstream
from cmcp_conformance.suite.sessions import FAIL_CLOSED, run_session, standard_calls, wait_until_serving
from cmcp_conformance.target import TargetDeployment
from cmcp_core import initdata as initdata_mod
from cmcp_core import permit as permits
from cmcp_core.audit import entry_hash, verify_chain
from cmcp_core.bundle import bundle_from_files, load_bundle, read_bundle_files
from cmcp_core.decision import verify_decision
from cmcp_core.digest import b64url, b64url_decode, json_digest
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.validation import validate_bundle

HOST_PRINCIPAL = "conformance-host"

# --------------------------------------------------------------------------------------------
# helpers: the host's view
# --------------------------------------------------------------------------------------------


def host_session(target: TargetDeployment) -> str:
    """A session opened at the enclave directly, as a gateway (or a compromised host) would: the
    enclave mints its id."""
    assert target.enclave_address
    with target.enclave_channel() as channel:
        opened = enclave_pb2_grpc.EnclaveStub(channel).OpenSession(enclave_pb2.OpenSessionRequest(
            principal=HOST_PRINCIPAL, trail=target.principal_trail(HOST_PRINCIPAL)), timeout=10)
    target.keep_trail(opened.audit_entries)
    return str(opened.session_id)


def host_decide(
    target: TargetDeployment,
    tool: str,
    arguments: dict[str, Any],
    *,
    audience: str,
    session_id: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Ask the enclave directly, as a compromised gateway could: ``(decision document, permit)``."""
    assert target.enclave_address
    raw = json.dumps(arguments).encode()
    session_id = session_id or host_session(target)
    with target.enclave_channel() as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        resp = stub.Decide(
            enclave_pb2.DecideRequest(
                session_id=session_id,
                call_id=uuid.uuid4().hex,
                principal=HOST_PRINCIPAL,
                method="tools/call",
                tool=tool,
                arguments_json=raw,
                arguments_digest=json_digest(arguments),
                audience=audience,
            ),
            timeout=10,
        )
    target.keep_trail(resp.audit_entries)
    return json.loads(resp.decision_json), resp.permit


def _tamper(token: str, **changes: Any) -> str:
    """Same signature, edited payload: what a host would try to stretch a genuine permit."""
    prefix, body, sig = token.split(".")
    doc = json.loads(b64url_decode(body))
    doc.update(changes)
    return f"{prefix}.{b64url(json.dumps(doc, separators=(',', ':')).encode())}.{sig}"


def _expect_rejected(out: CallOutcome, codes: tuple[str, ...], what: str) -> None:
    assert not out.ok, f"{what}: the upstream executed the call ({out.describe()})"
    assert out.error_code in codes, f"{what}: expected {codes}, got {out.describe()}"


# --------------------------------------------------------------------------------------------
# POLICY-TEE-001  Cedar runs in the enclave
# --------------------------------------------------------------------------------------------


@pytest.mark.conformance("POLICY-TEE-001")
def test_every_deny_is_an_enclave_signed_decision_for_that_call(
    target: TargetDeployment, attested: Attested
) -> None:
    """A gateway holding policy of its own could deny, but not with the enclave's signature."""
    prof = target.profile

    async def scenario() -> list[tuple[CallOutcome, str, str]]:
        async with agent(target) as a:
            outs = []
            for tool in (prof.denied_tool, prof.uncatalogued_tool):
                outs.append((await a.call(tool, {"text": "x"}), tool, a.session_id))
            return outs

    for out, tool, session_id in asyncio.run(scenario()):
        assert not out.ok, f"{tool} was allowed"
        doc, sig = out.signed_decision()
        assert out.data is not None
        decision = verify_decision(
            doc,
            sig,
            attested.key,
            expected={
                "tool": tool,
                "session_id": session_id,
                "call_id": out.data.get("call_id"),
                "args_digest": json_digest({"text": "x"}),
            },
        )
        assert decision["effective"] == "deny"


@pytest.mark.conformance("POLICY-TEE-001")
def test_enclave_unreachable_every_call_fails_closed(
    target: TargetDeployment, counter: Callable[[], int]
) -> None:
    powers = need_outage(target)
    prof = target.profile
    before = counter()
    powers.stop_enclave()
    try:

        async def scenario() -> list[CallOutcome]:
            async with agent(target) as a:
                return [
                    await a.call(tool, args)
                    for tool, args in (
                        (prof.allowed_tool, {"text": "x"}),
                        (prof.denied_tool, {"text": "x"}),
                        (prof.uncatalogued_tool, {"text": "x"}),
                        (prof.phi_tool, {"patient_id": "p"}),
                    )
                ]

        try:
            outcomes = asyncio.run(scenario())
        except Exception as exc:  # refusing the session itself is also closed, if it says why
            outcomes = []
            assert any(code in repr(exc) for code in FAIL_CLOSED), (
                f"enclave down: session failed with {exc!r}"
            )
        for out in outcomes:
            assert not out.ok and out.error_code in FAIL_CLOSED, f"enclave down: {out.describe()}"
        assert counter() == before, "with no enclave, the gateway still got a call executed"
    finally:
        powers.start_enclave()
    wait_until_serving(target)


@pytest.mark.conformance("POLICY-TEE-001")
def test_unattested_signer_cannot_authorise(
    target: TargetDeployment, attested: Attested, counter: Callable[[], int]
) -> None:
    """Whatever a gateway-side key signs, the guard refuses: only attested enclave keys authorise."""
    url, audience = need_upstream(target)
    rogue = Ed25519PrivateKey.generate()
    args = {"text": "rogue"}
    token = permits.mint(
        rogue,
        session_id="s",
        call_id="c",
        tool=target.profile.allowed_tool,
        args_digest=json_digest(args),
        audience=audience,
        bundle_hash=attested.response.bundle_hash,
        ttl_seconds=60,
    )
    before = counter()
    _expect_rejected(
        DirectUpstream(url).call(target.profile.allowed_tool, args, token),
        ("PERMIT_UNTRUSTED_KEY",),
        "permit from an unattested key",
    )
    assert counter() == before


# --------------------------------------------------------------------------------------------
# POLICY-TEE-002  the bundle is measured
# --------------------------------------------------------------------------------------------


@pytest.mark.conformance("POLICY-TEE-002")
def test_measured_field_is_the_digest_of_initdata_naming_the_bundle(
    target: TargetDeployment, attested: Attested
) -> None:
    resp = attested.response
    raw_initdata = bytes(resp.initdata)
    entry = initdata_mod.parse(raw_initdata).cmcp
    assert entry.bundle_hash == resp.bundle_hash, "initdata names another bundle than the enclave serves"
    if target.expected_bundle_hash:
        assert entry.bundle_hash == target.expected_bundle_hash
    if resp.platform in ("tdx", "simulated"):
        measured = parse_quote(bytes(resp.evidence)).body.mrconfigid
        assert measured == initdata_mod.tdx_mrconfigid(raw_initdata), (
            "MRCONFIGID is not the digest of the initdata the enclave presents"
        )
    assert "initdata-measurement" in attested.verdict.checks


@pytest.mark.conformance("POLICY-TEE-002")
def test_one_byte_policy_change_changes_the_hash(target: TargetDeployment) -> None:
    files = (
        conformance_bundle.files(target.profile)
        if target.bundle_dir is None
        else {p: t for p, t in _read(target.bundle_dir).items()}
    )
    original = bundle_from_files(files).bundle_hash
    if target.expected_bundle_hash:
        assert original == target.expected_bundle_hash, (
            "the route does not serve the conformance bundle; POLICY-TEE-002 cannot be judged"
        )
    policies = [p for p in files if p.endswith(".cedar")]
    assert policies
    for path in policies:
        for position in (0, len(files[path]) // 2, len(files[path]) - 2):
            text = files[path]
            changed = text[:position] + chr(ord(text[position]) ^ 1) + text[position + 1 :]
            assert bundle_from_files({**files, path: changed}).bundle_hash != original, (
                f"changing one byte of {path} at {position} left bundle_hash unchanged"
            )


def _harmless_offset(text: bytes) -> int:
    """A byte whose change keeps the policy valid: a comment letter, else inside an ``@id`` string,
    so that only the measurement (not validation) can stand in the way of serving it."""
    for marker in (b"// ", b'@id("'):
        at = text.find(marker)
        if at >= 0 and at + len(marker) < len(text) and chr(text[at + len(marker)]).isalpha():
            return at + len(marker)
    raise AssertionError("no comment or @id annotation to change harmlessly in the policy file")


def _read(root: Path) -> dict[str, str]:

    return read_bundle_files(root)


@pytest.mark.conformance("POLICY-TEE-002")
def test_enclave_refuses_a_changed_bundle_under_the_old_initdata(
    target: TargetDeployment, attested: Attested
) -> None:
    powers = need_powers(target, "launch an enclave on a chosen bundle")
    assert target.bundle_dir is not None
    old_initdata = bytes(attested.response.initdata)
    control = powers.launch_enclave(target.bundle_dir, old_initdata)
    assert control.served, (
        f"control: the measured bundle did not serve under its initdata: {control.output[-800:]}"
    )
    work = Path(tempfile.mkdtemp(prefix="cmcp-tampered-"))
    try:
        shutil.copytree(target.bundle_dir, work, dirs_exist_ok=True)
        victim = sorted(work.rglob("*.cedar"))[0]
        data = bytearray(victim.read_bytes())
        data[_harmless_offset(bytes(data))] ^= 0x01  # one byte, and the bundle stays valid Cedar
        victim.write_bytes(bytes(data))
        assert validate_bundle(load_bundle(work)) == [], "the one-byte change made the bundle invalid"
        assert load_bundle(work).bundle_hash != attested.response.bundle_hash
        result = powers.launch_enclave(work, old_initdata)
        assert not result.served, "an enclave served a bundle that is not the one its initdata measures"
        assert "BUNDLE_HASH_MISMATCH" in result.output, (
            f"refusal does not name the mismatch: {result.output[-800:]}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.conformance("POLICY-TEE-002")
def test_enclave_refuses_initdata_other_than_the_measured(
    target: TargetDeployment, attested: Attested
) -> None:
    """A host that swaps the initdata file after the hardware measured it gets no enclave."""
    powers = need_powers(target, "launch an enclave under a chosen measurement")
    assert target.bundle_dir is not None
    measured = bytes(attested.response.initdata)
    swapped = render_initdata(target.bundle_dir, route="conformance/swapped")  # names the same bundle
    assert swapped != measured
    result = powers.launch_enclave(target.bundle_dir, swapped, measured=measured)
    assert not result.served, "an enclave served under initdata the hardware did not measure"
    assert "INITDATA_MISMATCH" in result.output, f"refusal does not name the mismatch: {result.output[-800:]}"


# --------------------------------------------------------------------------------------------
# POLICY-TEE-003  records name the measured bundle for the enclave's life
# --------------------------------------------------------------------------------------------


@pytest.mark.conformance("POLICY-TEE-003")
def test_every_record_names_the_measured_bundle(target: TargetDeployment, attested: Attested) -> None:
    measured = attested.response.bundle_hash
    assert attested.verdict.bundle_hash == measured
    records = [run_session(target, standard_calls(target, f"s{i}")).record for i in range(2)]
    # a host-driven session too: the record must not depend on who drove the session
    session_id = host_session(target)
    host_decide(
        target,
        target.profile.allowed_tool,
        {"text": "h"},
        session_id=session_id,
        audience=target.upstream_audience or "",
    )
    records.append(target.close_session(session_id))
    later = attest(target)
    assert later.key == attested.key or later.kid == attested.kid, "the enclave's key changed mid-life"
    assert later.response.bundle_hash == measured, "the enclave now attests another bundle"
    for record in records:
        assert record["policy"]["bundle_hash"] == measured, (
            f"record claims {record['policy']['bundle_hash']}, evidence binds {measured}"
        )
        assert record["cnf"]["jwk"]["x"] == json.loads(attested.response.public_key_jwk)["x"]


# --------------------------------------------------------------------------------------------
# POLICY-TEE-004  enforce cannot be bypassed by the host
# --------------------------------------------------------------------------------------------


@pytest.fixture
def host(target: TargetDeployment, attested: Attested) -> tuple[DirectUpstream, str]:
    url, audience = need_upstream(target)
    if attested.response.enforcement_mode != "enforce":
        pytest.skip("the target's route is not in enforce mode")
    return DirectUpstream(url), audience


@pytest.mark.conformance("POLICY-TEE-004")
def test_call_without_permit_or_for_a_denied_call_never_runs(
    target: TargetDeployment, host: tuple[DirectUpstream, str], counter: Callable[[], int]
) -> None:
    upstream, audience = host
    prof = target.profile
    before = counter()
    _expect_rejected(upstream.call(prof.allowed_tool, {"text": "x"}, None), ("PERMIT_MISSING",), "no permit")
    decision, token = host_decide(target, prof.denied_tool, {"text": "x"}, audience=audience)
    assert decision["effective"] == "deny" and not token, "the enclave issued a permit for a denied call"
    _expect_rejected(
        upstream.call(prof.denied_tool, {"text": "x"}, token or None),
        ("PERMIT_MISSING",),
        "denied call forwarded anyway",
    )
    _, allowed = host_decide(target, prof.allowed_tool, {"text": "x"}, audience=audience)
    _expect_rejected(
        upstream.call(prof.denied_tool, {"text": "x"}, allowed),
        ("PERMIT_TOOL_MISMATCH",),
        "denied tool run under another call's permit",
    )
    assert counter() == before, "a call the enclave did not allow executed"


@pytest.mark.conformance("POLICY-TEE-004")
def test_forged_and_stretched_permits_are_rejected(
    target: TargetDeployment, host: tuple[DirectUpstream, str], counter: Callable[[], int]
) -> None:
    upstream, audience = host
    tool, args = target.profile.allowed_tool, {"text": "genuine"}
    before = counter()
    _, token = host_decide(target, tool, args, audience=audience)
    assert token, "the enclave issued no permit for an allowed call"
    other_args = {"text": "something else"}
    _expect_rejected(
        upstream.call(tool, other_args, token), ("PERMIT_ARGS_MISMATCH",), "permit for other arguments"
    )
    forged = _tamper(token, args=json_digest(other_args))
    _expect_rejected(upstream.call(tool, other_args, forged), ("PERMIT_BAD_SIGNATURE",), "forged permit")
    stretched = _tamper(token, exp=int(time.time()) + 3600)
    _expect_rejected(
        upstream.call(tool, args, stretched), ("PERMIT_BAD_SIGNATURE",), "permit with edited expiry"
    )
    rogue = Ed25519PrivateKey.generate()
    unattested = permits.mint(
        rogue,
        session_id="s",
        call_id="c",
        tool=tool,
        args_digest=json_digest(args),
        audience=audience,
        bundle_hash=target.expected_bundle_hash or "",
        ttl_seconds=60,
    )
    _expect_rejected(upstream.call(tool, args, unattested), ("PERMIT_UNTRUSTED_KEY",), "unattested key")
    assert counter() == before, "a forged or mismatched permit made a tool run"
    # the control: the genuine permit, used as issued, runs exactly once ...
    ok = upstream.call(tool, args, token)
    assert ok.ok, f"control: the genuine permit was refused: {ok.describe()}"
    assert counter() == before + 1
    # ... and never twice
    _expect_rejected(upstream.call(tool, args, token), ("PERMIT_REPLAYED",), "replayed permit")
    assert counter() == before + 1, "a replayed permit made the tool run again"


@pytest.mark.conformance("POLICY-TEE-004")
def test_permit_for_another_upstream_is_rejected(
    target: TargetDeployment, host: tuple[DirectUpstream, str], counter: Callable[[], int]
) -> None:
    upstream, audience = host
    tool, args = target.profile.allowed_tool, {"text": "elsewhere"}
    before = counter()
    decision, token = host_decide(target, tool, args, audience="https://another-upstream.example/mcp")
    if token:  # an enclave that mints for any audience: the guard must still refuse
        _expect_rejected(
            upstream.call(tool, args, token), ("PERMIT_AUDIENCE_MISMATCH",), "other-audience permit"
        )
    else:
        assert decision["effective"] == "deny"
    _, genuine = host_decide(target, tool, args, audience=audience)
    retargeted = _tamper(genuine, aud="https://another-upstream.example/mcp")
    _expect_rejected(
        upstream.call(tool, args, retargeted),
        ("PERMIT_BAD_SIGNATURE", "PERMIT_AUDIENCE_MISMATCH"),
        "permit re-addressed by the host",
    )
    assert counter() == before


@pytest.mark.conformance("POLICY-TEE-004")
def test_expired_permit_is_rejected(
    target: TargetDeployment, host: tuple[DirectUpstream, str], counter: Callable[[], int]
) -> None:
    upstream, audience = host
    tool, args = target.profile.allowed_tool, {"text": "late"}
    _, token = host_decide(target, tool, args, audience=audience)
    payload, _, _ = permits.decode(token)
    wait = payload.exp + permits.CLOCK_SKEW_SECONDS + 1 - time.time()
    if wait > 90:
        pytest.skip(f"permit lifetime is {payload.exp - payload.iat}s; waiting it out would take {wait:.0f}s")
    time.sleep(max(0.0, wait))
    before = counter()
    _expect_rejected(upstream.call(tool, args, token), ("PERMIT_EXPIRED",), "expired permit")
    assert counter() == before


# --------------------------------------------------------------------------------------------
# POLICY-TEE-005  audit integrity
# --------------------------------------------------------------------------------------------


@pytest.mark.conformance("POLICY-TEE-005")
def test_audit_chain_verifies_and_every_tamper_is_detected(
    target: TargetDeployment, attested: Attested
) -> None:
    session = run_session(target, [*standard_calls(target), (target.profile.allowed_tool, {"text": "again"})])
    entries = session.entries
    tip = session.record["tool_transcript"]["hash"]
    result = verify_chain(entries, attested.key, expected_tip=tip)
    assert result.ok, (
        f"the exported chain does not verify with the attested key: {result.code} {result.message}"
    )
    assert len(entries) >= 4

    def rejected(mutated: list[dict[str, Any]], what: str) -> None:
        check = verify_chain(mutated, attested.key, expected_tip=tip)
        assert not check.ok, f"{what} went undetected"

    for index in range(len(entries)):
        rejected([*entries[:index], *entries[index + 1 :]], f"deleting entry {index}")
    rejected([entries[0], entries[2], entries[1], *entries[3:]], "swapping entries 1 and 2")
    rejected(entries[:-1], "cutting off the last entry")

    for index in range(len(entries)):
        edited = copy.deepcopy(entries)
        edited[index]["data"]["tampered"] = True
        rejected(edited, f"editing entry {index}")
        rehashed = copy.deepcopy(edited)
        rehashed[index]["hash"] = entry_hash(rehashed[index])  # a careful host recomputes the hash
        rejected(rehashed, f"editing entry {index} and recomputing its hash")
    for entry in session.decision_entries():
        assert entry["kid"] == attested.kid, "a decision entry is signed by a key the evidence does not bind"
