"""POLICY-001..005: the measured catalog and Cedar decide, denies are coded and never forwarded,
session state comes from the measured catalog, advisory mode forwards and says so, and an
invalid bundle never serves."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cmcp_conformance import bundle as conformance_bundle
from cmcp_conformance.agent import CallOutcome, agent
from cmcp_conformance.cluster import probe_bundle
from cmcp_conformance.local import render_initdata
from cmcp_conformance.suite.conftest import Attested, attest, need_advisory, need_powers
from cmcp_conformance.target import TargetDeployment
from cmcp_core.audit import verify_chain
from cmcp_core.decision import verify_decision

DENY_RPC = -32000


@pytest.mark.conformance("POLICY-001")
def test_uncatalogued_tool_is_refused_with_its_code(target: TargetDeployment) -> None:
    async def scenario() -> None:
        async with agent(target) as a:
            out = await a.call(target.profile.uncatalogued_tool, {"text": "x"})
            assert out.code == DENY_RPC and out.error_code == "TOOL_NOT_IN_CATALOG", out.describe()

    asyncio.run(scenario())


@pytest.mark.conformance("POLICY-001")
def test_uncatalogued_tool_never_runs(target: TargetDeployment, counter: Callable[[], int]) -> None:
    async def scenario() -> None:
        async with agent(target) as a:
            before = counter()
            out = await a.call(target.profile.uncatalogued_tool, {"text": "x"})
            assert not out.ok
            assert counter() == before, "the upstream executed a tool outside the measured catalog"
            listed = await a.list_tools()
            assert target.profile.uncatalogued_tool not in listed, "tools/list offers an uncatalogued tool"

    asyncio.run(scenario())


@pytest.mark.conformance("POLICY-002")
def test_cedar_deny_is_coded_signed_and_not_forwarded(
    target: TargetDeployment, attested: Attested, counter: Callable[[], int]
) -> None:
    async def scenario() -> None:
        async with agent(target) as a:
            before = counter()
            out = await a.call(target.profile.denied_tool, {"text": "all"})
            assert out.code == DENY_RPC and out.error_code == "POLICY_DENY", out.describe()
            assert out.data and out.data.get("call_id"), "deny carries no call_id"
            doc, sig = out.signed_decision()
            decision = verify_decision(doc, sig, attested.key, expected={"call_id": out.data["call_id"]})
            assert decision["decision"] == "deny" and decision["effective"] == "deny"
            assert counter() == before, "a call Cedar denied reached the upstream"
            # the contrast: an allowed call in the same session is forwarded, structure intact
            ok = await a.call(target.profile.allowed_tool, {"text": "héllo"})
            assert ok.ok, f"allowed call failed: {ok.describe()}"
            assert ok.result and ok.result.get("structuredContent") == {"text": "héllo", "length": 5}, (
                f"structured result lost: {ok.describe()}"
            )
            assert ok.result.get("isError", False) is False
            assert counter() == before + 1, "the allowed call did not run exactly once"

    asyncio.run(scenario())


@pytest.mark.conformance("POLICY-003")
def test_phi_taint_blocks_a_later_external_send(target: TargetDeployment) -> None:
    prof = target.profile

    async def scenario() -> None:
        async with agent(target) as fresh:
            out = await fresh.call(prof.external_tool, {"to": "a@example.org", "body": "hi"})
            assert out.ok, f"external send in a clean session was refused: {out.describe()}"
        async with agent(target) as tainted:
            read = await tainted.call(prof.phi_tool, {"patient_id": "p-1"})
            assert read.ok, f"PHI read refused: {read.describe()}"
            send = await tainted.call(prof.external_tool, {"to": "a@example.org", "body": "hi"})
            assert send.code == DENY_RPC and send.error_code == "POLICY_DENY", (
                f"external send after a PHI read was not denied: {send.describe()}"
            )

    asyncio.run(scenario())


def _advisory_call(
    target: TargetDeployment, url: str, counter: Callable[[], int] | None
) -> tuple[str, CallOutcome]:
    async def scenario() -> tuple[str, CallOutcome]:
        async with agent(target, url) as a:
            before = counter() if counter else 0
            out = await a.call(target.profile.denied_tool, {"text": "x"})
            if counter:
                assert counter() == before + (1 if out.ok else 0), (
                    "forwarding and the upstream count disagree"
                )
            return a.session_id, out

    return asyncio.run(scenario())


@pytest.mark.conformance("POLICY-004")
def test_advisory_mode_forwards_and_marks_the_result(
    target: TargetDeployment, counter: Callable[[], int]
) -> None:
    _, out = _advisory_call(target, need_advisory(target), counter)
    assert out.ok, f"advisory route refused a policy deny: {out.describe()}"
    meta = ((out.result or {}).get("_meta") or {}).get("cmcp") or {}
    assert meta.get("would_have_denied") is True, f"forwarded call not marked: {out.describe()}"


@pytest.mark.conformance("POLICY-004")
def test_advisory_mode_records_advisory_deny_in_the_chain(target: TargetDeployment) -> None:
    url = need_advisory(target)
    if not target.advisory_enclave_address:
        pytest.skip("no gRPC access to the advisory enclave (pass --advisory-enclave)")
    advisory = attest(target, target.advisory_enclave_address)
    assert advisory.response.enforcement_mode == "advisory", (
        "the advisory route's enclave did not measure advisory"
    )
    session_id, out = _advisory_call(target, url, None)
    assert out.ok, out.describe()
    entries = target.export_audit(session_id, address=target.advisory_enclave_address)
    assert verify_chain(entries, advisory.key).ok, "the advisory enclave's audit chain does not verify"
    decisions = [
        e["data"]
        for e in entries
        if e["kind"] == "decision" and e["data"]["tool"] == target.profile.denied_tool
    ]
    assert decisions, "no decision entry for the advisory call"
    assert decisions[-1]["advisory_deny"] is True and decisions[-1]["mode"] == "advisory", decisions[-1]
    assert decisions[-1]["decision"] == "deny" and decisions[-1]["effective"] == "allow"


def _break_policy(bundle_dir: Path) -> Path:
    """A copy whose policy references an attribute the schema does not define."""
    copy = Path(tempfile.mkdtemp(prefix="cmcp-invalid-bundle-"))
    shutil.copytree(bundle_dir, copy, dirs_exist_ok=True)
    (copy / "policies" / "broken.cedar").write_text(
        BROKEN_POLICY,
        encoding="utf-8",
    )
    return copy


@pytest.mark.conformance("POLICY-005")
def test_invalid_bundle_never_serves(target: TargetDeployment) -> None:
    powers = need_powers(target, "launch an enclave on a chosen bundle")
    assert target.bundle_dir is not None
    good = powers.launch_enclave(
        target.bundle_dir, render_initdata(target.bundle_dir, route="conformance/probe")
    )
    assert good.served, f"control: the valid bundle did not serve: {good.output[-800:]}"
    broken = _break_policy(target.bundle_dir)
    try:
        # initdata names the broken bundle's own hash: only validation stands in the way
        result = powers.launch_enclave(broken, render_initdata(broken, route="conformance/probe"))
    finally:
        shutil.rmtree(broken, ignore_errors=True)
    assert not result.served, "an enclave served a bundle whose policy fails schema validation"
    assert "BUNDLE_INVALID" in result.output, f"refusal does not name BUNDLE_INVALID: {result.output[-800:]}"


BROKEN_POLICY = (
    '@id("broken")\nforbid (principal, action == cMCP::Action::"call_tool", resource)\n'
    'when { resource.no_such_attribute == "x" };\n'
)


@pytest.mark.conformance("POLICY-005")
def test_cluster_refuses_an_invalid_policy_bundle(target: TargetDeployment) -> None:
    """On a cluster: the admission webhook rejects the bundle naming the file, or the operator marks
    it Valid=False; either way it can never be measured into an enclave. The valid bundle is the control."""
    if target.cluster is None:
        pytest.skip("needs cluster access (--kubeconfig and --route)")

    tag = uuid.uuid4().hex[:8]
    files = conformance_bundle.files(target.profile)
    good = probe_bundle(target.cluster, f"conformance-valid-{tag}", files)
    assert not good.rejected and good.valid == "True", (
        f"control: the conformance bundle was not accepted: {good}"
    )
    broken = probe_bundle(
        target.cluster, f"conformance-invalid-{tag}", {**files, "policies/broken.cedar": BROKEN_POLICY}
    )
    if broken.rejected:
        assert "broken.cedar" in broken.message, (
            f"the rejection does not name the file: {broken.message[:300]}"
        )
    else:
        assert broken.valid == "False", (
            f"an invalid PolicyBundle was accepted and not marked invalid: {broken}"
        )
