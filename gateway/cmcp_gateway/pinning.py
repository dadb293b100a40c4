"""Rendezvous pinning: which attested enclave holds a principal's state, and so its sessions.

Taint and budgets live with the principal inside one enclave (``cmcp_enclave.principals``), so
every gateway replica must send a principal's calls to the same enclave: rendezvous hashing over
the endpoints attested at that moment, keyed on the principal, needs no shared state between
replicas. A session stays with the enclave that holds it, ``(address, key id)``; its id names
that enclave (:mod:`cmcp_core.session_id`), so a replica that never saw the session finds it
too. If that enclave stops answering, stops attesting, or comes back with another key, the
session's calls get ``SESSION_LOST``: they are never silently moved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cmcp_core.errors import CmcpError, Code
from cmcp_core.session_id import owned_by, owner_prefix


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


def _score(key: str, kid: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{kid}".encode(), digest_size=16).digest()


def pick(principal: str, candidates: Iterable[Candidate], route_name: str) -> Pin:
    """The enclave with the highest score for this principal; ``TEE_UNAVAILABLE`` if none is attested."""
    attested = list(candidates)
    if not attested:
        raise CmcpError(Code.TEE_UNAVAILABLE, f"route {route_name}: no attested enclave")
    best = max(attested, key=lambda a: _score(principal, a.kid))
    return Pin(best.address, best.kid)


def owner(session_id: str, principal: str, candidates: Iterable[Candidate]) -> Pin:
    """Where an existing session lives: the enclave its id names, else (an id without an owner
    prefix) the principal's rendezvous choice. ``SESSION_LOST`` when that enclave is not attested
    now: the session is never looked for anywhere else."""
    attested = list(candidates)
    if owner_prefix(session_id) is None:
        if not attested:
            raise session_lost()
        return pick(principal, attested, "")
    named = [a for a in attested if owned_by(session_id, a.kid)]
    if len(named) != 1:  # gone (or, beyond belief, two keys sharing 96 bits): never guess
        raise session_lost()
    return Pin(named[0].address, named[0].kid)


def session_lost() -> CmcpError:
    """The pinned enclave is gone, no longer attested, or holds another key now."""
    return CmcpError(Code.SESSION_LOST, "the enclave holding this session is gone")
