"""Audit entries on their way out: the enclave keeps no audit ring, only this outbox.

Every entry the enclave signs is queued here as its canonical bytes and handed to the next
answer (``audit_entries``), which the gateway writes to durable storage before it acts on the
answer. Outcomes recorded after a stream reply and idle closes wait here for the next answer or
a ``DrainAudit``. An answer always carries the entries its own call produced (a decision's entry
travels with its permit) and as many older ones as fit in ``ANSWER_BUDGET_BYTES``, so no answer
outgrows the gRPC message limit. Memory is bounded by ``limit_bytes``: past it the enclave opens
no session and closes no idle one until the outbox is drained (``full``).
"""

from __future__ import annotations

from collections import deque

ANSWER_BUDGET_BYTES = 256 * 1024  # older entries one answer carries at most (own entries always)


class AuditOutbox:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._entries: deque[bytes] = deque()
        self._bytes = 0
        self.appended = 0  # entries ever queued: a mark for "produced by this call"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return self._bytes >= self.limit_bytes

    def put(self, raw: bytes) -> None:
        self._entries.append(raw)
        self._bytes += len(raw)
        self.appended += 1

    def take(self, since: int | None = None, budget: int = ANSWER_BUDGET_BYTES) -> list[bytes]:
        """Entries for one answer, oldest first: every one queued after mark ``since`` (this
        call's own), and older ones up to ``budget`` bytes."""
        if self._bytes <= budget or (since is None and not self._entries):
            taken = list(self._entries)
            self._entries.clear()
            self._bytes = 0
            return taken
        own = max(0, min(len(self._entries), self.appended - since)) if since is not None else 0
        tail = [self._entries.pop() for _ in range(own)][::-1]
        size = sum(len(raw) for raw in tail)
        head: list[bytes] = []
        while self._entries and size + len(self._entries[0]) <= budget:
            raw = self._entries.popleft()
            head.append(raw)
            size += len(raw)
        if not head and not tail and self._entries:  # one oversized entry still leaves
            head.append(self._entries.popleft())
        taken = head + tail
        self._bytes -= sum(len(raw) for raw in taken)
        return taken
