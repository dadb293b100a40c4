"""Audit entries on their way out: the enclave keeps no audit ring, only this outbox.

Every entry the enclave signs is queued here as its canonical bytes and handed to the next
answer (``audit_entries``), which the gateway writes to durable storage before it acts on the
answer. Outcomes recorded after a stream reply and idle closes wait here for the next answer or
a ``DrainAudit``. An answer always carries the entries its own call produced (a decision's entry
travels with its permit) and as many older ones as fit in ``ANSWER_BUDGET_BYTES``, so no answer
outgrows the gRPC message limit.

What an answer carries is one delivery, kept until the gateway acknowledges it (``audit_acks``
on a later request, sent once the entries are stored). An answer can be lost on its way (a
deadline passed, a connection broke, the gateway died before its commit); a delivery not
acknowledged within ``REDELIVER_SECONDS`` goes back to the front of the queue and leaves again
with a later answer, so such a loss loses no entry (a repeat is a no-op in the store). Memory
is bounded by ``limit_bytes`` over queued and unacknowledged entries: past it the enclave opens
no session and closes no idle one until the gateway has taken and stored them (``full``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

ANSWER_BUDGET_BYTES = 256 * 1024  # older entries one answer carries at most (own entries always)
# A gateway acknowledges on its next request to this enclave, and an idle one on its refresh
# (DrainAudit, every 30 s by default): twice that before a delivery is taken for lost
# (``cmcp-enclave --audit-redeliver-seconds``).
REDELIVER_SECONDS = 60.0


class Delivery(NamedTuple):
    """The entries of one answer and the id the gateway acknowledges them by (0: none)."""

    id: int
    entries: list[bytes]


class AuditOutbox:
    def __init__(self, limit_bytes: int, *, redeliver_seconds: float = REDELIVER_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_bytes = limit_bytes
        self.redeliver_seconds = redeliver_seconds
        self._clock = clock
        self._entries: deque[bytes] = deque()
        self._bytes = 0  # queued
        self._sent: dict[int, tuple[float, list[bytes], int]] = {}  # id -> (sent at, entries, bytes)
        self._sent_bytes = 0
        self._next_id = 1
        self.appended = 0  # entries ever queued: a mark for "produced by this call"
        self.redelivered = 0  # entries that went out again, their first answer not acknowledged

    def __len__(self) -> int:
        """Entries no answer has carried yet."""
        return len(self._entries)

    @property
    def unacknowledged(self) -> int:
        """Entries carried out but not yet acknowledged as stored."""
        return sum(len(entries) for _, entries, _ in self._sent.values())

    @property
    def size(self) -> int:
        return self._bytes + self._sent_bytes

    @property
    def full(self) -> bool:
        return self.size >= self.limit_bytes

    def put(self, raw: bytes) -> None:
        self._entries.append(raw)
        self._bytes += len(raw)
        self.appended += 1

    def take(self, since: int | None = None, budget: int = ANSWER_BUDGET_BYTES) -> Delivery:
        """Entries for one answer, oldest first: every one queued after mark ``since`` (this
        call's own), and older ones up to ``budget`` bytes; kept until acknowledged."""
        self._requeue_overdue()
        if self._bytes <= budget or (since is None and not self._entries):
            taken = list(self._entries)
            self._entries.clear()
        else:
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
        if not taken:
            return Delivery(0, [])
        size = sum(len(raw) for raw in taken)
        self._bytes -= size
        delivery = Delivery(self._next_id, taken)
        self._next_id += 1
        self._sent[delivery.id] = (self._clock(), taken, size)
        self._sent_bytes += size
        return delivery

    def acknowledge(self, ids: Iterable[int]) -> None:
        """The gateway stored these deliveries: forget them (unknown or repeated ids are ignored)."""
        for delivery_id in ids:
            sent = self._sent.pop(delivery_id, None)
            if sent is not None:
                self._sent_bytes -= sent[2]

    def _requeue_overdue(self) -> None:
        """Deliveries nobody acknowledged in time go back to the front of the queue, in order."""
        if not self._sent:
            return
        horizon = self._clock() - self.redeliver_seconds
        overdue: list[bytes] = []
        for delivery_id, (sent_at, entries, size) in list(self._sent.items()):
            if sent_at > horizon:
                break  # ids are in sending order
            del self._sent[delivery_id]
            self._sent_bytes -= size
            self._bytes += size
            overdue.extend(entries)
        if overdue:
            self._entries.extendleft(reversed(overdue))
            self.redelivered += len(overdue)
