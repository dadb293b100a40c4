"""The signed decision document the enclave returns for every ``Decide``.

The gateway is untrusted, so it must not interpret anything it cannot verify: it checks the
signature with :func:`verify_decision` against the attested enclave key, then acts on
``effective`` (``allow`` forwards, ``deny`` refuses). ``decision`` is what Cedar said;
in advisory/silent mode a Cedar deny is recorded as ``advisory_deny`` with ``effective``
``allow``. Fields (JCS, signature = Ed25519 over ``DECISION_CONTEXT || decision_json``)::

    v, decision, effective, advisory_deny, mode, reason_code, policy_ids, errors,
    session_id, call_id, principal, method, tool, args_digest, audience, bundle_hash,
    seq, prev, kid, ts

``seq`` / ``prev`` place the decision in the session's audit chain: the audit entry recording
it carries this document and this signature (:func:`cmcp_core.audit.decision_entry`).
"""

from __future__ import annotations

from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cmcp_core.crypto import DECISION_CONTEXT, public_bytes, sign, thumbprint, verify_payload
from cmcp_core.digest import canonical
from cmcp_core.errors import CmcpError, Code

DECISION_VERSION = 1
MAX_DECISION_BYTES = 64 * 1024
REQUIRED_FIELDS = frozenset({
    "v", "decision", "effective", "advisory_deny", "mode", "reason_code", "policy_ids", "errors",
    "session_id", "call_id", "principal", "method", "tool", "args_digest", "audience",
    "bundle_hash", "seq", "prev", "kid", "ts",
})


_KIDS: dict[bytes, str] = {}


def _kid(public_key: Ed25519PublicKey) -> str:
    """Thumbprint, memoised per key: the gateway verifies many decisions from few enclaves."""
    raw = public_bytes(public_key)
    kid = _KIDS.get(raw)
    if kid is None:
        if len(_KIDS) > 1024:
            _KIDS.clear()
        kid = _KIDS[raw] = thumbprint(public_key)
    return kid


def sign_decision(key: Ed25519PrivateKey, document: dict[str, Any]) -> tuple[bytes, bytes]:
    """Return ``(decision_json, signature)``; the document must already carry every field."""
    missing = REQUIRED_FIELDS - set(document)
    if missing:
        raise ValueError(f"decision lacks {sorted(missing)}")
    body = canonical(document)  # byte-identical to JCS, see cmcp_core.digest.canonical
    return body, sign(key, DECISION_CONTEXT + body)


def verify_decision(decision_json: bytes, signature: bytes, public_key: Ed25519PublicKey, *,
                    expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Verify and parse a decision; ``CmcpError(DECISION_UNVERIFIED)`` on any doubt.

    ``expected`` pins fields the caller knows (session_id, call_id, tool, args_digest,
    audience, bundle_hash...): a valid signature over a decision for another call is refused.
    """
    if len(decision_json) > MAX_DECISION_BYTES:
        raise CmcpError(Code.DECISION_UNVERIFIED, "decision document too large")
    if not verify_payload(public_key, DECISION_CONTEXT, decision_json, signature):
        raise CmcpError(Code.DECISION_UNVERIFIED, "decision signature does not verify")
    try:
        doc: Any = orjson.loads(decision_json)  # stricter than json; anything odd fails below anyway
    except (ValueError, UnicodeDecodeError) as exc:
        raise CmcpError(Code.DECISION_UNVERIFIED, f"decision is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or canonical(doc) != decision_json:  # fast JCS, byte-identical
        raise CmcpError(Code.DECISION_UNVERIFIED, "decision is not a canonical JSON object")
    if set(doc) < REQUIRED_FIELDS or doc.get("v") != DECISION_VERSION:
        raise CmcpError(Code.DECISION_UNVERIFIED, "decision lacks fields or has another version")
    if doc["decision"] not in ("allow", "deny") or doc["effective"] not in ("allow", "deny"):
        raise CmcpError(Code.DECISION_UNVERIFIED, "decision values out of range")
    if doc["kid"] != _kid(public_key):
        raise CmcpError(Code.DECISION_UNVERIFIED, "decision names another key id")
    for name, value in (expected or {}).items():
        if doc.get(name) != value:
            raise CmcpError(Code.DECISION_UNVERIFIED, f"decision {name} is {doc.get(name)!r}, "
                                                      f"expected {value!r}")
    return doc
