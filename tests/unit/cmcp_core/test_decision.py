"""``cmcp_core.decision``: signing a decision and the gateway's fail-closed verification."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.crypto import DECISION_CONTEXT, PERMIT_CONTEXT, sign, thumbprint
from cmcp_core.decision import (
    DECISION_VERSION,
    MAX_DECISION_BYTES,
    REQUIRED_FIELDS,
    sign_decision,
    verify_decision,
)
from cmcp_core.digest import jcs
from cmcp_core.errors import CmcpError, Code

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": DECISION_VERSION, "decision": "deny", "effective": "allow", "advisory_deny": True,
        "mode": "advisory", "reason_code": "POLICY_DENY", "policy_ids": ["p1"], "errors": [],
        "session_id": "s1", "call_id": "c1", "principal": "agent", "method": "tools/call",
        "tool": "search", "args_digest": "sha256:" + "0" * 64, "audience": "route/ns",
        "bundle_hash": "sha256:" + "1" * 64, "seq": 3, "prev": "sha256:" + "2" * 64,
        "kid": thumbprint(PUB), "ts": 1700000000,
    }
    doc.update(changes)
    return doc


def _refused(body: bytes, sig: bytes, **kw: Any) -> str:
    with pytest.raises(CmcpError) as info:
        verify_decision(body, sig, PUB, **kw)
    assert info.value.code is Code.DECISION_UNVERIFIED
    return str(info.value)


def test_round_trip_with_expected_fields() -> None:
    doc = _doc()
    body, sig = sign_decision(KEY, doc)
    assert body == jcs(doc)
    assert verify_decision(body, sig, PUB, expected={"call_id": "c1", "tool": "search"}) == doc


def test_sign_refuses_an_incomplete_document() -> None:
    doc = _doc()
    del doc["audience"]
    with pytest.raises(ValueError, match="audience"):
        sign_decision(KEY, doc)


def test_a_decision_for_another_call_is_refused() -> None:
    body, sig = sign_decision(KEY, _doc())
    assert "call_id" in _refused(body, sig, expected={"call_id": "c2"})


def test_tampered_or_foreign_signatures_are_refused() -> None:
    body, sig = sign_decision(KEY, _doc())
    _refused(body.replace(b'"allow"', b'"deny"'), sig)
    with pytest.raises(CmcpError):
        verify_decision(body, sig, Ed25519PrivateKey.generate().public_key())
    permit_sig = sign(KEY, PERMIT_CONTEXT + body)  # right key, wrong purpose
    _refused(body, permit_sig)


def _signed_raw(body: bytes) -> tuple[bytes, bytes]:
    return body, sign(KEY, DECISION_CONTEXT + body)


@pytest.mark.parametrize("body", [
    b"not json", b"[1]", orjson.dumps(_doc(), option=orjson.OPT_INDENT_2),  # not canonical
    jcs({k: v for k, v in _doc().items() if k != "seq"}), jcs(_doc(v=2)),
    jcs(_doc(decision="maybe")), jcs(_doc(effective="permit")),
    jcs(_doc(kid="someone-else")),
])
def test_validly_signed_but_malformed_decisions_are_refused(body: bytes) -> None:
    _refused(*_signed_raw(body))


def test_oversized_decision_is_refused_before_verifying() -> None:
    body, sig = _signed_raw(jcs(_doc(reason_code="x" * MAX_DECISION_BYTES)))
    assert "too large" in _refused(body, sig)


def test_required_fields_match_the_documented_list() -> None:
    assert set(_doc()) == REQUIRED_FIELDS
