"""Fair decisions: Cedar off the event loop, one decision at a time per principal.

The enclave serves every gateway and every agent from one event loop. Deciding on that loop
means one agent's heavy call (large arguments, an expensive policy) stalls every other agent's
decisions behind it. So a decision whose arguments are not small runs its stateless half
(:mod:`cmcp_enclave.judging`: JSON, digest, Cedar) in a decision worker
(:mod:`cmcp_enclave.workers`, one per CPU of the pod), while the state it reads and writes
(:meth:`Enclave.prepare`, :meth:`Enclave.commit`) stays on the loop.

Each principal takes one turn at a time: its next decision waits until the previous one has
committed, so every decision sees the state the one before it left (a taint recorded by the
first call is in the second call's view) and one agent can hold at most one worker. How many
of a principal's decisions may wait is bounded (``PRINCIPAL_BUSY`` beyond it), so a flood from
one agent queues only itself. Small decisions skip the pool: a thread hop would cost more than
they do, and they cannot stall the loop for long.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from cmcp_core.errors import Code
from cmcp_enclave import judging
from cmcp_enclave.enclave import DecideResult, Enclave
from cmcp_enclave.judging import RequestError
from cmcp_enclave.workers import DecisionWorkers

INLINE_ARGUMENT_BYTES = 4096  # decided on the loop at or below this size (docs/adr/0010-fair-decisions.md)
MAX_WAITING_PER_PRINCIPAL = 64
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
MAX_DEFAULT_WORKERS = 4  # ~45 MiB each (docs/adr/0010-fair-decisions.md): fits the pod's 1 GiB limit


@dataclass
class _Turn:
    """One principal's queue: a lock held while one of its decisions is in flight."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0  # decisions in flight or waiting


def default_workers(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its CPU affinity, capped by the pod's CPU limit (cgroup v2
    ``cpu.max``), which affinity does not show, and by ``MAX_DEFAULT_WORKERS``: a pod on a
    64-CPU node must not start 64 workers, each with its own copy of the bundle, inside the
    enclave pod's memory limit (``--decision-workers`` says otherwise)."""
    cpus = min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS)
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, cpus)
    if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
        cpus = min(cpus, math.ceil(int(quota) / int(period)))
    return max(1, cpus)


class DecisionScheduler:
    """Runs :meth:`Enclave.decide` fairly; see the module docstring."""

    def __init__(self, enclave: Enclave, *, workers: int | None = None, processes: bool = True,
                 inline_bytes: int = INLINE_ARGUMENT_BYTES,
                 max_waiting: int = MAX_WAITING_PER_PRINCIPAL) -> None:
        self.enclave = enclave
        self.inline_bytes = inline_bytes
        self.max_waiting = max_waiting
        self.workers = DecisionWorkers(enclave.engine, enclave.entry.audience, workers or default_workers(),
                                       processes=processes)
        self._turns: dict[str, _Turn] = {}

    def decides_at_once(self, principal: str, argument_bytes: int) -> bool:
        """Whether :meth:`decide` would finish without waiting: small arguments, principal idle."""
        return argument_bytes <= self.inline_bytes and principal not in self._turns

    def waiting(self, principal: str) -> int:
        """Decisions of ``principal`` in flight or waiting (for metrics and tests)."""
        turn = self._turns.get(principal)
        return turn.holders if turn is not None else 0

    async def decide(self, *, session_id: str, call_id: str, principal: str, method: str, tool: str,
                     arguments_json: bytes, arguments_digest: str, audience: str,
                     access_token: str = "", input_json: bytes = b"") -> DecideResult:
        """The same decision :meth:`Enclave.decide` makes, scheduled fairly."""
        turn = self._turns.get(principal)
        if turn is None:
            turn = self._turns[principal] = _Turn()
        if turn.holders >= self.max_waiting:
            raise RequestError(Code.PRINCIPAL_BUSY,
                               f"{self.max_waiting} decisions of this principal are already waiting")
        turn.holders += 1
        try:
            async with turn.lock:
                enclave = self.enclave
                if len(arguments_json) + len(input_json) <= self.inline_bytes:
                    return enclave.decide(session_id=session_id, call_id=call_id, principal=principal,
                                          method=method, tool=tool, arguments_json=arguments_json,
                                          arguments_digest=arguments_digest, audience=audience,
                                          access_token=access_token, input_json=input_json)
                judging.check_id("session_id", session_id)
                judging.check_id("principal", principal)
                judging.check_id("call_id", call_id)
                view = enclave.prepare(session_id=session_id, principal=principal, call_id=call_id,
                                       access_token=access_token)
                call, verdict = await self.workers.admit_and_judge(
                    {"session_id": session_id, "call_id": call_id, "principal": principal,
                     "method": method, "tool": tool, "arguments_json": arguments_json,
                     "arguments_digest": arguments_digest, "audience": audience,
                     "input_json": input_json}, view)
                return enclave.commit(call, verdict)
        finally:
            turn.holders -= 1
            if turn.holders == 0:
                del self._turns[principal]

    async def start(self) -> None:
        await self.workers.start()

    def close(self) -> None:
        self.workers.close()
