"""What the enclave keeps per policy session, and the limits that bound it.

Kept apart from :class:`cmcp_enclave.enclave.Enclave` so the memory model (what one session
costs, what survives its close) reads in one place. The gateway has its own MCP session table;
these are the enclave's policy sessions: their own taint state (Cedar's ``context.session``),
pending calls and the tip of their audit chain. The entries themselves leave the enclave in
its answers (:mod:`cmcp_enclave.outbox`) and live in the gateway's audit store; what a policy
relies on across sessions lives with the principal (:mod:`cmcp_enclave.principals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmcp_core.audit import GENESIS
from cmcp_enclave.outbox import REDELIVER_SECONDS


@dataclass
class EnclaveLimits:
    """Bounds on the enclave's memory and permits; the command line sets them (``cmcp-enclave --help``)."""

    permit_ttl: int = 60
    idle_timeout: float = 900.0
    max_sessions: int = 10_000
    max_principals: int = 100_000  # principals with windowed state (cmcp_enclave.principals)
    closed_kept: int = 1024  # closed sessions whose Trust Record is still returned (then SESSION_UNKNOWN)
    outbox_bytes: int = 64 * 1024 * 1024  # audit entries not yet stored by a gateway (cmcp_enclave.outbox)
    redeliver_seconds: float = REDELIVER_SECONDS  # an unacknowledged delivery leaves again after this


@dataclass(slots=True)
class PolicySession:
    """Per-session state; small on purpose (memory bounded under many sessions: no entries,
    only the chain's tip and counter).

    Sets are frozensets replaced on change (the empty one is shared) and ``pending`` is created
    on first use.
    """

    session_id: str
    principal: str
    last_used: float
    seq: int = 0
    tip: str = GENESIS
    max_rank: int = 0
    call_count: int = 0
    tags: frozenset[str] = frozenset()
    tools_called: frozenset[str] = frozenset()
    previous_tool: str = ""
    pending: dict[str, str] | None = None  # call_id -> tool, awaiting Complete
    # input requests let through to the agent, not answered yet: (asking method, target, key)
    asked: dict[tuple[str, str, str], None] | None = None


@dataclass
class ClosedSession:
    """What stays of a session after Close, for a while: its Trust Record (Close is idempotent).

    ``record`` is ``None`` while the record is not issued: an enclave with GPUs signs it only
    with every GPU's evidence for it, so a GPU that cannot answer leaves the session closed and its
    record pending; the next ``CloseSession`` asks the GPUs again (ADR 0031)."""

    tip: str
    entries: int
    call_count: int = 0
    data_class: str = ""
    ledger: tuple[str, int, str] | None = None  # the ledger tip right after this session's close
    record: dict[str, Any] | None = None
    gpu_evidence: tuple[bytes, ...] = ()  # the envelopes the record names, in its order
