"""Fair decisions: a heavy agent cannot stall a light one, each principal's decisions stay in
order (taint is never read stale), and one agent's flood queues only itself.

A "heavy" call is made deterministic by holding Cedar for one tool on an event, so the tests
assert what finished first, never how long anything took. Each property is shown to fail with
a weakened scheduler: everything decided on the loop, or no per-principal turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.digest import json_digest
from cmcp_core.errors import Code
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, inprocess_enclave
from cmcp_enclave import scheduler as scheduler_mod
from cmcp_enclave.enclave import DecideResult, Enclave
from cmcp_enclave.judging import RequestError
from cmcp_enclave.scheduler import MAX_DEFAULT_WORKERS, DecisionScheduler, default_workers
from tests.helpers.enclave_calls import sid
from tests.helpers.held_cedar import BIG_ARGUMENTS as BIG
from tests.helpers.held_cedar import HELD_TOOL, HeldCedar, held
from tests.paths import EXAMPLES

__all__ = ["held"]  # the fixture

@pytest.fixture
def enclave(tmp_path: Path) -> Enclave:
    return inprocess_enclave(EXAMPLES / "realistic", tmp_path)


async def decide(scheduler: DecisionScheduler, principal: str, session: str, tool: str,
                 args: dict[str, Any], call_id: str) -> DecideResult:
    return await scheduler.decide(
        session_id=sid(scheduler.enclave, session, principal), call_id=call_id, principal=principal,
        method="tools/call", tool=tool,
        arguments_json=json.dumps(args).encode(), arguments_digest=json_digest(args),
        audience=DEFAULT_AUDIENCE)


async def until(event: threading.Event) -> None:
    """Wait for a thread-side event without blocking the loop (bounded)."""
    assert await asyncio.to_thread(event.wait, 10)


async def light_finishes_while_heavy_is_held(scheduler: DecisionScheduler, gate: HeldCedar) -> list[str]:
    finished: list[str] = []

    async def run(name: str, principal: str, tool: str, args: dict[str, Any]) -> None:
        await decide(scheduler, principal, f"s-{principal}", tool, args, f"c-{name}")
        finished.append(name)
        if name == "light":
            gate.released.set()

    gate.release_soon()
    heavy = asyncio.get_running_loop().create_task(run("heavy", "heavy-agent", HELD_TOOL, BIG))
    await asyncio.sleep(0)  # let the heavy call start first
    light = asyncio.get_running_loop().create_task(
        run("light", "light-agent", "crm.lookup_customer", {"customer_id": "c-1"}))
    await asyncio.gather(heavy, light)
    return finished


async def test_a_held_heavy_call_does_not_stall_another_agent(enclave: Enclave, held: HeldCedar) -> None:
    scheduler = DecisionScheduler(enclave, workers=2, processes=False)
    try:
        assert await light_finishes_while_heavy_is_held(scheduler, held) == ["light", "heavy"]
    finally:
        scheduler.close()


async def test_weakened_all_on_the_loop_lets_the_heavy_call_stall_everyone(enclave: Enclave,
                                                                         held: HeldCedar) -> None:
    scheduler = DecisionScheduler(enclave, workers=2, processes=False, inline_bytes=10**9)
    try:
        assert await light_finishes_while_heavy_is_held(scheduler, held) == ["heavy", "light"]
    finally:
        scheduler.close()


async def taint_then_mail(scheduler: DecisionScheduler, gate: HeldCedar) -> str:
    """The same agent reads PHI (held in Cedar) and, meanwhile, sends external mail."""
    gate.release_soon()
    loop = asyncio.get_running_loop()
    read = loop.create_task(decide(scheduler, "agent", "s1", HELD_TOOL, BIG, "c-read"))
    await until(gate.entered)
    mail = loop.create_task(decide(scheduler, "agent", "s2", "email.send_external",
                                   {"to": ["bob@partner.example"]}, "c-mail"))
    await asyncio.sleep(0)
    gate.released.set()
    assert (await read).document["effective"] == "allow"
    return str((await mail).document["effective"])


async def test_one_principal_decides_in_order_so_taint_is_never_read_stale(
        enclave: Enclave, held: HeldCedar) -> None:
    scheduler = DecisionScheduler(enclave, workers=2, processes=False)
    try:
        assert await taint_then_mail(scheduler, held) == "deny"
    finally:
        scheduler.close()


async def test_weakened_without_turns_the_mail_sees_state_from_before_the_phi_read(
        enclave: Enclave, held: HeldCedar, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_mod._Turn, "__init__", _turn_without_lock)
    scheduler = DecisionScheduler(enclave, workers=2, processes=False)
    try:
        assert await taint_then_mail(scheduler, held) == "allow"
    finally:
        scheduler.close()


def _turn_without_lock(self: Any) -> None:
    self.lock = contextlib.nullcontext()  # usable with ``async with``: every decision goes at once
    self.holders = 0


async def test_a_flood_from_one_agent_is_refused_for_that_agent_only(enclave: Enclave,
                                                                    held: HeldCedar) -> None:
    scheduler = DecisionScheduler(enclave, workers=2, processes=False, max_waiting=2)
    loop = asyncio.get_running_loop()
    try:
        first = loop.create_task(decide(scheduler, "flood", "s-f", HELD_TOOL, BIG, "c-1"))
        await until(held.entered)
        second = loop.create_task(decide(scheduler, "flood", "s-f", "crm.lookup_customer",
                                         {"customer_id": "c"}, "c-2"))
        await asyncio.sleep(0)
        assert scheduler.waiting("flood") == 2
        with pytest.raises(RequestError) as refused:
            await decide(scheduler, "flood", "s-f", "crm.lookup_customer", {"customer_id": "c"}, "c-3")
        assert refused.value.code is Code.PRINCIPAL_BUSY
        other = await decide(scheduler, "other", "s-o", "crm.lookup_customer", {"customer_id": "c"}, "c-4")
        assert other.document["effective"] == "allow"
        held.released.set()
        await asyncio.gather(first, second)
        assert scheduler.waiting("flood") == 0
    finally:
        scheduler.close()


async def test_the_worker_processes_decide_exactly_as_the_loop(tmp_path: Path) -> None:
    """Same calls, same documents (but for timestamps and keys): a worker process changes where a
    call is judged, not what is decided."""
    documents = []
    for inline in (0, 10**9):
        enclave = inprocess_enclave(EXAMPLES / "realistic", tmp_path / str(inline))
        scheduler = DecisionScheduler(enclave, workers=1, processes=inline == 0, inline_bytes=inline)
        try:
            calls = [("crm.lookup_customer", {"customer_id": "c"}), ("ehr.read_patient_record", BIG),
                     ("email.send_external", {"to": ["bob@partner.example"]}), ("nope", {})]
            for n, (tool, args) in enumerate(calls):
                doc = (await decide(scheduler, "a", "s", tool, args, f"c{n}")).document
                varying = ("ts", "kid", "prev", "session_id")  # per enclave: its key, its minted ids
                documents.append({k: v for k, v in doc.items() if k not in varying})
        finally:
            scheduler.close()
    half = len(documents) // 2
    assert documents[:half] == documents[half:]
    assert [d["reason_code"] for d in documents[:half]] == [None, None, "POLICY_DENY", "TOOL_NOT_IN_CATALOG"]


async def test_refused_requests_are_refused_on_the_pool_path_too(enclave: Enclave) -> None:
    scheduler = DecisionScheduler(enclave, workers=1, processes=False, inline_bytes=0)
    try:
        with pytest.raises(RequestError) as bad:
            await scheduler.decide(session_id=sid(enclave, "s", "a"), call_id="c", principal="a",
                                   method="tools/call",
                                   tool="crm.lookup_customer", arguments_json=b'{"customer_id": "c"}',
                                   arguments_digest="sha256:" + "0" * 64, audience=DEFAULT_AUDIENCE)
        assert bad.value.code is Code.ARGS_DIGEST_MISMATCH
        assert scheduler.waiting("a") == 0
    finally:
        scheduler.close()


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000\n", None), ("100000 100000\n", 1), ("150000 100000\n", 2), ("1 100000\n", 1),
    ("garbage\n", None), ("", None)])
def test_workers_follow_the_pods_cpu_limit(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    cpus = min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS)
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert default_workers(path) == (min(expected, cpus) if expected else cpus)
    assert default_workers(tmp_path / "absent") == cpus
