"""The outbox: every entry leaves, an answer always carries its own, answers stay bounded, and a
delivery nobody acknowledged leaves again."""

from __future__ import annotations

from cmcp_enclave.outbox import ANSWER_BUDGET_BYTES, AuditOutbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_everything_leaves_once_in_order() -> None:
    box = AuditOutbox(1024)
    for i in range(5):
        box.put(b"e%d" % i)
    first = box.take()
    assert first.entries == [b"e0", b"e1", b"e2", b"e3", b"e4"] and first.id > 0
    box.acknowledge([first.id])
    assert box.take() == (0, []) and len(box) == 0 and box.size == 0


def test_an_answer_carries_its_own_entries_even_behind_a_backlog() -> None:
    box = AuditOutbox(10 * ANSWER_BUDGET_BYTES)
    backlog = [bytes([65 + i % 26]) * 1000 for i in range(600)]  # ~600 KB waiting
    for raw in backlog:
        box.put(raw)
    mark = box.appended
    box.put(b"own-decision")
    first = box.take(mark).entries
    assert first[-1] == b"own-decision"  # never left behind
    assert sum(len(r) for r in first) <= ANSWER_BUDGET_BYTES
    rest: list[bytes] = []
    while len(box):
        rest.extend(box.take().entries)
    assert first[:-1] + rest == backlog  # oldest first, nothing lost, nothing twice


def test_full_counts_what_is_queued_and_what_no_gateway_acknowledged() -> None:
    box = AuditOutbox(10)
    box.put(b"12345")
    assert not box.full
    box.put(b"67890")
    assert box.full
    delivery = box.take()
    assert box.full and len(box) == 0 and box.unacknowledged == 2  # carried out, not yet stored
    box.acknowledge([delivery.id])
    assert not box.full and box.size == 0 and box.unacknowledged == 0


def test_a_delivery_nobody_acknowledged_leaves_again_first_and_in_order() -> None:
    """The answer was lost on its way (a deadline, a broken connection, a gateway that died
    before its commit): its entries go out again with a later answer, ahead of newer ones."""
    clock = Clock()
    box = AuditOutbox(1 << 20, redeliver_seconds=60.0, clock=clock)
    box.put(b"decision-1")
    lost = box.take()
    box.put(b"outcome-1")
    kept = box.take()
    clock.now += 59.0
    box.put(b"decision-2")
    recent = box.take()
    assert recent.entries == [b"decision-2"]  # nothing overdue yet
    box.acknowledge([kept.id])  # that answer arrived; the first did not
    clock.now += 1.0
    mark = box.appended
    box.put(b"decision-3")
    again = box.take(mark)
    assert again.entries == [b"decision-1", b"decision-3"]  # the lost one first; decision-2 is not due
    assert again.id not in (lost.id, kept.id, recent.id) and box.redelivered == 1
    box.acknowledge([lost.id])  # the stale id of an answer that arrived after all: ignored
    assert box.unacknowledged == 3
    box.acknowledge([again.id, again.id, recent.id])
    assert box.unacknowledged == 0 and box.size == 0


def test_acknowledged_deliveries_never_leave_again() -> None:
    clock = Clock()
    box = AuditOutbox(1 << 20, redeliver_seconds=60.0, clock=clock)
    for i in range(3):
        box.put(b"e%d" % i)
        box.acknowledge([box.take().id])
    clock.now += 3600
    assert box.take() == (0, []) and box.redelivered == 0
