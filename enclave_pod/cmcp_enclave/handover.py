"""Taking a principal over from the durable trail: an enclave never starts a principal clean on
its own say.

A principal moves to another enclave when its enclave dies, when a host kills its pod, or when a
new enclave joins the route and rendezvous hashing hands it over. The new owner holds nothing of
it, so it refuses the principal (``PRINCIPAL_NOT_HELD``) until the gateway sends the principal's
allowed decisions from the audit store (``OpenSessionRequest.trail``). :func:`read_trail` checks
every entry: a decision of this principal, unedited, signed by this enclave or by a peer whose
attestation shows this very guest (:func:`cmcp_core.verify.peer.appraise_peer`); and the trail must
reach back over the bundle's window. Anything else refuses the principal
(``PRINCIPAL_TRAIL_INVALID``) rather than start it from less than its history. What a takeover
started from is written to the enclave's ledger (``adopt``: the count and the newest entry), so
an auditor finds a trail a gateway cut short (``AUDIT_PRINCIPAL_WITHHELD``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core.audit import allowed_call, verify_entry
from cmcp_core.audit_store import TRAIL_LIMIT
from cmcp_core.crypto import key_from_jwk, thumbprint
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import TOOLS_CALL

MAX_PEERS = 64


@dataclass(frozen=True)
class Call:
    """An allowed call of the trail, to replay: what it acted on and when (seconds)."""

    tool: str  # the decision's target: a tool name, resource URI or prompt name
    at: float
    method: str = TOOLS_CALL


@dataclass(frozen=True)
class Takeover:
    calls: list[Call]  # inside the window, oldest first
    newest: str | None  # hash of the newest entry replayed
    since_ms: int


def _invalid(message: str) -> CmcpError:
    return CmcpError(Code.PRINCIPAL_TRAIL_INVALID, message)


def read_trail(trail: Any, *, principal: str, bundle_hash: str, audience: str,
               keys: dict[str, Ed25519PublicKey], peer_key: Callable[[Any], tuple[str, Ed25519PublicKey]],
               window_start_ms: int) -> Takeover:
    """The verified calls of ``trail`` (a ``PrincipalTrail``) to replay, or ``PRINCIPAL_TRAIL_INVALID``.

    Only decisions under this enclave's bundle and audience count (another route's enclaves hold
    another state); ``keys`` holds the keys already trusted (this enclave's, peers appraised
    before; appraised peers are added); ``peer_key`` appraises one ``PeerAttestation``."""
    if len(trail.entries) > TRAIL_LIMIT or len(trail.peers) > MAX_PEERS:
        raise _invalid(f"a trail carries at most {TRAIL_LIMIT} entries and {MAX_PEERS} peers")
    if trail.since_ms > window_start_ms:
        raise _invalid("the trail does not reach back over the bundle's state window")
    for peer in trail.peers:
        try:
            named = thumbprint(key_from_jwk(orjson.loads(peer.attestation.public_key_jwk)))
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            raise _invalid("a peer attestation names no usable key") from exc
        if named not in keys:  # each peer is appraised once per enclave life
            kid, peer_public = peer_key(peer)
            keys[kid] = peer_public
    seen: dict[str, tuple[int, Call]] = {}
    for raw in trail.entries:
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _invalid("a trail entry is not JSON") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
            raise _invalid("a trail entry is not an audit entry")
        if (entry["data"].get("bundle_hash"), entry["data"].get("audience")) != (bundle_hash, audience):
            continue  # another route's decision: not this state
        key = keys.get(entry.get("kid", ""))
        if key is None:
            raise _invalid("a trail entry is signed by a key no attestation vouches for")
        if not verify_entry(entry, key):
            raise _invalid(f"trail entry {entry.get('hash')!r} is edited or not signed by its key")
        data = entry["data"]
        if entry["kind"] != "decision" or data.get("principal") != principal:
            raise _invalid(f"trail entry {entry['hash']!r} is not a decision of this principal")
        ts = int(entry["ts"])
        if allowed_call(entry) and ts >= window_start_ms:
            seen[entry["hash"]] = (ts, Call(str(data.get("tool", "")), ts / 1000.0,
                                                 str(data.get("method", TOOLS_CALL))))
    ordered = sorted(seen.items(), key=lambda item: (item[1][0], item[0]))
    return Takeover(calls=[call for _, (_, call) in ordered], newest=ordered[-1][0] if ordered else None,
                    since_ms=int(trail.since_ms))
