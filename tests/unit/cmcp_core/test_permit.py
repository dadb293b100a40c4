"""Permit tokens: every binding the guard relies on is checked, and tampering is caught."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import permit
from cmcp_core.crypto import thumbprint
from cmcp_core.digest import b64url, b64url_decode, json_digest
from cmcp_core.errors import CmcpError, Code

KEY = Ed25519PrivateKey.generate()
TRUSTED = {thumbprint(KEY.public_key()): KEY.public_key()}
ARGS = json_digest({"customer_id": "c-42", "note": "héllo"})
NOW = 1_800_000_000.0


def mint(key: Ed25519PrivateKey = KEY, **overrides: object) -> str:
    fields: dict[str, object] = dict(session_id="s1", call_id="c1", tool="crm.lookup", args_digest=ARGS,
                                     audience="http://crm/mcp", bundle_hash="sha256:" + "1" * 64,
                                     ttl_seconds=30, now=NOW)
    fields.update(overrides)
    return permit.mint(key, **fields)  # type: ignore[arg-type]


def check(token: str, **overrides: object) -> permit.Permit:
    fields: dict[str, object] = dict(trusted_keys=TRUSTED, audience="http://crm/mcp", tool="crm.lookup",
                                     args_digest=ARGS, now=NOW + 1)
    fields.update(overrides)
    return permit.verify(token, **fields)  # type: ignore[arg-type]


def expect(code: Code, token: str, **overrides: object) -> None:
    with pytest.raises(CmcpError) as info:
        check(token, **overrides)
    assert info.value.code is code


def test_valid_permit_verifies_and_carries_its_bindings() -> None:
    result = check(mint())
    assert (result.sid, result.cid, result.tool, result.args) == ("s1", "c1", "crm.lookup", ARGS)
    assert result.exp - result.iat == 30
    assert result.kid == thumbprint(KEY.public_key())
    assert len(result.nonce) == 32


def test_two_permits_for_the_same_call_have_distinct_nonces() -> None:
    assert check(mint()).nonce != check(mint()).nonce


def test_binding_mismatches_have_their_own_codes() -> None:
    token = mint()
    expect(Code.PERMIT_AUDIENCE_MISMATCH, token, audience="http://other/mcp")
    expect(Code.PERMIT_TOOL_MISMATCH, token, tool="email.send")
    expect(Code.PERMIT_ARGS_MISMATCH, token, args_digest=json_digest({"customer_id": "c-43"}))
    expect(Code.PERMIT_BUNDLE_MISMATCH, token, allowed_bundles=frozenset({"sha256:" + "2" * 64}))
    expect(Code.PERMIT_EXPIRED, token, now=NOW + 30 + permit.CLOCK_SKEW_SECONDS + 1)
    expect(Code.PERMIT_METHOD_MISMATCH, token, method="prompts/get")


def test_a_permit_names_its_method_and_one_minted_before_methods_were_gated_is_a_tool_call() -> None:
    read = mint(method="resources/read", tool="ehr://patients/p-1")
    assert check(read, method="resources/read", tool="ehr://patients/p-1").method == "resources/read"
    expect(Code.PERMIT_METHOD_MISMATCH, read, tool="ehr://patients/p-1")  # presented as a tools/call
    # A payload without "method" (an enclave before this field) verifies as tools/call only.
    legacy = {"sid": "s1", "cid": "c1", "tool": "crm.lookup", "args": ARGS, "aud": "http://crm/mcp",
              "iat": int(NOW), "exp": int(NOW) + 30, "bh": "sha256:" + "1" * 64, "nonce": "0" * 32,
              "kid": thumbprint(KEY.public_key())}
    from cmcp_core.crypto import PERMIT_CONTEXT, sign
    from cmcp_core.digest import canonical

    body = canonical(legacy)
    token = f"v1.{b64url(body)}.{b64url(sign(KEY, PERMIT_CONTEXT + body))}"
    assert check(token).method == "tools/call"
    expect(Code.PERMIT_METHOD_MISMATCH, token, method="resources/read")


def test_unattested_key_is_refused_even_with_a_valid_signature() -> None:
    rogue = Ed25519PrivateKey.generate()
    expect(Code.PERMIT_UNTRUSTED_KEY, mint(rogue))


def test_signature_by_another_key_under_a_trusted_kid_is_refused() -> None:
    rogue = Ed25519PrivateKey.generate()
    version, body, _sig = mint().split(".")
    forged_sig = b64url(rogue.sign(b"cmcp-permit-v1\x00" + b64url_decode(body)))
    expect(Code.PERMIT_BAD_SIGNATURE, f"{version}.{body}.{forged_sig}")


def test_every_single_character_edit_of_the_payload_is_refused() -> None:
    version, body, sig = mint().split(".")
    for index in range(0, len(body), 7):
        replacement = "A" if body[index] != "A" else "B"
        edited = body[:index] + replacement + body[index + 1:]
        with pytest.raises(CmcpError) as info:
            check(f"{version}.{edited}.{sig}")
        assert info.value.code in (Code.PERMIT_MALFORMED, Code.PERMIT_BAD_SIGNATURE,
                                   Code.PERMIT_UNTRUSTED_KEY)


@pytest.mark.parametrize("token, code", [
    ("", Code.PERMIT_MISSING),
    ("v2.aaa.bbb", Code.PERMIT_MALFORMED),
    ("v1.not-base64!.x", Code.PERMIT_MALFORMED),
    ("v1." + b64url(b"[1,2]") + "." + b64url(b"sig"), Code.PERMIT_MALFORMED),
    ("v1." + b64url(b'{"sid": 1}') + "." + b64url(b"sig"), Code.PERMIT_MALFORMED),
    ("v1." + "A" * 5000 + ".x", Code.PERMIT_MALFORMED),
])
def test_malformed_tokens_get_coded_errors(token: str, code: Code) -> None:
    expect(code, token)
