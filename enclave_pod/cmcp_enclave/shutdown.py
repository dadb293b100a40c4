"""The enclave's graceful stop (SIGTERM, also as a container's PID 1).

What must not be lost is the audit trail: every entry the enclave signs lives only in its outbox
until an answer or a ``DrainAudit`` carries it to the gateway, which writes it durably
(docs/adr/0009-audit-leaves-the-enclave.md). So a stop (1) opens no new session, (2) closes every
open session, each with its close entry, ledger entry and Trust Record (a gateway's later
``CloseSession`` still gets the record), (3) keeps serving until the outbox is empty or ``grace``
has passed, so the gateway's next answer or drain takes the entries, and only then (4) stops the
gRPC server. What did not leave in time is counted, never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from cmcp_enclave.enclave import Enclave
from cmcp_enclave.server import EnclaveServer

SERVER_GRACE_SECONDS = 2.0  # in-flight RPCs finish within this once the outbox wait is over


@dataclass(frozen=True)
class Stopped:
    sessions_closed: int
    audit_entries_undelivered: int  # signed entries no answer or drain carried out in time
    # carried out, their storing not yet acknowledged (the acknowledgement rides on a gateway's
    # next request): stored unless that answer was lost on its way
    audit_entries_unacknowledged: int = 0


async def shut_down(enclave: Enclave, server: EnclaveServer, *, grace: float) -> Stopped:
    """Stop as the module docstring says; returns what was closed and what stayed behind."""
    enclave.stop_accepting()
    closed = enclave.close_all("shutdown")
    emptied = asyncio.Event()
    enclave.on_outbox_emptied = emptied.set
    if not len(enclave.outbox):
        emptied.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(emptied.wait(), grace)
    await server.stop(grace=SERVER_GRACE_SECONDS)
    return Stopped(sessions_closed=closed, audit_entries_undelivered=len(enclave.outbox),
                   audit_entries_unacknowledged=enclave.outbox.unacknowledged)
