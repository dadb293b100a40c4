"""Durable storage of audit entries outside the enclave: the interface and the ``audit.store`` chooser.

The enclave keeps no audit entries; each leaves in an answer and the gateway writes it here
before it acts on that answer. Rows are keyed by ``(kid, chain, seq)`` (chain: a session id or
an enclave ledger, ``ledger:<kid>``) and carry the entry's hash and canonical bytes. Appending an
entry the store already holds is a no-op, so a gateway may resend; a *different* entry for a key
already held is ``AUDIT_FORK``. Any storage failure is ``AUDIT_STORE_UNAVAILABLE``: the caller
fails closed. The store is untrusted: entries are signed and chained, and ``cmcpctl audit
verify`` finds deletion, editing, withheld sessions and forks (:mod:`cmcp_core.audit_store_verify`).

Backends: ``sqlite:PATH`` (WAL; one node) and ``postgresql://...`` (several gateway replicas),
one module each (:mod:`cmcp_core.audit_store_sqlite`, :mod:`cmcp_core.audit_store_postgres`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from cmcp_core.audit import allowed_call
from cmcp_core.audit_store_rows import ChainSummary, Row, principal_of, row_of, rows_of
from cmcp_core.audit_store_sqlite import SqliteAuditStore
from cmcp_core.bundle import MAX_STATE_WINDOW_SECONDS
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2

__all__ = [
    "TRAIL_LIMIT",
    "AuditStore",
    "ChainSummary",
    "Row",
    "Trail",
    "chain_entries",
    "open_audit_store",
    "principal_of",
    "principal_trail",
    "row_of",
    "rows_of",
]

SQLITE_PREFIX = "sqlite:"
TRAIL_LIMIT = 2048  # allowed decisions a takeover carries at most (~1.2 KiB each, under gRPC's 4 MiB)
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class AuditStore(Protocol):
    """Append-only, idempotent storage of canonical entries (see the module docstring)."""

    def append(self, rows: Sequence[Row]) -> int:
        """Store ``rows`` in one transaction; returns how many were new. ``AUDIT_FORK`` when one
        conflicts with a held entry, ``AUDIT_STORE_UNAVAILABLE`` on any storage error."""
        ...

    def chains(self) -> list[ChainSummary]:
        """Every chain held, by kid then chain id."""
        ...

    def entries(self, kid: str, chain: str) -> list[bytes]:
        """One chain's canonical entries in seq order."""
        ...

    def put_attestation(self, kid: str, nonce: bytes, attestation: bytes) -> None:
        """Keep an enclave's attestation (an ``AttestResponse`` to ``nonce``), first one wins: an
        enclave taking a principal over appraises the enclaves that signed its trail from these."""
        ...

    def attestations(self, kids: Collection[str]) -> dict[str, tuple[bytes, bytes]]:
        """``kid -> (nonce, attestation)`` for those of ``kids`` the store holds."""
        ...

    def close(self) -> None: ...


def open_audit_store(spec: str) -> AuditStore:
    """``sqlite:PATH`` or a ``postgresql://`` URI; ``ValueError`` for anything else,
    ``AUDIT_STORE_UNAVAILABLE`` when the store cannot be opened."""
    if spec.startswith(SQLITE_PREFIX) and len(spec) > len(SQLITE_PREFIX):
        return SqliteAuditStore(Path(spec[len(SQLITE_PREFIX):]))
    if spec.startswith(POSTGRES_PREFIXES):
        # loaded for a PostgreSQL store only: psycopg costs ~10 MiB of RSS a SQLite gateway never needs
        from cmcp_core.audit_store_postgres import PostgresAuditStore

        return PostgresAuditStore(spec)
    raise ValueError(f"audit store must be 'sqlite:PATH' or 'postgresql://...', not {spec!r}")


def chain_entries(store: AuditStore, chain: str) -> list[bytes]:
    """The entries of the chain named ``chain`` (a session id or a ledger), whichever enclave
    wrote it; ``AUDIT_FORK`` when two enclaves' chains carry that name, none when it is absent."""
    kids = [c.kid for c in store.chains() if c.chain == chain]
    if len(kids) > 1:
        raise CmcpError(Code.AUDIT_FORK, f"{chain}: chains from {len(kids)} enclaves carry this id")
    return store.entries(kids[0], chain) if kids else []


@dataclass(frozen=True)
class Trail:
    """A principal's allowed decisions from ``since_ms`` on (all of them), newest first."""

    entries: list[bytes]
    kids: frozenset[str]
    since_ms: int


def principal_trail(store: AuditStore, principal: str, since_ms: int, limit: int,
                    bundle_hash: str | None = None) -> Trail:
    """The allowed calls (:func:`~cmcp_core.audit.allowed_call`) of ``principal`` since
    ``since_ms`` (under ``bundle_hash`` only, when given: another bundle's enclaves hold another
    state), at most ``limit`` (the newest); when more are held, ``since_ms`` moves up to the oldest
    one kept, so the trail never claims to cover a time it does not. Found through the sessions the
    principal opened (every chain's open entry names it), so it reads every chain summary: a
    takeover is rare, a session open is not."""
    found: list[tuple[int, str, bytes]] = []
    for summary in store.chains():
        if summary.principal != principal or summary.last_ts < since_ms:
            continue
        for raw in store.entries(summary.kid, summary.chain):
            entry = orjson.loads(raw)
            data = entry.get("data") or {}
            ours = data.get("principal") == principal and bundle_hash in (None, data.get("bundle_hash"))
            if allowed_call(entry) and ours and int(entry.get("ts", 0)) >= since_ms:
                found.append((int(entry["ts"]), summary.kid, raw))
    found.sort(key=lambda item: item[0], reverse=True)
    if len(found) > limit:
        cutoff = found[limit - 1][0]  # the oldest kept; one left out at the same ms moves past it
        since_ms = cutoff + 1 if found[limit][0] == cutoff else cutoff
        found = [item for item in found[:limit] if item[0] >= since_ms]
    return Trail([raw for _, _, raw in found], frozenset(kid for _, kid, _ in found), since_ms)


def trail_for(store: AuditStore, principal: str, *, owner: str, bundle_hash: str,
              now: float) -> enclave_pb2.PrincipalTrail:
    """What the enclave with key id ``owner`` (serving ``bundle_hash``) needs to take ``principal``
    over: its allowed decisions under that bundle over the longest window a bundle may declare, and
    the attestation of every other enclave that signed one (an enclave appraises them itself; a
    missing one refuses the trail)."""
    since_ms = int((now - MAX_STATE_WINDOW_SECONDS) * 1000)
    found = principal_trail(store, principal, since_ms, TRAIL_LIMIT, bundle_hash)
    peers = [enclave_pb2.PeerAttestation(nonce=nonce, attestation=enclave_pb2.AttestResponse.FromString(raw))
             for nonce, raw in store.attestations(found.kids - {owner}).values()]
    return enclave_pb2.PrincipalTrail(entries=found.entries, peers=peers, since_ms=found.since_ms)
