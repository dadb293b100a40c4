"""A recorded agent session: calls through the gateway, then the auditor's view of it.

Several IDs (AUDIT, TRACE, POLICY-TEE-003/005) look at the same artefacts — the exported audit
chain and the Trust Record of a session whose calls the suite made itself — so they share this
driver. The export goes through :meth:`TargetDeployment.export_audit`, i.e. through whatever storage the
host provides; that is the untrusted path the checks are about.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cmcp_conformance.agent import CallOutcome, agent
from cmcp_conformance.target import TargetDeployment


@dataclass
class RecordedSession:
    session_id: str
    calls: list[tuple[str, dict[str, Any], CallOutcome]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    gpu_evidence: tuple[bytes, ...] = ()  # what CloseSession returned beside the record (GPUs)

    def decision_entries(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e.get("kind") == "decision"]


def run_session(
    target: TargetDeployment,
    calls: list[tuple[str, dict[str, Any]]],
    *,
    url: str | None = None,
    address: str | None = None,
) -> RecordedSession:
    """Make ``calls`` in one MCP session, close it at the enclave, export its audit chain."""

    async def scenario() -> RecordedSession:
        async with agent(target, url) as a:
            recorded = RecordedSession(session_id="")
            for tool, arguments in calls:
                recorded.calls.append((tool, arguments, await a.call(tool, arguments)))
            recorded.session_id = a.session_id
            return recorded

    recorded = asyncio.run(scenario())
    await_completions(target, recorded.session_id, sum(1 for _, _, out in recorded.calls if out.ok), address)
    closed = target.close_session_response(recorded.session_id, address=address)
    recorded.record = json.loads(closed.trust_record_json)
    recorded.gpu_evidence = tuple(bytes(e) for e in closed.gpu_evidence)
    recorded.entries = target.export_audit(recorded.session_id, address=address)
    return recorded


def await_completions(
    target: TargetDeployment, session_id: str, expected: int, address: str | None = None,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """The gateway reports an allowed call's outcome just after answering the agent; wait until
    ``expected`` outcomes are stored (so a close does not race them) and return the chain."""
    deadline = time.monotonic() + timeout
    while True:
        entries = target.export_audit(session_id, address=address)
        if sum(1 for e in entries if e.get("kind") == "complete") >= expected or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def standard_calls(target: TargetDeployment, marker: str = "conformance") -> list[tuple[str, dict[str, Any]]]:
    """An allowed call, a Cedar deny, and a call outside the catalog."""
    prof = target.profile
    return [
        (prof.allowed_tool, {"text": marker}),
        (prof.denied_tool, {"text": "all"}),
        (prof.uncatalogued_tool, {"text": "x"}),
    ]


FAIL_CLOSED = ("TEE_UNAVAILABLE", "SESSION_LOST")
RECOVERY_SECONDS = 30.0


def wait_until_serving(target: TargetDeployment, deadline_s: float = RECOVERY_SECONDS) -> None:
    """After a restart the gateway and guard must re-attest the new key before calls go through."""
    deadline = time.monotonic() + deadline_s
    last = ""

    async def attempt() -> bool:
        nonlocal last
        async with agent(target) as a:
            out = await a.call(target.profile.allowed_tool, {"text": "recovered?"})
            last = out.describe()
            return out.ok

    while time.monotonic() < deadline:
        try:
            if asyncio.run(attempt()):
                return
        except Exception as exc:  # a gateway still reconnecting may drop the connection
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"deployment did not recover after the enclave restarted: {last}")
