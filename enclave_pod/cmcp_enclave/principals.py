"""Policy state that belongs to the principal, not to a session: what a new session cannot shed.

Taint rules ("no external mail after reading PHI") and call budgets mean nothing if an agent can
start clean by opening another session, another MCP connection or a stateless request. So every
call an enclave lets through is recorded against its principal as well as its session, and Cedar
sees the principal's state within the bundle's window (``state_window_seconds``, default 24 h):
each tag, sensitivity rank and tool stays for a full window after the call that brought it.

Memory is bounded: at most ``max_principals`` principals are held. A principal whose state has
all expired may be dropped to make room; an active one never is, because dropping it would
shed its taint. When the table is full of active principals a new principal is refused
(``PRINCIPAL_STATE_FULL``) rather than started clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cmcp_core.errors import CmcpError, Code

BUCKETS = 24  # call_count granularity: 1/24 of the window


@dataclass(slots=True)
class PrincipalState:
    """One principal's windowed state: each fact with the time it expires."""

    principal: str
    tags: dict[str, float] = field(default_factory=dict)
    ranks: dict[int, float] = field(default_factory=dict)
    tools: dict[str, float] = field(default_factory=dict)
    previous_tool: str = ""
    previous_expires: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)  # bucket index -> calls let through
    expires: float = 0.0  # when every fact above has expired

    def record(self, tool: str, rank: int, tags: frozenset[str], now: float, window: float) -> None:
        """A tool call let through: its taint, and the call itself (budgets, sequence rules)."""
        self.taint(rank, tags, now, window)
        until = now + window
        self.tools[tool] = until
        self.previous_tool, self.previous_expires = tool, until
        index = int(now // (window / BUCKETS))
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.expires = until

    def taint(self, rank: int, tags: frozenset[str], now: float, window: float) -> None:
        """Data handed to the agent (a tool's result, a resource, a prompt): its sensitivity and tags."""
        until = now + window
        for tag in tags:
            self.tags[tag] = until
        self.ranks[rank] = until
        self.expires = max(self.expires, until)

    def view(self, now: float, window: float) -> PrincipalView:
        """The facts still in the window; expired ones are forgotten here, so memory stays small."""
        self.tags = {t: e for t, e in self.tags.items() if e > now}
        self.ranks = {r: e for r, e in self.ranks.items() if e > now}
        self.tools = {t: e for t, e in self.tools.items() if e > now}
        # A bucket counts while any of it is inside the window: a budget errs towards denying early.
        oldest = int((now - window) // (window / BUCKETS))
        self.buckets = {i: n for i, n in self.buckets.items() if i >= oldest}
        return PrincipalView(
            max_rank=max(self.ranks, default=0),
            tags=frozenset(self.tags),
            tools_called=frozenset(self.tools),
            call_count=sum(self.buckets.values()),
            previous_tool=self.previous_tool if self.previous_expires > now else "",
        )


@dataclass(frozen=True, slots=True)
class PrincipalView:
    """A snapshot of the facts Cedar sees for the principal."""

    max_rank: int = 0
    tags: frozenset[str] = frozenset()
    tools_called: frozenset[str] = frozenset()
    call_count: int = 0
    previous_tool: str = ""


class PrincipalTable:
    """Principals by name, bounded, with the bundle's window."""

    def __init__(self, window_seconds: float, max_principals: int) -> None:
        self.window = float(window_seconds)
        self.max_principals = max_principals
        self._states: dict[str, PrincipalState] = {}
        self._next_sweep = float("-inf")

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, principal: object) -> bool:
        return principal in self._states

    def get(self, principal: str, now: float) -> PrincipalState:
        """The principal's state. Only a principal with an open session reaches here without
        being held: one dropped because nothing of it was left in the window (``_drop_expired``),
        so it comes back empty, as it was. A new principal enters through :meth:`start`."""
        state = self._states.get(principal)
        return state if state is not None else self.start(principal, now)

    def start(self, principal: str, now: float) -> PrincipalState:
        """Room for a principal the enclave takes over (:mod:`cmcp_enclave.handover`); refused
        when the table is full of active principals."""
        if len(self._states) >= self.max_principals:
            if now >= self._next_sweep:  # at most one full sweep a second: a flood cannot make each call O(n)
                self._drop_expired(now)
                self._next_sweep = now + 1.0
            if len(self._states) >= self.max_principals:
                raise CmcpError(Code.PRINCIPAL_STATE_FULL,
                                f"the enclave holds state for {self.max_principals} active principals")
        state = PrincipalState(principal=principal)
        self._states[principal] = state
        return state

    def reset(self, principal: str) -> None:
        """An operator's audited reset: the principal starts clean (the one way it ever does)."""
        if principal in self._states:
            self._states[principal] = PrincipalState(principal=principal)

    def _drop_expired(self, now: float) -> None:
        """Forget principals with nothing left in the window; active ones are never dropped."""
        self._states = {p: s for p, s in self._states.items() if s.expires > now}
