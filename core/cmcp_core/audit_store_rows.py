"""What the audit store keeps of an entry: its key fields next to its canonical bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from cmcp_core.errors import CmcpError, Code


@dataclass(frozen=True, slots=True)
class Row:
    """One entry as the store keys it."""

    kid: str
    chain: str
    seq: int
    hash: str
    kind: str
    ts: int
    entry: bytes


@dataclass(frozen=True, slots=True)
class ChainSummary:
    kid: str
    chain: str
    entries: int
    first_ts: int
    last_ts: int
    principal: str | None  # from the chain's open entry, when stored


def row_of(raw: bytes) -> Row:
    """The key fields of one canonical entry; ``AUDIT_MALFORMED`` when it is not an entry."""
    try:
        doc = orjson.loads(raw)
        data = doc["data"]
        return Row(kid=str(doc["kid"]), chain=str(doc["session_id"]), seq=int(doc["seq"]),
                   hash=str(doc["hash"]), kind=str(doc["kind"]), ts=int(doc["ts"]),
                   entry=bytes(raw)) if isinstance(data, dict) else _malformed()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CmcpError(Code.AUDIT_MALFORMED, f"not an audit entry: {exc}") from exc


def _malformed() -> Row:
    raise CmcpError(Code.AUDIT_MALFORMED, "an audit entry's data must be an object")


def rows_of(entries: Sequence[bytes]) -> list[Row]:
    return [row_of(raw) for raw in entries]


def principal_of(open_entry: bytes) -> str | None:
    """The principal a session's open entry names (``None`` for a ledger or a malformed entry)."""
    try:
        principal = orjson.loads(open_entry)["data"].get("principal")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return principal if isinstance(principal, str) else None
