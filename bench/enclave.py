"""Enclave decision benchmark: in-process and over gRPC, at 20 / 100 / 1,000 / 10,000 policies.

``python -m bench.enclave [--sizes 20,100,1000,10000] [--iterations 3000] [--grpc-iterations 2000]``

A *decision* is the whole trusted path: argument digest check, Cedar (pre-parsed PolicySet and
Entities), Ed25519 decision signature (which is also the audit entry's), audit entry hashing,
Ed25519 permit on allow. Bundles are the realistic example plus generated argument-aware
``forbid`` rules spread round-robin over the catalogued tools, in two styles that decide the
same: ``scoped`` (the tool in the policy scope, ``resource == cMCP::Tool::"x"``: the engine's
scope index evaluates only that tool's rules) and ``condition`` (``resource.name == "x"`` in the
``when`` clause: every rule is evaluated on every call). Also measured: Cedar alone, and
per-session memory (tracemalloc) for 10,000 sessions. Writes ``bench/results/enclave.json``.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import grpc

from bench.common import RESULTS_DIR, machine_description, summarize, utc_now, write_json
from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.enclave import NO_TRAIL, carried, inprocess_enclave, start_enclave
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.engine import SessionView, StateFacts
from cmcp_enclave.sessions import EnclaveLimits

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "examples" / "realistic"
AUDIENCE = "urn:cmcp:bench-upstream"
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("web.search", {"query": "quarterly results"}),
    ("crm.lookup_customer", {"customer_id": "c-1042"}),
    ("payments.transfer", {"amount": 250, "currency": "EUR", "to": "acct-9"}),
    ("slack.post_internal", {"channel": "ops", "body": "done"}),
    ("payments.transfer", {"amount": 50_000, "currency": "EUR", "to": "acct-9"}),  # deny
]


def make_bundle(dest: Path, policies: int, style: str = "scoped") -> Path:
    """Realistic example + generated forbids (never matching) up to ``policies`` in total."""
    shutil.copytree(BASE, dest)
    base_count = sum(p.read_text().count("@id(") for p in (dest / "policies").glob("*.cedar"))
    tools = [e["tool_name"] for e in json.loads((dest / "catalog.json").read_text()) if "tool_name" in e]
    extra = max(0, policies - base_count)
    lines = []
    for i in range(extra):
        tool = tools[i % len(tools)]
        cond = f"context.arguments has amount && context.arguments.amount > {100_000 + i}"
        if style == "scoped":
            lines.append(f'@id("gen-{i}")\nforbid (principal, action == cMCP::Action::"call_tool", '
                         f'resource == cMCP::Tool::"{tool}")\nwhen {{ {cond} }};\n')
        else:
            lines.append(f'@id("gen-{i}")\nforbid (principal, action == cMCP::Action::"call_tool", '
                         f'resource)\nwhen {{ resource.name == "{tool}" && {cond} }};\n')
    (dest / "policies" / "generated.cedar").write_text("".join(lines))
    return dest


def _inprocess(bundle: Path, work: Path, limits: EnclaveLimits | None = None) -> Enclave:
    return inprocess_enclave(bundle, work, audience=AUDIENCE, limits=limits)


def bench_inprocess(enc: Enclave, iterations: int) -> dict[str, Any]:
    prepared = [(tool, json.dumps(args).encode(), json_digest(args)) for tool, args in CALLS]
    samples: list[float] = []
    cpu = 0
    slots = [enc.open_session(f"agent-{n}", trail=NO_TRAIL) for n in range(200)]  # the enclave mints the ids
    for i in range(iterations + 200):
        tool, raw, digest = prepared[i % len(prepared)]
        slot = i % 200
        session = slots[slot]
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        enc.decide(session_id=session, call_id=f"c{i}", principal=f"agent-{slot}", method="tools/call",
                   tool=tool, arguments_json=raw, arguments_digest=digest, audience=AUDIENCE)
        carried(enc)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        if i >= 200:
            samples.append((t1 - t0) / 1000.0)
            cpu += c1 - c0
        if enc.sessions[session].call_count > 150:  # keep the call-budget rule out of the way
            enc.close(session)
            enc.closed.clear()
            enc.principals.reset(f"agent-{slot}")  # the principal's budget too (bench only)
            slots[slot] = enc.open_session(f"agent-{slot}", trail=NO_TRAIL)
            carried(enc)
    total_s = sum(samples) / 1e6
    # CPU time the decision thread actually ran: on a shared, overloaded machine wall-clock
    # latency includes waiting for a core; this is the cost of the work itself.
    return {"latency": summarize(samples, "us"), "decisions_per_s": len(samples) / total_s,
            "cpu_us_per_decision": cpu / 1000.0 / len(samples)}


def bench_cedar_only(enc: Enclave, iterations: int) -> dict[str, Any]:
    facts = StateFacts("public", 0, frozenset(), 0, frozenset(), "")
    view = SessionView("s", principal=facts, session=facts)
    samples = []
    for i in range(iterations):
        tool, args = CALLS[i % len(CALLS)]
        t0 = time.perf_counter_ns()
        enc.engine.evaluate("tools/call", "agent", tool, args, view)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return {"latency": summarize(samples, "us")}


async def _grpc_run(address: str, iterations: int, concurrency: int) -> dict[str, Any]:
    prepared = [(tool, json.dumps(args).encode(), json_digest(args)) for tool, args in CALLS]
    samples: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        counter = iter(range(10**9))
        sessions: dict[tuple[int, int], str] = {}

        async def session_for(w: int, block: int) -> str:
            """One enclave-minted session per worker and 100 calls (principal per session)."""
            if (w, block) not in sessions:
                first = enclave_pb2.OpenSessionRequest(principal=f"agent-{concurrency}-{w}-{block}",
                                                       trail=NO_TRAIL)
                opened = await stub.OpenSession(first)
                sessions[(w, block)] = opened.session_id
            return sessions[(w, block)]

        async def worker(w: int, n: int, record: bool) -> None:
            for _ in range(n):
                i = next(counter)
                tool, raw, digest = prepared[i % len(prepared)]
                block = i // 100
                session = await session_for(w, block)
                req = enclave_pb2.DecideRequest(
                    session_id=session, call_id=f"c{i}", principal=f"agent-{concurrency}-{w}-{block}",
                    method="tools/call",
                    tool=tool, arguments_json=raw, arguments_digest=digest, audience=AUDIENCE)
                t0 = time.perf_counter_ns()
                await stub.Decide(req)
                if record:
                    samples.append((time.perf_counter_ns() - t0) / 1000.0)

        await asyncio.gather(*(worker(w, 50, False) for w in range(concurrency)))
        started = time.perf_counter()
        per = iterations // concurrency
        await asyncio.gather(*(worker(w, per, True) for w in range(concurrency)))
        wall = time.perf_counter() - started
    return {"concurrency": concurrency, "latency": summarize(samples, "us"),
            "decisions_per_s": len(samples) / wall}


def bench_grpc(bundle: Path, work: Path, iterations: int) -> dict[str, Any]:
    proc = start_enclave(bundle, work, audience=AUDIENCE, extra_args=["--max-sessions", "100000"],
                         timeout=120)
    try:
        return {"sequential": asyncio.run(_grpc_run(proc.address, iterations, 1)),
                "concurrent_8": asyncio.run(_grpc_run(proc.address, iterations, 8))}
    finally:
        proc.stop()


HEAVY_ARGUMENTS = {"query": "q", "items": [{"k": "v" * 50, "n": n} for n in range(3000)]}  # ~200 KiB
LIGHT_CALL = ("crm.lookup_customer", {"customer_id": "c-1"})


async def _fairness_run(address: str, iterations: int, heavy_in_flight: int) -> dict[str, Any]:
    """A light agent's sequential decisions over ONE DecideStream (as a gateway multiplexes its
    agents), while a heavy agent keeps ``heavy_in_flight`` calls with ~200 KiB arguments on it."""
    light_raw, light_digest = json.dumps(LIGHT_CALL[1]).encode(), json_digest(LIGHT_CALL[1])
    heavy_raw, heavy_digest = json.dumps(HEAVY_ARGUMENTS).encode(), json_digest(HEAVY_ARGUMENTS)
    outgoing: asyncio.Queue[Any] = asyncio.Queue()
    waiting: dict[str, asyncio.Future[Any]] = {}
    light: list[float] = []
    heavy: list[float] = []
    done = asyncio.Event()

    sessions: dict[tuple[str, int], str] = {}
    stub: Any = None

    async def requests() -> Any:
        while (request := await outgoing.get()) is not None:
            yield request

    async def session_of(principal: str, n: int) -> str:
        """A fresh enclave-minted session every 100 calls (opened before the timed call)."""
        key = (principal, n // 100)
        if key not in sessions:
            first = enclave_pb2.OpenSessionRequest(principal=principal, trail=NO_TRAIL)
            opened = await stub.OpenSession(first)
            sessions[key] = opened.session_id
        return sessions[key]

    async def ask(principal: str, n: int, tool: str, raw: bytes, digest: str) -> float:
        call_id = f"{principal}-{heavy_in_flight}-{n}"
        session_id = await session_of(principal, n)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting[call_id] = reply
        t0 = time.perf_counter_ns()
        outgoing.put_nowait(enclave_pb2.DecideRequest(
            session_id=session_id, call_id=call_id, principal=principal,
            method="tools/call", tool=tool, arguments_json=raw, arguments_digest=digest,
            audience=AUDIENCE))
        answer = await reply
        if answer.error_code:
            raise RuntimeError(f"{call_id}: {answer.error_code} {answer.error_detail}")
        return (time.perf_counter_ns() - t0) / 1000.0

    async def heavy_agent(lane: int) -> None:
        n = 0
        while not done.is_set():
            heavy.append(await ask(f"heavy{lane}", n, "web.search", heavy_raw, heavy_digest))
            n += 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        stream = stub.DecideStream(requests())

        async def receive() -> None:
            async for reply in stream:
                waiting.pop(reply.call_id).set_result(reply)

        loop = asyncio.get_running_loop()
        receiver = loop.create_task(receive())
        heavies = [loop.create_task(heavy_agent(lane)) for lane in range(heavy_in_flight)]
        for n in range(iterations + 20):
            took = await ask("light", n, LIGHT_CALL[0], light_raw, light_digest)
            if n >= 20:
                light.append(took)
        done.set()
        await asyncio.gather(*heavies)
        outgoing.put_nowait(None)
        await receiver
    return {"heavy_in_flight": heavy_in_flight, "light": summarize(light, "us"),
            "heavy": summarize(heavy, "us") if heavy else None}


def bench_fairness(bundle: Path, work: Path, iterations: int) -> dict[str, Any]:
    """How much a heavy agent slows a light one on the same enclave (the light agent's p50 alone
    and beside 2 heavy calls always in flight); the target is at most 2x."""
    proc = start_enclave(bundle, work, audience=AUDIENCE, extra_args=["--max-sessions", "100000"],
                         timeout=120)
    try:
        alone = asyncio.run(_fairness_run(proc.address, iterations, 0))
        beside = asyncio.run(_fairness_run(proc.address, iterations, 2))
    finally:
        proc.stop()
    return {"heavy_argument_bytes": len(json.dumps(HEAVY_ARGUMENTS)), "alone": alone, "beside_heavy": beside,
            "light_p50_ratio": beside["light"]["p50"] / alone["light"]["p50"]}


def bench_memory(bundle: Path, work: Path, sessions: int) -> dict[str, Any]:
    """Bytes per open session with one decided call: the enclave keeps no audit entries (they
    leave in each answer), so session state is all there is (``state_only``)."""
    out: dict[str, Any] = {"sessions": sessions}
    tool, args = CALLS[0]
    raw, digest = json.dumps(args).encode(), json_digest(args)
    enc = _inprocess(bundle, work / "state_only", EnclaveLimits(max_sessions=sessions + 1))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(sessions):
        principal = f"agent-{i // 100}"  # under the bundle's per-principal call budget
        session = enc.open_session(principal, trail=NO_TRAIL)
        enc.decide(session_id=session, call_id="c", principal=principal, method="tools/call", tool=tool,
                   arguments_json=raw, arguments_digest=digest, audience=AUDIENCE)
        carried(enc)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    out["state_only"] = {"bytes_total": grown, "bytes_per_session": grown / sessions,
                         "entries_per_session": 0}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="20,100,1000,10000")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--grpc-iterations", type=int, default=2000)
    p.add_argument("--grpc-sizes", default="20,1000")
    p.add_argument("--styles", default="scoped,condition")
    p.add_argument("--condition-max", type=int, default=1000,
                   help="largest size run in the condition style (10,000 unindexed rules take ~100 ms each)")
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--fairness-iterations", type=int, default=300)
    p.add_argument("--out", default=str(RESULTS_DIR / "enclave.json"))
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    grpc_sizes = {int(s) for s in args.grpc_sizes.split(",") if s}
    result: dict[str, Any] = {"benchmark": "enclave", "started": utc_now(), "machine": machine_description(),
                              "argv": sys.argv[1:],
                              "decision_definition": "digest check + Cedar + Ed25519 decision signature + "
                                                     "signed audit entry + permit on allow",
                              "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = [(st, sz) for st in args.styles.split(",") for sz in sizes
                if st != "condition" or sz <= args.condition_max]
        for style, size in runs:
            bundle = make_bundle(work / f"bundle-{style}-{size}", size, style)
            t0 = time.perf_counter()
            enc = _inprocess(bundle, work / f"e-{style}-{size}")
            load_s = time.perf_counter() - t0
            iters = args.iterations if size <= 1000 else max(300, args.iterations // 10)
            entry: dict[str, Any] = {
                "style": style, "policies": len(enc.engine.labels), "startup_seconds": load_s,
                "in_process": bench_inprocess(enc, iters),
                "cedar_only": bench_cedar_only(enc, iters),
            }
            if size in grpc_sizes and style == "scoped":
                entry["grpc"] = bench_grpc(bundle, work / f"g-{size}", args.grpc_iterations)
            result["sizes"][f"{style}-{size}"] = entry
            ip = entry["in_process"]
            print(f"{style:>9} {size:>6} policies: cpu {ip['cpu_us_per_decision']:.0f} us/decision; "
                  f"in-process p50 {ip['latency']['p50']:.1f} us p99 "
                  f"{ip['latency']['p99']:.1f} us, {ip['decisions_per_s']:.0f}/s; cedar p50 "
                  f"{entry['cedar_only']['latency']['p50']:.1f} us", flush=True)
            if "grpc" in entry:
                g = entry["grpc"]
                print(f"        grpc seq p50 {g['sequential']['latency']['p50']:.0f} us p99 "
                      f"{g['sequential']['latency']['p99']:.0f} us "
                      f"{g['sequential']['decisions_per_s']:.0f}/s;"
                      f" 8 concurrent {g['concurrent_8']['decisions_per_s']:.0f}/s", flush=True)
        result["fairness"] = bench_fairness(make_bundle(work / "bundle-fair", 20), work / "fair",
                                            args.fairness_iterations)
        f = result["fairness"]
        print(f"fairness: light p50 {f['alone']['light']['p50']:.0f} us alone, "
              f"{f['beside_heavy']['light']['p50']:.0f} us beside a heavy agent "
              f"({f['light_p50_ratio']:.2f}x)", flush=True)
        result["memory"] = bench_memory(make_bundle(work / "bundle-mem", 20), work / "mem", args.sessions)
        print(f"memory: {result['memory']}", flush=True)
    result["finished"] = utc_now()
    with contextlib.suppress(OSError):
        result["loadavg_at_end"] = list(os.getloadavg())
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
