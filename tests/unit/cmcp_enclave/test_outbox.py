"""The outbox: every entry leaves once, an answer always carries its own, answers stay bounded."""

from __future__ import annotations

from cmcp_enclave.outbox import ANSWER_BUDGET_BYTES, AuditOutbox


def test_everything_leaves_once_in_order() -> None:
    box = AuditOutbox(1024)
    for i in range(5):
        box.put(b"e%d" % i)
    assert box.take() == [b"e0", b"e1", b"e2", b"e3", b"e4"]
    assert box.take() == [] and len(box) == 0 and box.size == 0


def test_an_answer_carries_its_own_entries_even_behind_a_backlog() -> None:
    box = AuditOutbox(10 * ANSWER_BUDGET_BYTES)
    backlog = [bytes([65 + i % 26]) * 1000 for i in range(600)]  # ~600 KB waiting
    for raw in backlog:
        box.put(raw)
    mark = box.appended
    box.put(b"own-decision")
    first = box.take(mark)
    assert first[-1] == b"own-decision"  # never left behind
    assert sum(len(r) for r in first) <= ANSWER_BUDGET_BYTES
    rest: list[bytes] = []
    while len(box):
        rest.extend(box.take())
    assert first[:-1] + rest == backlog  # oldest first, nothing lost, nothing twice


def test_full_is_reported_at_the_bound() -> None:
    box = AuditOutbox(10)
    box.put(b"12345")
    assert not box.full
    box.put(b"67890")
    assert box.full
    box.take()
    assert not box.full
