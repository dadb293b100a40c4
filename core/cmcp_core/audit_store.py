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

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cmcp_core.audit_store_rows import ChainSummary, Row, principal_of, row_of, rows_of
from cmcp_core.audit_store_sqlite import SqliteAuditStore
from cmcp_core.errors import CmcpError, Code

__all__ = ["AuditStore", "ChainSummary", "Row", "chain_entries", "open_audit_store", "principal_of", "row_of",
           "rows_of"]

SQLITE_PREFIX = "sqlite:"
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
