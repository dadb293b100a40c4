"""Permits: the enclave's single-use authorisation for one call, checked by the upstream guard.

Token form: ``v1.<base64url(JCS payload)>.<base64url(Ed25519 signature)>``, signature over
``PERMIT_CONTEXT || payload``. The payload binds session, call id, the MCP method and its target
(``tool``: a tool name, resource URI or prompt name, :mod:`cmcp_core.mcp_target`), argument
digest, audience, expiry, bundle hash, a single-use nonce and the signing key's thumbprint. A
payload without ``method`` (minted before other methods were gated) is a ``tools/call`` one.
Verification here is stateless; the guard adds the replay cache.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cmcp_core.crypto import PERMIT_CONTEXT, sign, thumbprint, verify_payload
from cmcp_core.digest import b64url, b64url_decode, canonical
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import TOOLS_CALL

PERMIT_HEADER = "X-Cmcp-Permit"
TOKEN_PREFIX = "v1"  # noqa: S105 - a format tag, not a secret
MAX_TOKEN_BYTES = 4096
CLOCK_SKEW_SECONDS = 5


@dataclass(frozen=True)
class Permit:
    sid: str
    cid: str
    tool: str
    args: str  # "sha256:<hex>" of the JCS arguments (with a multi-round trip's answers: Target.digest)
    aud: str
    iat: int
    exp: int
    bh: str
    nonce: str
    kid: str
    method: str = TOOLS_CALL


def mint(key: Ed25519PrivateKey, *, session_id: str, call_id: str, tool: str, args_digest: str,
         audience: str, bundle_hash: str, ttl_seconds: int, now: float | None = None,
         kid: str | None = None, method: str = TOOLS_CALL) -> str:
    """``kid`` may be passed by a caller that already holds the key's thumbprint (hot path)."""
    issued = int(now if now is not None else time.time())
    permit = Permit(sid=session_id, cid=call_id, tool=tool, args=args_digest, aud=audience,
                    iat=issued, exp=issued + ttl_seconds, bh=bundle_hash,
                    nonce=secrets.token_hex(16), kid=kid if kid is not None else thumbprint(key.public_key()),
                    method=method)
    body = canonical(permit.__dict__)  # same bytes as jcs(asdict(permit)), without the slow path
    sig = sign(key, PERMIT_CONTEXT + body)
    return f"{TOKEN_PREFIX}.{b64url(body)}.{b64url(sig)}"


def decode(token: str) -> tuple[Permit, bytes, bytes]:
    """Split and parse a token without trusting it; ``CmcpError(PERMIT_MALFORMED)`` on failure."""
    if not token:
        raise CmcpError(Code.PERMIT_MISSING, "no permit presented")
    if len(token) > MAX_TOKEN_BYTES:
        raise CmcpError(Code.PERMIT_MALFORMED, "permit is too long")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise CmcpError(Code.PERMIT_MALFORMED, "permit must be v1.<payload>.<signature>")
    try:
        body, sig = b64url_decode(parts[1]), b64url_decode(parts[2])
        doc: Any = orjson.loads(body)
        permit = Permit(**doc) if isinstance(doc, dict) else None
    except (ValueError, TypeError) as exc:
        raise CmcpError(Code.PERMIT_MALFORMED, f"permit payload unreadable: {exc}") from exc
    if permit is None or not all(isinstance(v, str) for k, v in permit.__dict__.items()
                                 if k not in ("iat", "exp")):
        raise CmcpError(Code.PERMIT_MALFORMED, "permit fields have the wrong types")
    if not isinstance(permit.iat, int) or not isinstance(permit.exp, int):
        raise CmcpError(Code.PERMIT_MALFORMED, "permit times must be integers")
    return permit, body, sig


def verify(token: str, *, trusted_keys: Mapping[str, Ed25519PublicKey], audience: str,
           tool: str, args_digest: str, allowed_bundles: frozenset[str] | None = None,
           now: float | None = None, method: str = TOOLS_CALL) -> Permit:
    """Check signature, key, binding and expiry. Replay is the caller's (stateful) job."""
    permit, body, sig = decode(token)
    key = trusted_keys.get(permit.kid)
    if key is None:
        raise CmcpError(Code.PERMIT_UNTRUSTED_KEY, f"key {permit.kid} is not an attested enclave key")
    if not verify_payload(key, PERMIT_CONTEXT, body, sig):
        raise CmcpError(Code.PERMIT_BAD_SIGNATURE, "permit signature does not verify")
    current = now if now is not None else time.time()
    if permit.exp + CLOCK_SKEW_SECONDS < current:
        raise CmcpError(Code.PERMIT_EXPIRED, f"permit expired at {permit.exp}")
    if permit.aud != audience:
        raise CmcpError(Code.PERMIT_AUDIENCE_MISMATCH, f"permit is for {permit.aud!r}")
    if permit.method != method:
        raise CmcpError(Code.PERMIT_METHOD_MISMATCH, f"permit is for {permit.method!r}, not {method!r}")
    if permit.tool != tool:
        raise CmcpError(Code.PERMIT_TOOL_MISMATCH, f"permit is for tool {permit.tool!r}")
    if permit.args != args_digest:
        raise CmcpError(Code.PERMIT_ARGS_MISMATCH, "permit is for other arguments")
    if allowed_bundles is not None and permit.bh not in allowed_bundles:
        raise CmcpError(Code.PERMIT_BUNDLE_MISMATCH, f"bundle {permit.bh} is not allowed")
    return permit
