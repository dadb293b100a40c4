"""Canonical JSON (RFC 8785) and the tagged SHA-256 digests used across cMCP.

Every hash or signature over JSON in cMCP goes through :func:`jcs`, so that non-ASCII tool
names and key order can never make two components disagree about the bytes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import rfc8785


def jcs(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value."""
    return bytes(rfc8785.dumps(value))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tagged_sha256(data: bytes) -> str:
    """``"sha256:" + hex`` — the textual form of every digest cMCP publishes."""
    return "sha256:" + sha256_hex(data)


def json_digest(value: Any) -> str:
    """Tagged SHA-256 of the JCS form of ``value`` (argument and response digests)."""
    return tagged_sha256(jcs(value))


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE and TRACE use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64url`; raises ``ValueError`` on anything else."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("expected unpadded base64url text")
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except Exception as exc:  # binascii.Error is a ValueError subclass, but be explicit
        raise ValueError(f"invalid base64url: {exc}") from exc
    if b64url(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw
