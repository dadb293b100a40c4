"""The gateway's audit writer: stores every answer's entries, fails closed, keeps what it could
not write and writes it first next time."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.audit_store import Row, open_audit_store
from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.audit_writer import AuditWriter


def _entry(seq: int, digest: str = "a") -> bytes:
    return json.dumps({"kid": "k", "session_id": "s", "seq": seq, "hash": digest, "kind": "decision",
                       "ts": seq, "data": {}}).encode()


class Flaky:
    """A store that is down until told otherwise."""

    def __init__(self, inner: object) -> None:
        self.inner, self.down = inner, True

    def append(self, rows: Sequence[Row]) -> int:
        if self.down:
            raise CmcpError(Code.AUDIT_STORE_UNAVAILABLE, "down")
        return self.inner.append(rows)  # type: ignore[attr-defined, no-any-return]


async def test_entries_are_stored_and_a_failed_write_is_kept_for_the_next(tmp_path: Path) -> None:
    real = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    flaky = Flaky(real)
    writer = AuditWriter(flaky)  # type: ignore[arg-type]
    with pytest.raises(CmcpError) as err:
        await writer.record([_entry(0)])
    assert err.value.code is Code.AUDIT_STORE_UNAVAILABLE and len(writer.backlog) == 1
    flaky.down = False
    await writer.record([_entry(1)])
    assert writer.backlog == [] and writer.written == 2
    assert [json.loads(e)["seq"] for e in real.entries("k", "s")] == [0, 1]
    real.close()


async def test_the_backlog_is_bounded_and_flush_never_raises(tmp_path: Path) -> None:
    flaky = Flaky(None)
    writer = AuditWriter(flaky, max_backlog=3)  # type: ignore[arg-type]
    for seq in range(5):
        with pytest.raises(CmcpError):
            await writer.record([_entry(seq)])
    assert [r.seq for r in writer.backlog] == [2, 3, 4]  # the oldest went (and were logged as lost)
    await writer.flush()
    assert len(writer.backlog) == 3


async def test_a_fork_is_raised_and_not_retried(tmp_path: Path) -> None:
    writer = AuditWriter(open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}"))
    await writer.record([_entry(0)])
    with pytest.raises(CmcpError) as err:
        await writer.record([_entry(0, digest="b")])
    assert err.value.code is Code.AUDIT_FORK and writer.backlog == []
    writer.store.close()


class Counting:
    """A real store that counts its transactions, and holds the first one until released."""

    def __init__(self, inner: object) -> None:
        self.inner, self.transactions = inner, []  # type: ignore[var-annotated]
        self.release = threading.Event()

    def append(self, rows: Sequence[Row]) -> int:
        self.release.wait(10)
        self.transactions.append([r.seq for r in rows])
        return self.inner.append(rows)  # type: ignore[attr-defined, no-any-return]


async def test_answers_that_arrive_during_a_write_share_the_next_transaction(tmp_path: Path) -> None:
    """Group commit: three callers, two transactions (the one in flight and one for the rest)."""
    store = Counting(open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}"))
    writer = AuditWriter(store)  # type: ignore[arg-type]
    first = writer.submit([_entry(0)])  # starts at once, held in the store
    later = [writer.submit([_entry(1)]), writer.submit([_entry(2), _entry(3)])]
    store.release.set()
    await asyncio.gather(first, *later)
    assert store.transactions == [[0], [1, 2, 3]] and writer.written == 4


async def _honest_and_forked_in_one_write(writer: AuditWriter) -> list[object]:
    """An honest answer and a forked one arrive while a write is in flight, so they share the
    next transaction; what each caller gets."""
    await writer.record([_entry(0)])
    store = Counting(writer.store)
    writer.store = store  # type: ignore[assignment]
    held = writer.submit([_entry(1)])
    honest, forked = writer.submit([_entry(2)]), writer.submit([_entry(0, digest="b")])
    store.release.set()
    await held
    return await asyncio.gather(honest, forked, return_exceptions=True)


async def test_a_fork_in_a_shared_write_fails_only_its_own_caller(tmp_path: Path) -> None:
    real = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    honest, forked = await _honest_and_forked_in_one_write(AuditWriter(real))
    assert honest is None
    assert isinstance(forked, CmcpError) and forked.code is Code.AUDIT_FORK
    assert [json.loads(e)["seq"] for e in real.entries("k", "s")] == [0, 1, 2]
    real.close()


async def test_weakened_writer_without_per_caller_retry_fails_an_honest_caller(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above bites: written as one transaction only, the honest call fails with the fork."""
    real = open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}")
    writer = AuditWriter(real)

    def all_or_nothing(parts: list[Any]) -> None:
        try:
            writer.written += writer.store.append([row for part in parts for row in part.rows])
        except CmcpError as exc:
            for part in parts:
                part.error = exc

    monkeypatch.setattr(writer, "_write", all_or_nothing)
    honest, _ = await _honest_and_forked_in_one_write(writer)
    assert isinstance(honest, CmcpError) and honest.code is Code.AUDIT_FORK
    real.close()


async def test_the_only_call_in_flight_writes_inline_and_two_hand_off_to_the_thread(tmp_path: Path) -> None:
    """Inline only when nothing else waits on the event loop; the entries are durable either way."""
    writer = AuditWriter(open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}"))
    with writer.call():
        alone = writer.submit([_entry(0)])
        assert alone.done() and alone.exception() is None  # committed before submit returned
        with writer.call():
            shared = writer.submit([_entry(1)])
            assert not shared.done()  # in the writer thread: the other call's work goes on
            await shared
    assert [json.loads(e)["seq"] for e in writer.store.entries("k", "s")] == [0, 1]
    writer.store.close()


async def test_an_inline_write_that_breaks_unexpectedly_fails_closed_and_the_next_one_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the write (not a store error) fails its caller with a code, as in the thread, and
    leaves the writer free: the next answer is written."""
    writer = AuditWriter(open_audit_store(f"sqlite:{tmp_path / 'audit.sqlite'}"))
    real = writer.store.append
    monkeypatch.setattr(writer.store, "append", lambda rows: 1 // 0)
    with writer.call():
        with pytest.raises(CmcpError) as failed:
            await writer.submit([_entry(0)])
        assert failed.value.code is Code.AUDIT_STORE_UNAVAILABLE and writer.backlog
        monkeypatch.setattr(writer.store, "append", real)
        await writer.submit([_entry(1)])  # the kept entry goes first
    assert [json.loads(e)["seq"] for e in writer.store.entries("k", "s")] == [0, 1]
    writer.store.close()
