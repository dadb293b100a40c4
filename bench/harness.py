"""``python -m bench run``: every figure of issue 9 in one run, side by side with the origin.

Order of a run:

1. start the shared upstream (bare), the origin gateway (its own venv, dev
   mode) in front of it, and our stack (gateway + simulated-TEE enclave +
   guarded upstream of the same code);
2. sequential latency: the three paths interleaved in rounds (direct, ours,
   origin, direct, ...), so background noise lands on all of them alike; full runs add our trail
   on tmpfs and on PostgreSQL, and the product before the trail (``bench/baseline.py``);
3. throughput at 1, 4 and 16 concurrent agents, paths interleaved per level;
4. a streamed tool call (an SSE upstream of its own, 3 progress notifications, then the result)
   beside the plain one, each directly and through ours, interleaved in rounds (``streamed``);
5. enclave decision latency at 20 .. 10,000 policies (``bench/enclave.py``);
6. gateway and enclave RSS with 1, 1,000 and 10,000 open sessions (fresh stack);
7. operator apply-to-routed time (local cluster with its real node), if its harness is there;
8. (full runs) pyinstrument profile of our gateway under 16-agent load.

Each section records ``ok`` / ``skipped`` / ``failed`` with the reason; a
failure never hides the other figures.  Nothing asserts a threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import traceback
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import baseline, loadgen, memory, operator_time, origin, ours, profile_gateway, report
from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    Skip,
    machine_description,
    read_json,
    summarize,
    utc_now,
    write_json,
)
from cmcp_core.audit_store_rows import Row
from cmcp_core.audit_store_sqlite import SqliteAuditStore
from cmcp_devkit import procs
from cmcp_devkit.postgres import PostgresServer, start_postgres
from cmcp_devkit.upstream import BENCH_STREAM_PROGRESS, BENCH_STREAM_TOOL

PATHS = ("direct", "ours", "baseline", "ours-tmpfs", "ours-postgres", "origin", "origin-tmpfs")
# Our audit trail on SQLite on disk (the default), on SQLite on tmpfs (the fsync cost apart, as
# origin-tmpfs does for the origin) and on PostgreSQL (several replicas).
OURS = ("ours", "ours-tmpfs", "ours-postgres")
# Full runs: ours as it was when issue 16 set its latency target (bench/baseline.py).
BASELINE = "baseline"
ORIGINS = ("origin", "origin-tmpfs")


@dataclass(frozen=True)
class Plan:
    mode: str
    seq_rounds: int
    seq_calls_per_round: int
    seq_warmup_first: int
    seq_warmup_round: int
    thr_clients: tuple[int, ...]
    thr_duration_s: float
    thr_warmup_s: float
    thr_rounds: int
    enclave_policies: tuple[int, ...]
    memory_points: tuple[int, ...]
    profile: bool
    profile_seconds: float
    operator_replicas: tuple[int, ...]


FULL = Plan(mode="full", seq_rounds=5, seq_calls_per_round=600, seq_warmup_first=100, seq_warmup_round=20,
            thr_clients=(1, 4, 16), thr_duration_s=5.0, thr_warmup_s=1.0, thr_rounds=2,
            enclave_policies=(20, 100, 1000, 10000), memory_points=(1, 1000, 10000),
            profile=True, profile_seconds=8.0, operator_replicas=(1, 20))
QUICK = Plan(mode="quick", seq_rounds=2, seq_calls_per_round=100, seq_warmup_first=20, seq_warmup_round=10,
             thr_clients=(1, 4, 16), thr_duration_s=1.0, thr_warmup_s=0.5, thr_rounds=1,
             enclave_policies=(20, 1000), memory_points=(1, 100),
             profile=False, profile_seconds=0.0, operator_replicas=())


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Sections:
    """Status, timing and reason of every section."""

    def __init__(self) -> None:
        self.status: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"status": "ok"}
        self.status[name] = entry
        t0 = time.perf_counter()
        log(f"== {name}")
        try:
            yield entry
        except Skip as exc:
            entry["status"] = "skipped"
            entry["reason"] = str(exc)
            log(f"   {name} skipped: {exc}")
        except Exception as exc:
            entry["status"] = "failed"
            entry["reason"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-4000:]
            log(f"   {name} FAILED: {type(exc).__name__}: {exc}")
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 2)


class _NoLoad(Exception):
    """No section of this run needs the servers."""


def _sample_block(s: loadgen.Samples) -> dict[str, Any]:
    return {
        "latency_ms": summarize(s.call_ms),
        "session_open_ms": summarize(s.session_open_ms),
        "session_close_ms": summarize(s.session_close_ms),
        "calls": s.calls,
        "errors": s.errors,
        "warmup_errors": s.warmup_errors,
        "error_examples": s.error_examples,
        "wall_s": round(s.wall_s, 3),
        "cpu_ms_per_call": cpu_per_call(s),
    }


def bootstrap_median_diff(a: list[float], b: list[float], reps: int = 400, seed: int = 9) -> list[float]:
    """95 % bootstrap interval of median(a) - median(b)."""
    rng = random.Random(seed)
    diffs = []
    for _ in range(reps):
        ra = [a[rng.randrange(len(a))] for _ in range(len(a))]
        rb = [b[rng.randrange(len(b))] for _ in range(len(b))]
        diffs.append(statistics.median(ra) - statistics.median(rb))
    diffs.sort()
    return [diffs[int(0.025 * reps)], diffs[int(0.975 * reps) - 1]]


def added(path: list[float], base: list[float]) -> dict[str, Any]:
    """Latency ``path`` adds over ``base`` per percentile, with the p50's 95 % bootstrap interval."""
    s, d = summarize(path), summarize(base)
    out: dict[str, Any] = {f"{p}_ms": s[p] - d[p] for p in ("p50", "p95", "p99", "mean")}
    out["p50_ci95_ms"] = bootstrap_median_diff(path, base)
    return out


def overhead(seq: dict[str, loadgen.Samples]) -> dict[str, Any]:
    """Added latency of each path over direct, per percentile, plus origin/ours ratios."""
    out: dict[str, Any] = {}
    if "direct" not in seq or not seq["direct"].call_ms:
        return out
    for name in (*OURS, BASELINE, *ORIGINS):
        if name not in seq or not seq[name].call_ms:
            continue
        out[name] = added(seq[name].call_ms, seq["direct"].call_ms)
    if "ours" in out and BASELINE in seq and seq[BASELINE].call_ms:  # same direct: the paths' own p50s
        out["ours_minus_baseline"] = {
            "p50_ms": out["ours"]["p50_ms"] - out[BASELINE]["p50_ms"],
            "p50_ci95_ms": bootstrap_median_diff(seq["ours"].call_ms, seq[BASELINE].call_ms)}
    for o in ORIGINS:
        if "ours" in out and o in out:
            out[f"{o}_over_ours"] = {
                p: (out[o][f"{p}_ms"] / out["ours"][f"{p}_ms"]) if out["ours"][f"{p}_ms"] > 0 else None
                for p in ("p50", "p95", "p99")}
    return out


def timed_cpu(target: loadgen.LoadTarget, run: Coroutine[Any, Any, loadgen.Samples]) -> loadgen.Samples:
    """Run ``run`` and record the CPU time each serving process and the load generator used."""
    pids = {**target.pids, "load generator": os.getpid()}
    before = procs.cpu_snapshot(pids)
    s = asyncio.run(run)
    after = procs.cpu_snapshot(pids)
    s.cpu_s = {k: after[k] - before[k] for k in pids}
    return s


def cpu_per_call(s: loadgen.Samples) -> dict[str, float]:
    """CPU milliseconds per tools/call (warm-up and session open/close included, amortised)."""
    n = s.calls + s.warmup_calls
    return {k: v * 1000.0 / n for k, v in s.cpu_s.items()} if n else {}


def run_sequential(targets: dict[str, loadgen.LoadTarget], plan: Plan,
                   metrics_url: str | None = None) -> tuple[dict[str, loadgen.Samples], dict[str, Any]]:
    """Interleaved sequential rounds; also our gateway's own timing histograms over its rounds."""
    seq = {name: loadgen.Samples() for name in targets}
    parts: dict[str, Any] = {}
    for rnd in range(plan.seq_rounds):
        order = list(targets) if rnd % 2 == 0 else list(reversed(list(targets)))
        for name in order:
            warm = plan.seq_warmup_first if rnd == 0 else plan.seq_warmup_round
            before = ours.scrape(metrics_url) if name == "ours" else {}
            run = loadgen.run_sequential(targets[name], plan.seq_calls_per_round, warm)
            s = timed_cpu(targets[name], run)
            if name == "ours" and before:
                for key, val in ours.breakdown(before, ours.scrape(metrics_url)).items():
                    acc = parts.setdefault(key, {"sum_ms": 0.0, "count": 0.0})
                    acc["sum_ms"] += (val["mean_ms"] or 0.0) * val["count"]
                    acc["count"] += val["count"]
            seq[name].extend(s)
            log(f"   round {rnd + 1}/{plan.seq_rounds} {name:<6} p50 "
                f"{summarize(s.call_ms)['p50'] or 0:.3f} ms  errors {s.errors}")
    gw = {k: {"mean_ms": v["sum_ms"] / v["count"] if v["count"] else None, "count": v["count"]}
          for k, v in parts.items()}
    return seq, gw


def run_throughput(targets: dict[str, loadgen.LoadTarget], plan: Plan) -> dict[str, Any]:
    per: dict[str, dict[int, list[loadgen.Samples]]] = {n: {c: [] for c in plan.thr_clients} for n in targets}
    for rnd in range(plan.thr_rounds):
        for c in plan.thr_clients:
            order = list(targets) if rnd % 2 == 0 else list(reversed(list(targets)))
            for name in order:
                s = timed_cpu(targets[name], loadgen.run_concurrent(targets[name], c, plan.thr_duration_s,
                                                                    plan.thr_warmup_s))
                per[name][c].append(s)
                log(f"   round {rnd + 1}/{plan.thr_rounds} {c:>2} clients {name:<6} "
                    f"{s.calls / s.wall_s if s.wall_s else 0:8.1f} calls/s  errors {s.errors}")
    out: dict[str, Any] = {"clients": list(plan.thr_clients), "paths": {}}
    for name, by_c in per.items():
        rows = []
        for c, runs in by_c.items():
            merged = loadgen.Samples()
            for r in runs:
                merged.extend(r)
            rates = [r.calls / r.wall_s for r in runs if r.wall_s > 0]
            rows.append({"clients": c, "calls_per_s": merged.calls / merged.wall_s if merged.wall_s else None,
                         "calls_per_s_per_round": rates, **_sample_block(merged)})
        out["paths"][name] = rows
    for o in (*ORIGINS, "direct"):
        if "ours" in per and o in per:
            ratio = {}
            for ro, rg in zip(out["paths"]["ours"], out["paths"][o], strict=True):
                if ro["calls_per_s"] and rg["calls_per_s"]:
                    ratio[str(ro["clients"])] = ro["calls_per_s"] / rg["calls_per_s"]
            out[f"ours_over_{o}"] = ratio
    return out


def streamed_figure(plan: Plan, work: Path, log_dir: Path,
                    plain: dict[str, loadgen.LoadTarget]) -> dict[str, Any]:
    """A streamed tool call's added latency next to the plain one's, measured in the same rounds.

    Plain: ``bench_echo`` on the JSON upstream, directly and through ``ours`` (the latency
    section's targets). Streamed: ``bench_stream`` (3 progress notifications, then the same
    payload) on an SSE upstream of its own, directly and through a stack of ours whose guarded
    upstream answers in SSE and whose bundle catalogues ``bench_stream``. The four paths are
    interleaved in the latency section's rounds, so background noise lands on all of them alike.
    """
    if "ours" not in plain:
        raise Skip("our gateway is not runnable")
    # The JSON upstream advertises the same tools as the SSE one (same profile).
    stream_def = origin.advertised_tool(plain["direct"].url, BENCH_STREAM_TOOL)
    up_port = procs.free_port()
    up = procs.start("sse-upstream", procs.python_module(
        "cmcp_devkit.upstream", "--profile", "bench", "--sse", "--listen", f"127.0.0.1:{up_port}"),
        log_dir, port=up_port)
    sse_stack: ours.OursStack | None = None
    try:
        procs.wait_port(up_port, timeout=60, proc=up.popen)
        sse_stack = ours.start_stack(work / "ours-streamed", log_dir, tool_def=stream_def, sse=True,
                                     name="ours-streamed")
        targets = {
            "direct": plain["direct"], "ours": plain["ours"],
            "direct-streamed": loadgen.LoadTarget("direct-streamed", f"http://127.0.0.1:{up_port}/mcp",
                                                  tool=BENCH_STREAM_TOOL, progress=BENCH_STREAM_PROGRESS,
                                                  pids={"upstream": up.pid}),
            "ours-streamed": loadgen.LoadTarget("ours-streamed", sse_stack.url, tool=BENCH_STREAM_TOOL,
                                                progress=BENCH_STREAM_PROGRESS, pids=sse_stack.pids()),
        }
        for name in ("direct-streamed", "ours-streamed"):
            smoke = asyncio.run(loadgen.run_sequential(targets[name], 3, 2))
            if smoke.errors:
                raise RuntimeError(f"{name} fails its smoke calls: {smoke.error_examples}")
        seq, _ = run_sequential(targets, plan)
    finally:
        if sse_stack is not None:
            sse_stack.stop()
        up.stop()
    return {
        "progress_notifications": BENCH_STREAM_PROGRESS,
        "paths": {n: _sample_block(s) for n, s in seq.items()},
        "overhead": {"plain": added(seq["ours"].call_ms, seq["direct"].call_ms),
                     "streamed": added(seq["ours-streamed"].call_ms, seq["direct-streamed"].call_ms)},
        "note": f"streamed: `{BENCH_STREAM_TOOL}` answers in SSE with {BENCH_STREAM_PROGRESS} progress "
                "notifications (the call carries `_meta.progressToken`), then the same 1 KiB payload "
                f"as the plain `{loadgen.TOOL_NAME}`; a call is timed until its result has arrived and "
                f"counts as an error unless exactly {BENCH_STREAM_PROGRESS} notifications for its token "
                "came before it. Our gateway relays each notification to the agent's SSE stream as the "
                "upstream writes it (docs/adr/0016), then the result. The streamed pair has its own "
                "SSE upstream (direct) and its own stack of ours (same configuration, its guarded "
                "upstream in SSE, its bundle cataloguing the streamed tool); the plain rows are "
                "re-measured here on the latency section's paths, in the same interleaved rounds as "
                "the streamed ones.",
    }


def enclave_decision(plan: Plan, work: Path) -> dict[str, Any]:
    """Runs ``bench/enclave.py`` (owned by the enclave work) through its CLI and tabulates it.

    A separate process keeps the 10,000-policy bundle out of the harness and
    uses that module's own definition of a decision; nothing is duplicated here.
    """
    if importlib.util.find_spec("bench.enclave") is None:
        raise Skip("bench/enclave.py is not present")
    quick = plan.mode == "quick"
    out = work / "enclave.json"
    argv = procs.python_module(
        "bench.enclave", "--sizes", ",".join(str(n) for n in plan.enclave_policies),
        "--iterations", "300" if quick else "3000",
        "--grpc-sizes", "" if quick else "20,1000",
        "--sessions", "500" if quick else "10000",
        "--fairness-iterations", "100" if quick else "1000",
        "--out", str(out))
    proc = procs.start("bench-enclave", argv, work / "logs", pythonpath=[REPO_ROOT])
    rc = proc.popen.wait(timeout=900)
    if rc != 0 or not out.exists():
        raise RuntimeError(f"bench.enclave exited {rc}: {proc.log_tail(15)}")
    data = read_json(out)
    rows = []
    for size, entry in data.get("sizes", {}).items():
        ip = entry.get("in_process", {})
        lat = ip.get("latency", {})
        cedar = entry.get("cedar_only", {}).get("latency", {})
        row = {"style": entry.get("style", "-"), "policies": entry.get("policies", size),
               "n": lat.get("n"), "p50_us": lat.get("p50"),
               "p95_us": lat.get("p95"), "p99_us": lat.get("p99"), "mean_us": lat.get("mean"),
               "decisions_per_s": ip.get("decisions_per_s"), "cpu_us": ip.get("cpu_us_per_decision"),
               "cedar_only_p50_us": cedar.get("p50"),
               "cedar_only_p99_us": cedar.get("p99"), "startup_s": entry.get("startup_seconds")}
        grpc = entry.get("grpc")
        if grpc:
            row["grpc_seq_p50_us"] = grpc.get("sequential", {}).get("latency", {}).get("p50")
            row["grpc_seq_p99_us"] = grpc.get("sequential", {}).get("latency", {}).get("p99")
            row["grpc_8conc_per_s"] = grpc.get("concurrent_8", {}).get("decisions_per_s")
        rows.append(row)
    rows.sort(key=lambda r: (str(r["style"]), int(r["policies"])))
    return {"rows": rows, "memory_tracemalloc": data.get("memory"), "fairness": data.get("fairness"),
            "decision_definition": data.get("decision_definition"),
            "note": "From `python -m bench.enclave` (in-process; grpc_* columns over gRPC): "
                    f"{data.get('decision_definition')}. Requested sizes "
                    f"{list(plan.enclave_policies)}; `policies` is what the engine actually loaded "
                    "(the realistic example bundle plus generated argument-aware forbids). Style "
                    "`scoped`: each rule names its tool in the policy scope (the engine's scope index "
                    "evaluates only that tool's rules); `condition`: the tool is tested in the `when` "
                    "clause, so every rule is evaluated on every call (worst case).",
            "raw": data.get("sizes")}


def components(plan: Plan, work: Path) -> dict[str, Any]:
    """Per-component figures from the other benchmark modules, run through their own CLIs.

    ``bench/verify.py`` (appraisal time per evidence type) and ``bench/identity.py`` (access
    token verification, uncached and cached) always; ``bench/gateway.py`` (the
    gateway's own stateless-protocol overhead check, a different load generator than ours)
    and ``bench/floor.py`` (the same hops with no product work: the machine's floor) in full
    runs.  Their outputs go to the work dir and are embedded here, so a dev run of
    the harness never overwrites their committed result files.
    """
    out: dict[str, Any] = {}
    quick = plan.mode == "quick"
    jobs: list[tuple[str, list[str]]] = []
    if importlib.util.find_spec("bench.verify") is not None:
        jobs.append(("verify", procs.python_module("bench.verify", "--iterations", "30" if quick else "300",
                                                   "--out", str(work / "verify.json"))))
    if importlib.util.find_spec("bench.identity") is not None:
        jobs.append(("identity", procs.python_module(
            "bench.identity", "--iterations", "200" if quick else "2000",
            "--cached-iterations", "2000" if quick else "20000", "--out", str(work / "identity.json"))))
    if not quick and (Path(__file__).parent / "gateway.py").exists():
        jobs.append(("gateway", [*procs.python_module("bench.gateway"), "--calls", "1000", "--warmup", "100",
                                 "--tp-calls", "2000", "--out", str(work / "gateway.json")]))
        jobs.append(("floor", [*procs.python_module("bench.floor"), "--calls", "1000", "--warmup", "100",
                               "--out", str(work / "floor.json")]))
    if not jobs:
        raise Skip("bench/verify.py, bench/identity.py and bench/gateway.py are not present")
    for name, argv in jobs:
        proc = procs.start(f"bench-{name}", argv, work / "logs", pythonpath=[REPO_ROOT])
        try:
            rc = proc.popen.wait(timeout=600)
        except Exception:
            proc.stop()
            raise
        path = work / f"{name}.json"
        if rc != 0 or not path.exists():
            out[name] = {"status": "failed", "reason": f"exit {rc}: {proc.log_tail(8)}"}
            continue
        data = read_json(path)
        data.pop("machine", None)
        out[name] = data
    return out


def operator_figure(plan: Plan) -> dict[str, Any]:
    if not plan.operator_replicas:
        raise Skip("full runs only (starts the local cluster with its real node; "
                   "the e2e suite covers the operator in CI)")
    result: dict[str, Any] = operator_time.run(
        replicas=list(plan.operator_replicas), quick=plan.mode == "quick", log=log
    )
    return result


def targets_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance acceptance targets (docs/benchmarks.md "Targets"), measured, with margins."""
    rows: list[dict[str, Any]] = []
    ov = results.get("overhead", {}).get("ours")
    if ov:
        rows.append({"target": "gateway+enclave overhead p50 <= 1 ms", "measured_ms": ov["p50_ms"],
                     "limit_ms": 1.0, "met": ov["p50_ms"] <= 1.0, "miss_by_ms": max(0.0, ov["p50_ms"] - 1.0)})
        rows.append({"target": "gateway+enclave overhead p99 <= 3 ms", "measured_ms": ov["p99_ms"],
                     "limit_ms": 3.0, "met": ov["p99_ms"] <= 3.0, "miss_by_ms": max(0.0, ov["p99_ms"] - 3.0)})
    base = results.get("overhead", {}).get(BASELINE)
    if ov and base:  # issue 16: the durable trail costs no added latency over the product before it
        limit = base["p50_ms"]
        rows.append({"target": f"added p50 <= the product's at {baseline.BASELINE_REV[:7]} (before the "
                               f"durable trail) in this run, {limit:.3f} ms",
                     "measured_ms": ov["p50_ms"], "limit_ms": limit, "met": ov["p50_ms"] <= limit,
                     "miss_by_ms": max(0.0, ov["p50_ms"] - limit)})
    if ov:
        rows.append({"target": f"added p50 <= {baseline.BASELINE_ADDED_P50_MS} ms, as read at "
                               f"{baseline.BASELINE_REV[:7]} on a machine whose direct p50 was "
                               f"{baseline.BASELINE_DIRECT_P50_MS} ms",
                     "measured_ms": ov["p50_ms"], "limit_ms": baseline.BASELINE_ADDED_P50_MS,
                     "met": ov["p50_ms"] <= baseline.BASELINE_ADDED_P50_MS,
                     "miss_by_ms": max(0.0, ov["p50_ms"] - baseline.BASELINE_ADDED_P50_MS)})
    thr = results.get("throughput", {}).get("ours_over_origin", {})
    if "16" in thr:
        rows.append({"target": "throughput at 16 clients >= 5x origin", "measured_ratio": thr["16"],
                     "limit_ratio": 5.0, "met": thr["16"] >= 5.0})
    over_direct = results.get("throughput", {}).get("ours_over_direct", {})
    if "16" in over_direct:
        rows.append({"target": "throughput at 16 clients >= 0.7x direct", "measured_ratio": over_direct["16"],
                     "limit_ratio": 0.7, "met": over_direct["16"] >= 0.7})
    enc = results.get("enclave_decision") or {}
    for row in enc.get("rows", []) if isinstance(enc, dict) else []:
        n = row.get("policies")
        p50_us = row.get("p50_us")
        if p50_us is None:
            continue
        style = row.get("style", "-")
        if n == 20:
            rows.append({"target": f"enclave decision p50 <= 150 us at 20 policies ({style})",
                         "measured_us": p50_us, "limit_us": 150.0, "met": p50_us <= 150.0})
        if n == 1000:
            rows.append({"target": f"enclave decision p50 <= 1 ms at 1,000 policies ({style})",
                         "measured_us": p50_us, "limit_us": 1000.0, "met": p50_us <= 1000.0})
    fair = enc.get("fairness") if isinstance(enc, dict) else None
    if isinstance(fair, dict) and fair.get("light_p50_ratio") is not None:
        rows.append({"target": "a heavy agent raises a light agent's decision p50 by at most 2x",
                     "measured_ratio": fair["light_p50_ratio"], "limit_ratio": 2.0,
                     "met": fair["light_p50_ratio"] <= 2.0})
    mem = results.get("memory") or {}
    per = mem.get("bytes_per_session", {}) if isinstance(mem, dict) else {}
    tm = (enc.get("memory_tracemalloc") or {}) if isinstance(enc, dict) else {}
    for label in ("state_only", "with_audit_ring"):
        if isinstance(tm.get(label), dict):
            b = tm[label]["bytes_per_session"]
            rows.append({"target": "enclave memory per open session < 2 KiB "
                                   f"(in-process tracemalloc, {label})",
                         "measured_bytes": b, "limit_bytes": 2048, "met": b < 2048,
                         "sessions": tm.get("sessions")})
    if per.get("enclave") is not None:
        rows.append({"target": "enclave memory per open session < 2 KiB (process RSS slope)",
                     "measured_bytes": per["enclave"],
                     "limit_bytes": 2048, "met": per["enclave"] < 2048,
                     "between_sessions": mem.get("slope_between")})
    return rows


SECTION_NAMES = ("latency", "throughput", "streamed", "profile", "enclave", "components", "memory",
                 "operator")


def commit_probe_ms(directory: Path, n: int = 30) -> dict[str, float]:
    """SQLite commit latency in ``directory`` (p50/max ms): the origin fsyncs its audit DB per call."""
    path = directory / "commit-probe.db"
    con = sqlite3.connect(path)
    try:
        con.execute("create table t (x integer)")
        con.commit()
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            con.execute("insert into t values (?)", (i,))
            con.commit()
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        con.close()
        path.unlink(missing_ok=True)
    return {"p50_ms": statistics.median(times), "max_ms": max(times)}


def trail_commit_probe_ms(directory: Path, n: int = 200, warmup: int = 500) -> dict[str, float]:
    """Our trail's commit latency in ``directory`` (p50/p90 ms): the product's SQLite store, two
    ~1.4 KB entries per transaction as a call's decision and carried outcome, standalone; and the
    disk's own flush under it (``flush_*``: a 4 KiB overwrite and ``fdatasync``, no SQLite).

    Timed after ``warmup`` commits: a new WAL grows to its checkpoint size (1,000 pages, about 250
    commits) and an ``fdatasync`` that extends a file also commits the filesystem's journal, so a
    fresh file's commits cost ~1.5x those of a gateway that has run a while (ADR 0032)."""
    store = SqliteAuditStore(directory / "commit-probe.sqlite")
    times = []
    try:
        for i in range(warmup + n):
            rows = [Row("probe", "probe", 2 * i + k, f"sha256:{2 * i + k:064x}", "decision", int(time.time()),
                        random.randbytes(1400)) for k in (1, 2)]
            t0 = time.perf_counter()
            store.append(rows)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        store.close()
        for leftover in directory.glob("commit-probe.sqlite*"):
            leftover.unlink()
    flushes = _flush_probe_ms(directory / "flush-probe.bin", n)
    q = statistics.quantiles(times[warmup:], n=10, method="inclusive")
    f = statistics.quantiles(flushes, n=10, method="inclusive")
    return {"p50_ms": statistics.median(times[warmup:]), "p90_ms": q[8],
            "flush_p50_ms": statistics.median(flushes), "flush_p90_ms": f[8]}


def _flush_probe_ms(path: Path, n: int) -> list[float]:
    """``n`` flushes of a 4 KiB overwrite in a file already on disk: the floor under any commit here."""
    block = random.randbytes(4096)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, bytes(4096 * 16))
        os.fsync(fd)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, 4096 * (i % 16))
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        os.close(fd)
        path.unlink()


def run(plan: Plan, out_dir: Path = RESULTS_DIR, write_docs: bool | None = None,
        only: frozenset[str] | None = None, origin_state: str = "disk") -> dict[str, Any]:
    """Run the plan (or just the sections in ``only``) and write JSON + Markdown + plots."""

    def want(name: str) -> bool:
        return only is None or name in only

    t_start = time.perf_counter()
    sections = Sections()
    results: dict[str, Any] = {"schema": "cmcp-bench/1", "mode": plan.mode, "started_at": utc_now(),
                               "machine": machine_description(), "plan": plan.__dict__, "notes": []}
    results["notes"].append(
        "Loopback only; load generator, upstream, gateways and enclave share this machine's CPUs. "
        f"Load average at start: {results['machine'].get('loadavg_at_start')}.")
    raw: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="cmcp-bench-"))
    log_dir = work / "logs"
    running: list[Any] = []
    targets: dict[str, loadgen.LoadTarget] = {}
    stack: ours.OursStack | None = None
    pg_stack: ours.OursStack | None = None
    tmpfs_stack: ours.OursStack | None = None
    base_stack: baseline.BaselineStack | None = None
    pg_server: PostgresServer | None = None
    tool_def: dict[str, Any] | None = None
    paths_info: dict[str, Any] = {}
    cleanup: list[Path] = []
    results["paths"] = paths_info
    results["origin_state"] = origin_state
    if only is not None:
        results["only"] = sorted(only)
    try:
        if not (want("latency") or want("throughput") or want("streamed")
                or (plan.profile and want("profile"))):
            raise _NoLoad
        with sections.run("setup:upstream"):
            up_port = procs.free_port()
            up = procs.start("upstream", procs.python_module(
                "cmcp_devkit.upstream", "--profile", "bench", "--listen", f"127.0.0.1:{up_port}"),
                log_dir, port=up_port)
            running.append(up)
            procs.wait_port(up_port, timeout=60, proc=up.popen)
            up_url = f"http://127.0.0.1:{up_port}/mcp"
            targets["direct"] = loadgen.LoadTarget("direct", up_url, pids={"upstream": up.pid})
            tool_def = origin.advertised_tool(up_url)
            paths_info["direct"] = {"url": up_url, "what": "mcp SDK upstream, no gateway",
                                    "upstream": up.log_tail(1), "tool": tool_def}
        if "direct" not in targets:
            raise RuntimeError("the upstream did not start; nothing to measure")

        side_by_side = want("latency") or want("throughput")  # the sections that measure every path
        with sections.run("setup:origin") as sec:
            if not side_by_side:
                raise Skip("only the latency and throughput sections measure the origin")
            t0 = time.perf_counter()
            vdir = origin.ensure_installed(log=log)
            sec["install_seconds"] = round(time.perf_counter() - t0, 2)
            results["origin"] = {"package": origin.ORIGIN_PACKAGE, "version": origin.ORIGIN_VERSION,
                                 "venv": str(vdir), "packages": origin.origin_packages(vdir)}
            variants = {"disk": [("origin", "disk")], "tmpfs": [("origin", "tmpfs")],
                        "both": [("origin", "disk"), ("origin-tmpfs", "tmpfs")]}[origin_state]
            for key, state in variants:
                origin_dir = work / key
                if state == "tmpfs":
                    origin_dir = Path(tempfile.mkdtemp(prefix="cmcp-bench-origin-", dir="/dev/shm"))
                    cleanup.append(origin_dir)
                origin_dir.mkdir(parents=True, exist_ok=True)
                probe = commit_probe_ms(origin_dir)
                og = origin.start_gateway(vdir, origin_dir, targets["direct"].url, log_dir,
                                          name=f"{key}-gateway")
                running.append(og)
                targets[key] = loadgen.LoadTarget(key, f"http://127.0.0.1:{og.port}/mcp", style="origin",
                                              pids={"gateway": og.pid, "upstream": up.pid})
                paths_info[key] = {"url": targets[key].url, "state": state, "state_dir": str(origin_dir),
                                   "what": f"{origin.ORIGIN_PACKAGE} {origin.ORIGIN_VERSION} "
                                           "Phase 1 gateway, CMCP_DEV_MODE=1, enforcing, allow-all bundle, "
                                           f"audit/session SQLite on {state}",
                                   "sqlite_commit_probe": probe, "pid": og.pid}

        with sections.run("setup:ours"):
            reason = ours.gateway_available()
            if reason is not None:
                raise Skip(f"our gateway/enclave are not runnable yet ({reason})")
            stack = ours.start_stack(work / "ours", log_dir, tool_def=tool_def)
            targets["ours"] = loadgen.LoadTarget("ours", stack.url, pids=stack.pids())
            paths_info["ours"] = {"url": stack.url, "pids": stack.pids(), "bundle_hash": stack.bundle_hash,
                                  "trail_commit_probe": trail_commit_probe_ms(work / "ours"),
                                  "what": "cmcp-gateway -> cmcp-enclave (simulated TDX) ; "
                                          "upstream + cmcp guard middleware"}
            # smoke: one call must work before we measure
            s = asyncio.run(loadgen.run_sequential(targets["ours"], 3, 2))
            if s.errors:
                raise RuntimeError(f"our path fails its smoke calls: {s.error_examples}")
        if plan.mode == "full" and side_by_side:
            with sections.run("setup:baseline"):
                base_stack = baseline.start(work / "baseline", log_dir, log=log)
                base_target = loadgen.LoadTarget(BASELINE, base_stack.url, pids=base_stack.pids)
                s = asyncio.run(loadgen.run_sequential(base_target, 3, 2))
                if s.errors:
                    raise RuntimeError(f"the baseline path fails its smoke calls: {s.error_examples}")
                targets[BASELINE] = base_target
                paths_info[BASELINE] = {"url": base_stack.url, "pids": base_stack.pids, "rev": base_stack.rev,
                                        "what": "ours at the commit that set issue 16's latency target "
                                                "(no durable audit trail, gRPC decide stream), its own "
                                                "enclave, guarded upstream and gateway"}
            with sections.run("setup:ours-tmpfs"):
                shm = Path(tempfile.mkdtemp(prefix="cmcp-bench-ours-", dir="/dev/shm"))
                cleanup.append(shm)
                tmpfs_stack = ours.start_stack(work / "ours-tmpfs", log_dir, tool_def=tool_def,
                                               audit_store=f"sqlite:{shm / 'audit.sqlite'}",
                                               name="ours-tmpfs")
                targets["ours-tmpfs"] = loadgen.LoadTarget("ours-tmpfs", tmpfs_stack.url,
                                                           pids=tmpfs_stack.pids())
                paths_info["ours-tmpfs"] = {"url": tmpfs_stack.url, "pids": tmpfs_stack.pids(),
                                            "what": "as ours, the gateway's SQLite audit trail on /dev/shm"}
            with sections.run("setup:ours-postgres"):  # several gateway replicas share one store
                pg_server = start_postgres(log_dir)
                pg_stack = ours.start_stack(work / "ours-postgres", log_dir, tool_def=tool_def,
                                            audit_store=pg_server.dsn, name="ours-postgres")
                targets["ours-postgres"] = loadgen.LoadTarget("ours-postgres", pg_stack.url,
                                                              pids=pg_stack.pids())
                paths_info["ours-postgres"] = {"url": pg_stack.url, "pids": pg_stack.pids(),
                                               "what": "as ours, the gateway's audit trail on PostgreSQL "
                                                       f"({pg_server.dsn.rsplit('@', 1)[-1]})"}
                s = asyncio.run(loadgen.run_sequential(targets["ours-postgres"], 3, 2))
                if s.errors:
                    raise RuntimeError(f"our PostgreSQL path fails its smoke calls: {s.error_examples}")

        ordered = {n: targets[n] for n in PATHS if n in targets}
        # Clean per-path smoke before measuring anything.
        if want("latency"):
            with sections.run("sequential"):
                metrics_url = stack.metrics_url if stack is not None else None
                seq, gw_parts = run_sequential(ordered, plan, metrics_url)
                results["sequential"] = {n: _sample_block(s) for n, s in seq.items()}
                if gw_parts:
                    results["ours_breakdown"] = {
                        "gateway_histograms": gw_parts,
                        "direct_mean_ms": summarize(seq["direct"].call_ms)["mean"] if "direct" in seq
                        else None,
                        "note": "means from cmcp-gateway's Prometheus histograms over the sequential "
                                "rounds (warm-up included); 'decision' = Decide round trip (lean hop, "
                                "ADR 0024) + signature check, 'upstream' = gateway -> guard -> upstream "
                                "tools/call round trip, 'request' = whole handling of every request "
                                "(initialize/DELETE included)."}
                results["overhead"] = overhead(seq)
                raw["sequential_ms"] = {n: [round(v, 4) for v in s.call_ms] for n, s in seq.items()}

        if want("throughput"):
            with sections.run("throughput"):
                results["throughput"] = run_throughput(ordered, plan)

        if stack is not None and side_by_side:
            with sections.run("gateway-rss-after-load"):
                results["rss_after_load_bytes"] = {k: procs.rss_of(v) for k, v in stack.pids().items()}
        for p in running:
            if isinstance(p, procs.Proc) and p.name.endswith("-gateway") and p.name.startswith("origin"):
                results.setdefault("rss_after_load_bytes", {})[p.name] = p.rss_bytes()

        if want("streamed"):
            with sections.run("streamed"):
                results["streamed"] = streamed_figure(plan, work, log_dir, targets)

        if plan.profile and want("profile"):
            with sections.run("profile"):
                if stack is None:
                    raise Skip("our gateway is not runnable")
                results["profile"] = profile_gateway.run(
                    work / "profile", log_dir, tool_def=tool_def,
                    seconds=plan.profile_seconds, out_dir=out_dir, log=log)
    except _NoLoad:
        pass
    finally:
        if stack is not None:
            stack.stop()
        if pg_stack is not None:
            pg_stack.stop()
        if tmpfs_stack is not None:
            tmpfs_stack.stop()
        if base_stack is not None:
            base_stack.stop()
        if pg_server is not None:
            pg_server.stop()
        for p in reversed(running):
            p.stop()
        for d in cleanup:
            shutil.rmtree(d, ignore_errors=True)

    if want("enclave"):
        with sections.run("enclave-decision"):
            results["enclave_decision"] = enclave_decision(plan, work)

    if want("components"):
        with sections.run("components"):
            results["components"] = components(plan, work)

    if want("memory"):
        with sections.run("memory"):
            reason = ours.gateway_available()
            if reason is not None:
                raise Skip(f"our gateway/enclave are not runnable yet ({reason})")
            results["memory"] = run_memory(plan, work, log_dir, tool_def)

    if want("operator"):
        with sections.run("operator"):
            results["operator"] = operator_figure(plan)

    results["targets"] = targets_table(results)
    results["sections"] = sections.status
    results["finished_at"] = utc_now()
    results["duration_s"] = round(time.perf_counter() - t_start, 1)
    results["raw"] = raw
    results["logs_dir"] = str(log_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = plan.mode if only is None else f"{plan.mode}-only-{'+'.join(sorted(only))}"
    json_path = write_json(out_dir / f"{stem}.json", results)
    log(f"results: {json_path}")
    docs = (plan.mode == "full" and only is None) if write_docs is None else write_docs
    md = report.write(results, docs=docs, stem=stem)
    log(f"report: {md}")
    # keep logs on failure for inspection, drop the work dir otherwise
    failed = [k for k, v in sections.status.items() if v["status"] == "failed"]
    if failed:
        log(f"sections failed: {failed}; logs kept in {log_dir}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return results


def run_memory(plan: Plan, work: Path, log_dir: Path, tool_def: dict[str, Any] | None) -> dict[str, Any]:
    """A fresh stack of ours with raised session caps; RSS at each open-session count."""
    cap = max(plan.memory_points) * 2 + 100
    mem_work = work / "memory"
    stack = None
    try:
        stack = ours.start_stack(mem_work, log_dir, tool_def=tool_def,
                                 enclave_args=("--max-sessions", str(cap)),
                                 gateway_limits={"max_sessions": cap, "max_sessions_per_agent": cap})
        target = loadgen.LoadTarget("ours", stack.url)
        # warm the path (imports, connections, caches) before the first reading
        asyncio.run(loadgen.run_sequential(target, 20, 0))
        enclave_pid = int(stack.enclave.process.pid)
        pids: dict[str, int | list[int]] = {"gateway": stack.gateway.pid, "enclave": enclave_pid,
                                            "enclave workers": procs.descendants(enclave_pid)}
        res = memory.measure(target, pids, plan.memory_points, log=log)
        res["note"] = ("sessions opened through the gateway (initialize + one tools/call each), "
                       "never closed; VmRSS; 'enclave workers' = the enclave's decision worker "
                       "processes, their fork server and resource tracker, summed (pages they share "
                       "are counted in each); per-session = slope between the last two points")
        return res
    finally:
        if stack is not None:
            stack.stop()
