"""Canonical JSON (RFC 8785) and the tagged SHA-256 digests used across cMCP.

Every hash or signature over JSON in cMCP goes through :func:`jcs`, so that non-ASCII tool
names and key order can never make two components disagree about the bytes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
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


# ---- fast canonical form (added for the enclave hot path; same bytes as jcs) ----

_JCS_SAFE_INT = 2**53 - 1


def _plain_json(value: Any) -> bool:
    """True when a sorted-keys C encoder (orjson, json) gives exactly the RFC 8785 bytes for ``value``.

    That holds for strings, booleans, null, safe-range integers, lists and objects whose keys
    sort the same by code point as by UTF-16 code unit (all keys below U+D800). Python's json
    escapes exactly what JCS escapes (``"``, ``\\``, control characters; short forms for
    ``\\b\\t\\n\\f\\r``, lowercase ``\\u00xx`` otherwise). Floats and anything else fall back.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -_JCS_SAFE_INT <= item <= _JCS_SAFE_INT:
                continue
            return False
        if kind is dict:
            for key, sub in item.items():
                if type(key) is not str or not (key.isascii() or max(key) < "\ud800"):
                    return False
                sub_kind = type(sub)
                if sub_kind is not str and sub_kind is not bool and sub is not None:
                    stack.append(sub)  # scalars are settled here: most values are strings
            continue
        if kind is list:
            stack.extend(item)
            continue
        return False
    return True


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes, fast: orjson when provably identical, else :func:`jcs`.

    For hot paths (the enclave signs and hashes on every decision; ``rfc8785`` is pure Python
    and dominated its latency). For values :func:`_plain_json` admits, orjson with sorted keys
    writes exactly the JCS bytes: UTF-8 output, the same escapes as Python's ``json`` (see
    :func:`_plain_json`), keys below U+D800 sort the same by UTF-8 bytes as by UTF-16 units.
    It refuses lone surrogates and nesting deeper than 254 (``TypeError``): those go to
    :func:`jcs`, which refuses or produces the same bytes. ``tests/unit/cmcp_core/test_digest_canonical.py``
    holds it byte-identical to :func:`jcs` with a property test.
    """
    if _plain_json(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass  # lone surrogates, very deep nesting: let rfc8785 decide
    return jcs(value)
