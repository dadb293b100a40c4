"""Rendezvous pinning: which attested enclave holds a session.

A session is pinned to ``(address, key id)`` of the enclave chosen by rendezvous hashing over
the endpoints attested at that moment. Only the pinned enclave holds the session's state, so
if it stops answering, stops attesting, or comes back with another key, the session's calls get
``SESSION_LOST``: they are never silently moved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cmcp_core.errors import CmcpError, Code


@dataclass(frozen=True)
class Pin:
    address: str
    kid: str


class Candidate(Protocol):
    """An attested enclave as pinning sees it (``cmcp_core.attestation.AttestedEnclave``)."""

    @property
    def address(self) -> str: ...

    @property
    def kid(self) -> str: ...


def _score(session_id: str, kid: str) -> bytes:
    return hashlib.blake2b(f"{session_id}\x00{kid}".encode(), digest_size=16).digest()


def pick(session_id: str, candidates: Iterable[Candidate], route_name: str) -> Pin:
    """The enclave with the highest score for this session; ``TEE_UNAVAILABLE`` if none is attested."""
    attested = list(candidates)
    if not attested:
        raise CmcpError(Code.TEE_UNAVAILABLE, f"route {route_name}: no attested enclave")
    best = max(attested, key=lambda a: _score(session_id, a.kid))
    return Pin(best.address, best.kid)


def session_lost() -> CmcpError:
    """The pinned enclave is gone, no longer attested, or holds another key now."""
    return CmcpError(Code.SESSION_LOST, "the enclave holding this session is gone")
