"""Driving an in-process :class:`~cmcp_enclave.enclave.Enclave` the way the gateway does, for unit tests.

Tests name sessions ("s1", "t"); the enclave mints the real ids. :func:`sid` opens a session the
first time a test names it (for the principal given then) and returns its minted id; an actual
minted id passes through. :func:`exported` plays the gateway's audit store: it takes what the
enclave hands out (``cmcp_devkit.enclave.carried``) and returns one chain's entries in seq order.
"""

from __future__ import annotations

import itertools
import json
import weakref
from typing import Any

from cmcp_core import session_id as session_ids
from cmcp_core.digest import json_digest
from cmcp_core.mcp_target import bound_digest
from cmcp_core.proto import enclave_pb2
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, carried
from cmcp_enclave.enclave import DecideResult, Enclave
from cmcp_enclave.server import attest_response

_calls = itertools.count()
_names: weakref.WeakKeyDictionary[Enclave, dict[str, str]] = weakref.WeakKeyDictionary()
_Chains = dict[str, dict[int, dict[str, Any]]]  # chain id -> seq -> entry
_stores: weakref.WeakKeyDictionary[Enclave, _Chains] = weakref.WeakKeyDictionary()


def sid(enc: Enclave, name: str, principal: str = "agent-a") -> str:
    """The minted id of the session a test calls ``name`` (opened for ``principal`` on first use)."""
    if session_ids.owner_prefix(name) is not None or name.startswith("ledger:"):
        return name
    ids = _names.setdefault(enc, {})
    if name not in ids:
        ids[name] = enc.open_session(principal, trail=NO_TRAIL)
    return ids[name]


def known(enc: Enclave, name: str) -> str:
    """The minted id of an already named session, or ``name`` itself (an id the enclave never saw)."""
    return _names.get(enc, {}).get(name, name)


def decide(enc: Enclave, tool: str, args: dict[str, Any] | None = None, *, session: str = "s1",
           principal: str = "agent-a", audience: str = DEFAULT_AUDIENCE,
           method: str = "tools/call", input: dict[str, Any] | None = None) -> DecideResult:
    """``input``: a multi-round trip's (an ask's input request, or a repeated request's answers)."""
    args = args or {}
    digest = json_digest(args) if input is None else bound_digest(args, input)
    return enc.decide(session_id=sid(enc, session, principal), call_id=f"c{next(_calls)}",
                      principal=principal, method=method, tool=tool,
                      arguments_json=json.dumps(args).encode(), arguments_digest=digest,
                      audience=audience, input_json=json.dumps(input).encode() if input is not None else b"")


def drained(enc: Enclave) -> dict[str, dict[int, dict[str, Any]]]:
    """Everything the enclave handed out so far, by chain id then seq (a test's audit store)."""
    held = _stores.setdefault(enc, {})
    while len(enc.outbox):  # each take is bounded, as one answer is
        for raw in carried(enc):
            entry = json.loads(raw)
            held.setdefault(entry["session_id"], {})[entry["seq"]] = entry
    return held


def exported(enc: Enclave, name: str) -> list[dict[str, Any]]:
    """One chain's entries, in seq order, as the audit store would return them."""
    chain = drained(enc).get(known(enc, name), {})
    return [chain[seq] for seq in sorted(chain)]


def peer_attestation(enc: Enclave, nonce: bytes = bytes(32)) -> enclave_pb2.PeerAttestation:
    """``enc``'s attestation as the gateway keeps it in the audit store for a later takeover."""
    return enclave_pb2.PeerAttestation(nonce=nonce, attestation=attest_response(enc, nonce))
