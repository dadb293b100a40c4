"""POLICY-TEE-004 at the upstream: every way around the enclave is refused before the tool runs.

Real parts: an ``mcp`` SDK upstream wrapped in the guard middleware, a real enclave process on
the simulated TEE (examples/realistic), permits obtained from it over real gRPC. The guard
attests the enclave itself; the attacker is "the host": it can call the enclave and the
upstream directly, but holds no attested key.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import permit as permits
from cmcp_core.crypto import public_jwk
from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2_grpc
from cmcp_core.verify import appraise
from cmcp_devkit.enclave import EnclaveProcess, render_initdata, start_enclave
from cmcp_devkit.release import dev_appraisal, dev_release
from cmcp_devkit.upstream import RunningUpstream, run_upstream
from cmcp_enclave.simulated import SimulatedGuest, launcher_env
from cmcp_guard.main import build_guard
from tests.helpers.gateway_stack import AUDIENCE, MODERN_META, get_permit, make_guard, pins
from tests.paths import ROOT

ALLOWED = {"amount": 100, "currency": "EUR", "to": "acct-1"}
TOOL = "payments.transfer"


@pytest.fixture
async def upstream(enclave: EnclaveProcess) -> AsyncIterator[RunningUpstream]:
    guard = make_guard([enclave], AUDIENCE)
    async with run_upstream(guard) as up:
        yield up


async def call(
    url: str, tool: str, arguments: dict[str, Any], permit: str | None = None, raw: bytes | None = None
) -> httpx.Response:
    """One stateless (2026-07-28) tools/call straight to the upstream, bypassing the gateway."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    if permit is not None:
        headers[permits.PERMIT_HEADER] = permit
    body = (
        raw
        if raw is not None
        else json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments, "_meta": MODERN_META},
            }
        ).encode()
    )
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=headers)


def refused(resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 403 or code.startswith("MCP_"), resp.text
    assert resp.json()["error"]["data"]["error_code"] == code, resp.text


async def test_valid_permit_runs_the_tool_once(upstream: RunningUpstream, enclave: EnclaveProcess) -> None:
    resp = await call(upstream.url, TOOL, ALLOWED, await get_permit(enclave.address))
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["structuredContent"]["status"] == "sent"
    assert upstream.counter.total() == 1


async def test_no_permit(upstream: RunningUpstream) -> None:
    refused(await call(upstream.url, TOOL, ALLOWED), "PERMIT_MISSING")
    assert upstream.counter.total() == 0


async def test_garbage_permit(upstream: RunningUpstream) -> None:
    for token in ("v1.abc", "v2.a.b", "v1.!!!.???", "x" * 5000):
        refused(await call(upstream.url, TOOL, ALLOWED, token), "PERMIT_MALFORMED")
    assert upstream.counter.total() == 0


async def test_forged_permit_own_key(upstream: RunningUpstream) -> None:
    """A perfectly bound permit signed by a key nobody attested."""
    token = permits.mint(
        Ed25519PrivateKey.generate(),
        session_id="s",
        call_id="c",
        tool=TOOL,
        args_digest=json_digest(ALLOWED),
        audience=AUDIENCE,
        bundle_hash="sha256:00",
        ttl_seconds=60,
    )
    refused(await call(upstream.url, TOOL, ALLOWED, token), "PERMIT_UNTRUSTED_KEY")
    assert upstream.counter.total() == 0


async def test_tampered_permit_payload(upstream: RunningUpstream, enclave: EnclaveProcess) -> None:
    """Take a real permit and rewrite its argument digest: the signature no longer holds."""
    token = await get_permit(enclave.address)
    permit, _, sig = permits.decode(token)
    evil = {**permit.__dict__, "args": json_digest({**ALLOWED, "amount": 99999})}
    from cmcp_core.digest import b64url, jcs

    forged = f"v1.{b64url(jcs(evil))}.{b64url(sig)}"
    refused(await call(upstream.url, TOOL, {**ALLOWED, "amount": 99999}, forged), "PERMIT_BAD_SIGNATURE")
    assert upstream.counter.total() == 0


async def test_replayed_permit(upstream: RunningUpstream, enclave: EnclaveProcess) -> None:
    token = await get_permit(enclave.address)
    assert (await call(upstream.url, TOOL, ALLOWED, token)).status_code == 200
    refused(await call(upstream.url, TOOL, ALLOWED, token), "PERMIT_REPLAYED")
    assert upstream.counter.total() == 1


async def test_permit_for_other_arguments(upstream: RunningUpstream, enclave: EnclaveProcess) -> None:
    token = await get_permit(enclave.address)
    refused(await call(upstream.url, TOOL, {**ALLOWED, "amount": 50_000}, token), "PERMIT_ARGS_MISMATCH")
    # Semantically equal arguments in another key order are the same call (JCS digest).
    reordered = dict(reversed(list(ALLOWED.items())))
    assert (await call(upstream.url, TOOL, reordered, token)).status_code == 200
    assert upstream.counter.total() == 1


async def test_duplicate_keys_cannot_smuggle_arguments(
    upstream: RunningUpstream, enclave: EnclaveProcess
) -> None:
    """A body the guard and the server might read differently: the guard checks what it forwards."""
    token = await get_permit(enclave.address)
    meta = json.dumps(MODERN_META).encode()
    raw = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"payments.transfer","_meta":'
        + meta
        + b',"arguments":{"amount":100,"currency":"EUR","to":"acct-1","amount":50000}}}'
    )
    refused(await call(upstream.url, TOOL, {}, token, raw=raw), "PERMIT_ARGS_MISMATCH")
    assert upstream.counter.total() == 0


async def test_permit_for_other_tool(upstream: RunningUpstream, enclave: EnclaveProcess) -> None:
    token = await get_permit(enclave.address)
    refused(await call(upstream.url, "email.send_external", ALLOWED, token), "PERMIT_TOOL_MISMATCH")
    assert upstream.counter.total() == 0


async def test_permit_for_other_audience(enclave: EnclaveProcess) -> None:
    """Upstream B with its own guard: A's permit is no good there."""
    token = await get_permit(enclave.address)
    # B's guard trusts only enclaves measured for B: this enclave's key is not even trusted ...
    async with run_upstream(make_guard([enclave], "urn:cmcp:other")) as other:
        refused(await call(other.url, TOOL, ALLOWED, token), "PERMIT_UNTRUSTED_KEY")
        assert other.counter.total() == 0
    # ... and with that check off, the permit's own audience binding still refuses it.
    guard = make_guard([enclave], "urn:cmcp:other")
    assert guard.trust is not None
    policy = guard.trust.policy
    guard.trust.policy = replace(policy, expected=replace(policy.expected, audience=None))
    async with run_upstream(guard) as other:
        refused(await call(other.url, TOOL, ALLOWED, token), "PERMIT_AUDIENCE_MISMATCH")
        assert other.counter.total() == 0


async def test_expired_permit(enclave: EnclaveProcess) -> None:
    guard = make_guard([enclave], AUDIENCE)
    guard.clock = lambda: time.time() + 3600  # the permit was minted an hour "ago"
    async with run_upstream(guard) as up:
        refused(await call(up.url, TOOL, ALLOWED, await get_permit(enclave.address)), "PERMIT_EXPIRED")
        assert up.counter.total() == 0


async def test_key_whose_evidence_does_not_verify(enclave: EnclaveProcess) -> None:
    """A test-built enclave answers Attest with the real enclave's evidence but its own key.

    The binding in REPORT_DATA names the real key, so appraisal fails and the impostor's permits,
    correctly bound in every other respect, are refused."""
    impostor = Ed25519PrivateKey.generate()

    class Impostor(enclave_pb2_grpc.EnclaveServicer):  # type: ignore[misc]
        async def Attest(self, request: Any, context: Any) -> Any:
            async with grpc.aio.insecure_channel(enclave.address) as channel:
                real = await enclave_pb2_grpc.EnclaveStub(channel).Attest(request)
            real.public_key_jwk = json.dumps(public_jwk(impostor.public_key()))
            return real

    server = grpc.aio.server()
    enclave_pb2_grpc.add_EnclaveServicer_to_server(Impostor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        guard = make_guard([enclave, f"127.0.0.1:{port}"], AUDIENCE)
        async with run_upstream(guard) as up:
            assert guard.trust is not None
            failure = guard.trust.failures[f"127.0.0.1:{port}"]
            assert failure.code.value.startswith("BINDING_"), failure
            token = permits.mint(
                impostor,
                session_id="s",
                call_id="c",
                tool=TOOL,
                args_digest=json_digest(ALLOWED),
                audience=AUDIENCE,
                bundle_hash=enclave.bundle_hash,
                ttl_seconds=60,
            )
            refused(await call(up.url, TOOL, ALLOWED, token), "PERMIT_UNTRUSTED_KEY")
            assert up.counter.total() == 0
    finally:
        await server.stop(0)


async def test_simulated_evidence_needs_explicit_consent(enclave: EnclaveProcess) -> None:
    strict = replace(dev_appraisal(), allow_simulated=False)
    guard = build_guard(AUDIENCE, [enclave.address], appraisal=strict, expected=pins([enclave]))
    async with run_upstream(guard) as up:
        assert guard.trust is not None
        assert guard.trust.failures[enclave.address].code.value == "SIMULATED_NOT_ALLOWED"
        refused(await call(up.url, TOOL, ALLOWED, await get_permit(enclave.address)), "PERMIT_UNTRUSTED_KEY")
        assert up.counter.total() == 0


async def test_unexpected_bundle_is_not_trusted(enclave: EnclaveProcess) -> None:
    guard = make_guard([enclave.address], AUDIENCE, bundle_hashes=["sha256:" + "0" * 64])
    async with run_upstream(guard) as up:
        refused(await call(up.url, TOOL, ALLOWED, await get_permit(enclave.address)), "PERMIT_UNTRUSTED_KEY")
        assert up.counter.total() == 0


async def test_batches_and_garbage_never_reach_a_tool(
    upstream: RunningUpstream, enclave: EnclaveProcess
) -> None:
    token = await get_permit(enclave.address)
    batch = json.dumps(
        [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": TOOL, "arguments": ALLOWED}}]
    ).encode()
    refused(await call(upstream.url, TOOL, {}, token, raw=batch), "MCP_INVALID_REQUEST")
    refused(await call(upstream.url, TOOL, {}, token, raw=b"{not json"), "MCP_PARSE_FAILURE")
    assert upstream.counter.total() == 0


async def test_other_methods_pass_without_permit(upstream: RunningUpstream) -> None:
    raw = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}}
    ).encode()
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            upstream.url,
            content=raw,
            headers={
                "accept": "application/json, text/event-stream",
                "content-type": "application/json",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/list",
            },
        )
    assert resp.status_code == 200 and resp.json()["result"]["tools"], resp.text


async def test_restarted_enclave_key_is_learned_by_reattestation(tmp_path: Path) -> None:
    """An unknown key id triggers one (rate-limited) re-attestation, so a restart is picked up."""
    with start_enclave(ROOT / "examples/realistic", tmp_path / "a", audience=AUDIENCE) as first:
        guard = make_guard([first], AUDIENCE)
        async with run_upstream(guard) as up:
            assert guard.trust is not None
            guard.trust.min_refresh_seconds = 0.0
            first_kid = set(guard.trust.keys())
            guard.trust.endpoints = [first.address]
            with start_enclave(ROOT / "examples/realistic", tmp_path / "b", audience=AUDIENCE) as second:
                guard.trust.endpoints = [second.address]
                resp = await call(up.url, TOOL, ALLOWED, await get_permit(second.address))
                assert resp.status_code == 200, resp.text
                assert set(guard.trust.keys()) != first_kid
            # the first enclave's permits are no longer accepted
            refused(
                await call(up.url, TOOL, ALLOWED, await get_permit(first.address)), "PERMIT_UNTRUSTED_KEY"
            )
            assert up.counter.total() == 1


_ = asyncio


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    """The genuine bundle and initdata on a guest booted with another kernel (RTMR1): the host's
    own software reading the genuine configuration."""
    bundle = ROOT / "examples/realistic"
    data = render_initdata(bundle, audience=AUDIENCE)
    guest = SimulatedGuest(rtmrs=(SimulatedGuest().rtmrs[0], b"\x13" * 48, SimulatedGuest().rtmrs[2]))
    with start_enclave(bundle, tmp_path_factory.mktemp("forged"), initdata_bytes=data,
                       env=launcher_env(data, guest)) as proc:
        yield proc


async def test_a_forged_guests_permit_never_runs_the_tool(
    forged: EnclaveProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guard pinned to the genuine bundle refuses the forged guest's permit: the tool does not
    run. Weakened (no release comparison), the very same permit runs it."""
    guard = make_guard([forged], AUDIENCE)
    async with run_upstream(guard) as up:
        assert guard.trust is not None
        assert guard.trust.failures[forged.address].code.value == "REFERENCE_VALUE_MISMATCH"
        refused(await call(up.url, TOOL, ALLOWED, await get_permit(forged.address)), "PERMIT_UNTRUSTED_KEY")
        assert up.counter.total() == 0
    monkeypatch.setattr(appraise, "match_release", lambda *_args: dev_release())
    weakened = make_guard([forged], AUDIENCE)
    async with run_upstream(weakened) as up:
        resp = await call(up.url, TOOL, ALLOWED, await get_permit(forged.address))
        assert resp.status_code == 200, resp.text
        assert up.counter.total() == 1


@pytest.fixture(scope="module")
def advisory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    with start_enclave(ROOT / "examples/advisory", tmp_path_factory.mktemp("adv"), audience=AUDIENCE) as proc:
        yield proc


SEARCH, QUERY = "web.search", {"query": "q"}


async def advisory_permit(advisory: EnclaveProcess) -> str:
    return await get_permit(advisory.address, tool=SEARCH, arguments=QUERY)


async def test_an_advisory_enclaves_permit_is_refused_by_an_enforce_guard(advisory: EnclaveProcess) -> None:
    """An advisory-mode enclave lets denied calls through with a permit; a guard in front of an
    enforce upstream (the default) does not trust its key, whatever bundle it pins."""
    own_mode = pins([advisory])
    assert own_mode.modes == {"advisory"}  # the test helper pins the enclave's own mode ...
    enforce_only = replace(own_mode, modes=frozenset({"enforce"}))  # ... a deployed guard's default does not
    guard = build_guard(AUDIENCE, [advisory.address], appraisal=dev_appraisal(), expected=enforce_only)
    async with run_upstream(guard) as up:
        assert guard.trust is not None
        assert guard.trust.failures[advisory.address].code.value == "INITDATA_UNEXPECTED"
        refused(await call(up.url, SEARCH, QUERY, await advisory_permit(advisory)), "PERMIT_UNTRUSTED_KEY")
        assert up.counter.total() == 0
    opted_in = make_guard([advisory], AUDIENCE)  # --expected-mode advisory, explicitly
    async with run_upstream(opted_in) as up:
        assert (await call(up.url, SEARCH, QUERY, await advisory_permit(advisory))).status_code == 200
