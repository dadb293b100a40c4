"""Render a result document as Markdown tables + matplotlib PNG plots.

Full runs regenerate ``docs/benchmarks.md`` with plots in ``docs/img/``;
quick runs (CI smoke) write ``bench/results/quick.md`` with plots in
``bench/results/plots-quick/`` and leave ``docs/`` alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_DIR

DOCS_MD = REPO_ROOT / "docs" / "benchmarks.md"
DOCS_IMG = REPO_ROOT / "docs" / "img"
COLORS = {"direct": "#4c72b0", "ours": "#55a868", "ours-tmpfs": "#64b5cd", "ours-postgres": "#8172b3",
          "baseline": "#937860", "origin": "#c44e52", "origin-tmpfs": "#dd8452"}
LABELS = {"direct": "direct (no gateway)", "ours": "ours: gateway + enclave + guard",
          "ours-tmpfs": "ours, audit trail SQLite on tmpfs",
          "ours-postgres": "ours, audit trail on PostgreSQL",
          "baseline": "ours before the durable trail (5c14bc2)",
          "origin": "origin cmcp-runtime 0.7.1", "origin-tmpfs": "origin, SQLite on tmpfs"}
ORIGINS = ("origin", "origin-tmpfs")


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.{digits}f}"
    return str(v)


def _errs(block: dict[str, Any]) -> str:
    w = block.get("warmup_errors") or 0
    return f"{block.get('errors', 0)}" + (f" (+{w} in warm-up)" if w else "")


def _mib(b: Any) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


# ----------------------------------------------------------------------------------------- plots
def _plots(res: dict[str, Any], img_dir: Path, prefix: str) -> dict[str, str]:
    # matplotlib is slow to import and needed only when charts are drawn; the backend must be
    # chosen before pyplot is imported, hence the order.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}

    raw = res.get("raw", {}).get("sequential_ms", {})
    if raw:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for name, vals in raw.items():
            if not vals:
                continue
            xs = sorted(vals)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax1.plot(xs, ys, label=LABELS.get(name, name), color=COLORS.get(name))
        ax1.set_xscale("log")
        ax1.set_xlabel("tools/call latency (ms, log)")
        ax1.set_ylabel("fraction of calls")
        ax1.set_title("Sequential latency CDF")
        ax1.grid(True, which="both", alpha=0.3)
        ax1.legend(fontsize=8)
        names = [n for n in raw if raw[n]]
        ax2.boxplot([raw[n] for n in names], tick_labels=list(names), showfliers=False, whis=(1, 99))
        ax2.set_ylabel("latency (ms), whiskers p1–p99")
        ax2.set_title("Sequential latency")
        ax2.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = img_dir / f"{prefix}latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out["latency"] = path.name

    thr = res.get("throughput", {}).get("paths", {})
    if thr:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for name, rows in thr.items():
            cs = [r["clients"] for r in rows]
            ax1.plot(cs, [r["calls_per_s"] or 0 for r in rows], marker="o", label=LABELS.get(name, name),
                     color=COLORS.get(name))
            ax2.plot(cs, [r["latency_ms"]["p50"] or 0 for r in rows], marker="o", color=COLORS.get(name),
                     label=f"{name} p50")
            ax2.plot(cs, [r["latency_ms"]["p99"] or 0 for r in rows], marker="x", linestyle="--",
                     color=COLORS.get(name), label=f"{name} p99")
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_xticks([r["clients"] for r in next(iter(thr.values()))])
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("concurrent agents")
            ax.grid(True, alpha=0.3)
        ax1.set_ylabel("tools/call per second")
        ax1.set_title("Throughput")
        ax1.legend(fontsize=8)
        ax2.set_ylabel("latency under load (ms)")
        ax2.set_yscale("log")
        ax2.set_title("Latency under load")
        ax2.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = img_dir / f"{prefix}throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out["throughput"] = path.name

    enc = res.get("enclave_decision") or {}
    rows = enc.get("rows") if isinstance(enc, dict) else None
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for style in sorted({str(r.get("style", "-")) for r in rows}):
            sub = [r for r in rows if str(r.get("style", "-")) == style]
            ns = [r["policies"] for r in sub]
            line = ax.plot(ns, [r.get("p50_us") for r in sub], marker="o", label=f"{style} p50")
            ax.plot(ns, [r.get("p99_us") for r in sub], marker="x", linestyle="--", color=line[0].get_color(),
                    label=f"{style} p99")
        ax.axhline(150, color="grey", linestyle=":", linewidth=1)
        ax.axhline(1000, color="grey", linestyle=":", linewidth=1)
        ax.annotate("target 150 µs @ 20", (20, 150), textcoords="offset points", xytext=(0, 3), fontsize=7,
                    color="grey")
        ax.annotate("target 1 ms @ 1,000", (20, 1000), textcoords="offset points", xytext=(0, 3), fontsize=7,
                    color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("policies in the bundle")
        ax.set_ylabel("decision latency (µs)")
        ax.set_title("Enclave decision (Cedar + sign + audit), in-process")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = img_dir / f"{prefix}enclave-decision.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out["enclave"] = path.name

    mem = res.get("memory") or {}
    pts = mem.get("points") if isinstance(mem, dict) else None
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [max(p["sessions"], 1) for p in pts]
        for comp in pts[0]["rss_bytes"]:
            ax.plot(xs, [p["rss_bytes"][comp] / 2**20 for p in pts], marker="o", label=comp)
        ax.set_xscale("log")
        ax.set_xlabel("open sessions")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title("Memory vs open sessions")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = img_dir / f"{prefix}memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out["memory"] = path.name
    return out


def _trail_commit(res: dict[str, Any]) -> str:
    """What one commit of our trail costs on this run's disk, standalone (the fsync under the guarantee)."""
    probe = res.get("paths", {}).get("ours", {}).get("trail_commit_probe")
    if not probe:
        return ""
    floor = (f"; the disk's own flush under it (a 4 KiB overwrite and `fdatasync`, no SQLite) takes "
             f"{_f(probe['flush_p50_ms'])} ms p50, {_f(probe['flush_p90_ms'])} ms p90"
             if "flush_p50_ms" in probe else "")
    return (f" One commit of our trail on this disk (SQLite WAL, `synchronous=FULL`, a call's two entries, "
            f"measured alone before the rounds, once the WAL has wrapped) takes {_f(probe['p50_ms'])} ms "
            f"p50, {_f(probe['p90_ms'])} ms p90{floor}: the baseline has no durable write, ours waits "
            "for one per call before it forwards.")


def _cpu_rows(res: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    """(path, agents, {process: CPU ms per call}) for the sequential run and every throughput level."""
    rows: list[tuple[str, str, dict[str, float]]] = []
    for name, block in (res.get("sequential") or {}).items():
        if block.get("cpu_ms_per_call"):
            rows.append((name, "1 (sequential)", block["cpu_ms_per_call"]))
    for name, levels in ((res.get("throughput") or {}).get("paths") or {}).items():
        for r in levels:
            if r.get("cpu_ms_per_call"):
                rows.append((name, str(r["clients"]), r["cpu_ms_per_call"]))
    return rows


def _identity_lines(ident: dict[str, Any]) -> list[str]:
    """The token verification table (``bench/identity.py``) and what its two cases cost a call."""
    results = ident.get("results")
    if not isinstance(results, dict) or not results:
        return []
    lines = ["Agent identity (`bench/identity.py`: `IdentityPolicy.verify` in-process, a development "
             "issuer's access tokens checked against the bundle's `identity` section; uncached: a token not "
             "seen before, signed before timing; cached: the same token again):", "",
             "| algorithm | token bytes | uncached n | uncached p50 µs | uncached p99 µs | cached n "
             "| cached p50 µs | cached p99 µs |",
             "|---|---|---|---|---|---|---|---|"]
    for alg, r in results.items():
        if not isinstance(r, dict):
            continue
        u, c = r.get("uncached") or {}, r.get("cached") or {}
        lines.append(f"| {alg} | {r.get('token_bytes')} | {u.get('n')} | {_f(u.get('p50'), 1)} | "
                     f"{_f(u.get('p99'), 1)} | {c.get('n')} | {_f(c.get('p50'), 2)} | "
                     f"{_f(c.get('p99'), 2)} |")
    lines += ["", "The gateway caches the verified principal too and the enclave re-checks the token from "
              "its own cache on every decision, so the per-call cost is the cached figure; the uncached one "
              "is paid once per token (the first call that presents it, and again only after the cache "
              "evicts it). The end-to-end paths above use an open route whose bundle has no `identity` "
              "section, so their overhead does not include either.", ""]
    return lines


def _streamed_lines(res: dict[str, Any]) -> list[str]:
    """The streamed tool call's added latency next to the plain call's (``streamed`` section)."""
    lines = ["## Streamed tool call (upstream answers in SSE) vs plain", ""]
    fig = res.get("streamed")
    if not isinstance(fig, dict) or not fig.get("overhead"):
        st = res.get("sections", {}).get("streamed")
        why = f"{st.get('status')} — {st.get('reason')}" if st else "not in this result file"
        return [*lines, f"Not measured in this run: {why}", ""]
    n = fig.get("progress_notifications")
    paths = fig.get("paths", {})
    lines += ["| call | direct p50 ms | ours p50 ms | added p50 ms | added p50 95% CI (bootstrap) "
              "| direct p99 ms | ours p99 ms | added p99 ms | calls (direct / ours) "
              "| errors (direct / ours) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, label, direct, through in (
            ("plain", "plain (`bench_echo`, JSON answer)", "direct", "ours"),
            ("streamed", f"streamed (`bench_stream`, SSE answer: {n} progress notifications, "
                         "then the result)",
             "direct-streamed", "ours-streamed")):
        ov = fig["overhead"].get(kind)
        d, o = paths.get(direct), paths.get(through)
        if not ov or not d or not o:
            continue
        ci = ov.get("p50_ci95_ms") or [None, None]
        lines.append(f"| {label} | {_f(d['latency_ms']['p50'])} | {_f(o['latency_ms']['p50'])} | "
                     f"{_f(ov['p50_ms'])} | [{_f(ci[0])}, {_f(ci[1])}] | {_f(d['latency_ms']['p99'])} | "
                     f"{_f(o['latency_ms']['p99'])} | {_f(ov['p99_ms'])} | {d['calls']} / {o['calls']} | "
                     f"{_errs(d)} / {_errs(o)} |")
    lines += ["", str(fig.get("note", "")), ""]
    return lines


# -------------------------------------------------------------------------------------- analysis
def serving_of(cpu: dict[str, float]) -> float:
    """CPU ms per call of the serving processes (everything but the load generator)."""
    return sum(v for k, v in cpu.items() if k != "load generator")


def _throughput_analysis(thr: dict[str, Any], res: dict[str, Any]) -> str:
    """What bounds throughput, from the measured rates and CPU per call."""
    ratio = thr.get("ours_over_origin") or {}
    if not ratio:
        return ""
    top = max(thr.get("clients") or [16])
    by = {name: {r["clients"]: r for r in rows} for name, rows in thr.get("paths", {}).items()}
    ours_rows, origin_rows = by.get("ours", {}), by.get("origin", {})
    rt = (thr.get("ours_over_origin-tmpfs") or {}).get(str(top))
    direct = (thr.get("ours_over_direct") or {}).get(str(top))
    parts = [f"**Throughput** at {top} agents: ours/origin = {_f(ratio.get(str(top)), 2)}x (target 5x)"
             + (f"; against the origin on tmpfs {_f(rt, 2)}x" if rt is not None else "")
             + (f"; ours/direct = {_f(direct, 2)}x (target 0.7x)." if direct is not None else ".")]
    if 1 in ours_rows and top in ours_rows:
        parts.append(f"Ours goes from {_f(ours_rows[1]['calls_per_s'], 0)} calls/s with 1 agent to "
                     f"{_f(ours_rows[top]['calls_per_s'], 0)} with {top}.")
    cores = (res.get("machine") or {}).get("usable_cpus") or 1
    cpu = (ours_rows.get(top) or {}).get("cpu_ms_per_call") or {}
    ocpu = (origin_rows.get(top) or {}).get("cpu_ms_per_call") or {}
    o_rate = (origin_rows.get(top) or {}).get("calls_per_s")
    if cpu:
        serving = serving_of(cpu)
        loadgen_ms = cpu.get("load generator", 0.0)
        total = serving + loadgen_ms
        cap = cores * 1000 / total
        measured = (ours_rows.get(top) or {}).get("calls_per_s") or 0.0
        verdict = ("about what we measure: at this concurrency the path is CPU-bound, not waiting"
                   if measured >= 0.8 * cap else
                   f"well above the {measured:.0f} calls/s measured, so waiting (or other load on the "
                   "machine) bounds it, not our CPU")
        parts.append(
            f"Each call costs {_f(serving, 2)} ms of CPU across our serving processes (gateway "
            f"{_f(cpu.get('gateway'), 2)}, enclave {_f(cpu.get('enclave'), 2)}, guarded upstream "
            f"{_f(cpu.get('guarded-upstream'), 2)}) plus {_f(loadgen_ms, 2)} ms in the load generator; on "
            f"{cores} CPUs that caps the whole machine near {cap:.0f} calls/s, {verdict}.")
        if o_rate:
            need = 5 * o_rate
            budget = cores * 1000 / need - loadgen_ms
            if budget < serving:
                parts.append(
                    f"5x the origin ({need:.0f} calls/s) on this machine would need at most {budget:.2f} ms "
                    f"of serving CPU per call with the same load generator "
                    f"({(1 - budget / serving) * 100:.0f}% less than now), or more cores: gateway and "
                    "enclave are separate processes and scale out as replicas.")
            else:
                parts.append(
                    f"5x the origin ({need:.0f} calls/s) fits in our CPU cost per call ({budget:.2f} ms "
                    "would be allowed), so in this run the shortfall is waiting and background load, "
                    "not our CPU.")
    dcpu = (by.get("direct", {}).get(top) or {}).get("cpu_ms_per_call") or {}
    if cpu and dcpu and direct is not None:
        bound = sum(dcpu.values()) / sum(cpu.values())
        parts.append(
            f"Against direct, when both are CPU-bound on the same cores the ratio tends to the direct "
            f"call's CPU per call over ours, load generator included: {_f(sum(dcpu.values()), 2)} / "
            f"{_f(sum(cpu.values()), 2)} ms = {_f(bound, 2)}x; 0.7x would need our serving processes to "
            f"cost at most {_f(sum(dcpu.values()) / 0.7 - sum(cpu.values()) + serving_of(cpu), 2)} ms "
            "per call on this machine.")
    if ocpu.get("gateway") and o_rate:
        ceiling = cores * 1000 / sum(ocpu.values())
        parts.append(
            f"The origin's gateway needs {_f(ocpu['gateway'], 2)} ms of CPU per call; the machine could "
            f"carry ~{ceiling:.0f} of its calls/s but it delivers {_f(o_rate, 0)}, because everything "
            "shares its single gateway-wide session: 10 calls, then a signed Trust Record and a rotation "
            "during which no call is admitted, so more agents add queueing, not throughput.")
    return " ".join(parts)


def _floor_analysis(res: dict[str, Any]) -> str:
    """The floor of the parts our path runs on, and how much of the overhead is our work above it."""
    ov = res.get("overhead", {})
    floor = (res.get("components") or {}).get("floor")
    if "ours" not in ov or not isinstance(floor, dict) or floor.get("lean_floor_overhead_p50_ms") is None:
        return ""
    o = ov["ours"]
    lean50, lean99 = floor["lean_floor_overhead_p50_ms"], floor["lean_floor_overhead_p99_ms"]
    http50 = (floor.get("http_hop") or {}).get("overhead_p50_ms")
    at99 = (f"{_f(lean99, 2)} ms p99" if lean99 > 0 else
            f"nothing measurable at p99 ({_f(lean99, 2)} ms: the direct call's own tail is larger "
            "than the gap)")
    text = (f"**The floor of the parts that remain** (`bench/floor.py`, same run): the HTTP front, one "
            "frame round trip on a long-lived TCP connection and the pooled forward, with no product work "
            f"in them, add {_f(lean50, 2)} ms p50 and {at99} over the same direct call")
    if http50 is not None:
        text += (f" ({_f(http50, 2)} ms of the p50 is the HTTP front and forward alone, "
                 f"{_f(lean50 - http50, 2)} ms the frame round trip)")
    text += (f". Our product work above that floor is {_f(o['p50_ms'] - lean50, 2)} ms p50 and "
             f"{_f(o['p99_ms'] - max(lean99, 0.0), 2)} ms p99: authentication and JSON-RPC checks, Cedar, "
             "Ed25519 signing in the enclave and verification in the gateway and the guard, the audit "
             "chain and its durable write, the guard's replay cache.")
    if "ours-tmpfs" in ov:
        fsync = o["p50_ms"] - ov["ours-tmpfs"]["p50_ms"]
        text += (f" The durable write's fsync on this disk accounts for {_f(fsync, 2)} ms p50 of it "
                 "(the same path with the trail on tmpfs).")
    goals = ((1.0, o["p50_ms"], lean50, "p50"), (3.0, o["p99_ms"], max(lean99, 0.0), "p99"))
    for limit, measured, lean, label in goals:
        if measured <= limit:
            text += f" The {label} goal ({limit:g} ms) is met."
        elif lean >= limit:
            text += (f" The {label} goal ({limit:g} ms) is missed by {_f(measured - limit, 2)} ms and is "
                     "below what these parts allow on this machine even with no product work.")
        else:
            text += (f" The {label} goal ({limit:g} ms) is missed by {_f(measured - limit, 2)} ms: it leaves "
                     f"{_f(limit - lean, 2)} ms for product work that now takes {_f(measured - lean, 2)} ms.")
    return text


def analysis(res: dict[str, Any]) -> list[str]:
    """Paragraphs on what bounds each figure, written from this run's own numbers."""
    out: list[str] = []
    m = res.get("machine", {})
    seq = res.get("sequential", {})
    ov = res.get("overhead", {})
    bd = (res.get("ours_breakdown") or {}).get("gateway_histograms", {})
    if "ours" in ov and "direct" in seq:
        o = ov["ours"]
        text = (f"**Our added latency** is {_f(o['p50_ms'], 2)} ms at p50 and {_f(o['p99_ms'], 2)} ms at p99 "
                "over the direct call (targets 1 ms / 3 ms).")
        dec = bd.get("decision", {}).get("mean_ms")
        up = bd.get("upstream", {}).get("mean_ms")
        direct_mean = seq["direct"]["latency_ms"]["mean"]
        ours_mean = seq["ours"]["latency_ms"]["mean"] if "ours" in seq else None
        if dec is not None and up is not None and direct_mean is not None and ours_mean is not None:
            rest = ours_mean - dec - up
            text += (f" On average ({_f(o['mean_ms'], 2)} ms added): the enclave `Decide` round trip "
                     "(one frame each way on the gateway's lean decision hop to the enclave, the enclave's "
                     f"Cedar, signing and audit work, the gateway's signature check) takes {_f(dec, 2)} ms; "
                     f"the gateway → guard → upstream hop takes {_f(up, 2)} ms, "
                     f"against {_f(direct_mean, 2)} ms for the whole direct call as the load generator "
                     "sees it; the remaining "
                     f"{_f(rest, 2)} ms is the gateway serving the agent's request itself (HTTP parsing, "
                     "JSON-RPC checks, authentication, per-call logging) plus the extra loopback hop.")
        enc = res.get("enclave_decision") or {}
        for row in enc.get("rows", []) if isinstance(enc, dict) else []:
            if row.get("policies") == 20 and row.get("style") in ("scoped", "-"):
                text += (f" The decision itself costs {_f(row.get('p50_us'), 0)} µs p50 in-process at 20 "
                         f"policies, so most of the `Decide` time is the hop between two Python "
                         "processes, not Cedar.")
                cpu = (seq.get("ours") or {}).get("cpu_ms_per_call") or {}
                if cpu.get("enclave") and cpu.get("gateway"):
                    text += (f" In CPU terms (sequential run) each call costs the enclave "
                             f"{_f(cpu['enclave'], 2)} ms and the gateway {_f(cpu['gateway'], 2)} ms: "
                             "besides the decision, the hop's framing and event loop, recording the "
                             "previous call's outcome (carried on the next Decide) and a share of session "
                             "open/close (a signed, schema-validated Trust Record every 10 calls).")
                break
        text += (" Both added hops are Python asyncio stacks on uvloop (uvicorn with a bare ASGI app in "
                 "front, one long-lived framed TCP connection between gateway and enclave) on a machine "
                 f"where {m.get('usable_cpus')} CPUs are shared by the load generator, upstream, gateway "
                 "and enclave.")
        ident = ((res.get("components") or {}).get("identity") or {}).get("results")
        rs = ident.get("RS256") if isinstance(ident, dict) else None
        if isinstance(rs, dict) and rs.get("cached") and rs.get("uncached"):
            text += (" The measured route is open (no agent token); on a route whose bundle verifies "
                     "agent identity, each call adds the cached token check, "
                     f"{_f(rs['cached'].get('p50'), 1)} µs p50 (RS256), and the first call with a new token "
                     f"{_f(rs['uncached'].get('p50'), 0)} µs "
                     "(see Per-component figures).")
        text += " See the profiles for where the CPU goes."
        out.append(text)
        floor_text = _floor_analysis(res)
        if floor_text:
            out.append(floor_text)
    if "origin" in ov:
        o = ov["origin"]
        st = res.get("paths", {}).get("origin", {}).get("state", res.get("origin_state", "disk"))
        text = (f"**The origin** adds {_f(o['p50_ms'], 2)} ms p50 / {_f(o['p99_ms'], 2)} ms p99 (state on "
                f"{st}). Its tail is its session design: the first call of each 10-call session discovers "
                "the upstream's tools (drift check) on a fresh connection, and every call commits audit "
                "entries to SQLite, so its numbers move with fsync latency.")
        if "origin-tmpfs" in ov:
            t = ov["origin-tmpfs"]
            text += (f" With its SQLite on tmpfs it adds {_f(t['p50_ms'], 2)} ms p50 / "
                     f"{_f(t['p99_ms'], 2)} ms p99: that is the origin's compute alone, and the fairer "
                     "yardstick for our gateway's compute.")
        out.append(text)
    thr = res.get("throughput", {})
    text = _throughput_analysis(thr, res)
    if text:
        out.append(text)
    mem = res.get("memory")
    if isinstance(mem, dict) and mem.get("bytes_per_session"):
        per = mem["bytes_per_session"]
        enc_tm = ((res.get("enclave_decision") or {}).get("memory_tracemalloc") or {})
        text = ("**Memory per open session** (RSS slope): "
                + ", ".join(f"{k} {_f(v, 0)} bytes" for k, v in per.items()) + ". ")
        if enc_tm:
            so = (enc_tm.get("state_only") or {}).get("bytes_per_session")
            wr = (enc_tm.get("with_audit_ring") or {}).get("bytes_per_session")
            text += ("Python-object accounting in the enclave (tracemalloc, "
                     f"{enc_tm.get('sessions')} sessions): "
                     f"{_f(so, 0)} bytes of session state, {_f(wr, 0)} bytes with the session's in-memory "
                     "audit ring holding its first entries. ")
        text += ("RSS moves in pages and CPython keeps freed arenas, so the slope also carries allocator "
                 "slack; the gateway's share is its session map plus the per-session enclave pin.")
        out.append(text)
    return out


# -------------------------------------------------------------------------------------- markdown
def _section_status(res: dict[str, Any]) -> list[str]:
    lines = ["| section | status | seconds | note |", "|---|---|---|---|"]
    for name, st in res.get("sections", {}).items():
        lines.append(f"| {name} | {st['status']} | {_f(st.get('seconds'), 1)} | "
                     f"{(st.get('reason') or st.get('note') or '').replace('|', '/')[:200]} |")
    return lines


def render_markdown(res: dict[str, Any], plots: dict[str, str], img_rel: str) -> str:
    m = res.get("machine", {})
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add("<!-- Generated by `python -m bench run` (bench/report.py). "
        "Do not edit by hand: re-run the harness. -->")
    add("")
    add(f"Mode **{res.get('mode')}**, run {res.get('started_at')} → {res.get('finished_at')} "
        f"({_f(res.get('duration_s'), 0)} s). Raw figures: `bench/results/{res.get('mode')}.json`.")
    add("")
    add("Re-run: `python -m bench run` (everything, ~10–20 min; rewrites this page, `docs/img/bench-*.png` "
        "and `bench/results/full.json`), `python -m bench run --quick` (CI smoke, < 2 min, writes "
        "`bench/results/quick.*` only), `--only latency,throughput,...` (development), "
        "`--origin-state tmpfs` (origin's SQLite on /dev/shm), `python -m bench report` (re-render from "
        "JSON). Numbers from a shared, busy machine are noisy: compare paths within one run, not across "
        "runs.")
    add("")
    add("## Machine")
    add("")
    add(f"- CPU: {m.get('cpu_model')} — {m.get('logical_cpus')} logical CPUs "
        f"({m.get('usable_cpus')} usable); memory {m.get('memory_total')}")
    add(f"- Kernel {m.get('kernel')}; Python {m.get('python')} ({m.get('python_implementation')}); "
        f"git {m.get('git_revision')}")
    add(f"- Load average at start: {m.get('loadavg_at_start')}")
    pk = m.get("packages", {})
    add("- Ours: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))
    o = res.get("origin")
    if o:
        add(f"- Origin: {o.get('package')} {o.get('version')} in `{o.get('venv')}`: "
            + ", ".join(f"{k} {v}" for k, v in o.get("packages", {}).items()))
    add("")
    add("## Method")
    add("")
    add("- One upstream: an `mcp` SDK (streamable HTTP, JSON responses) server with a tool `bench_echo` "
        "that returns 1 KiB of text. Direct and origin paths use one instance; our path uses a second "
        "instance of the same code with the upstream guard as ASGI middleware (the guard is part of what "
        "we add).")
    add("- One load generator (`bench/loadgen.py`): raw httpx JSON-RPC over MCP streamable HTTP, one "
        "keep-alive connection per agent, the response is parsed and its 1 KiB payload checked. Only the "
        "`tools/call` round trip is timed; session open/close are timed separately but count in throughput "
        "wall time.")
    add("- Sessions: the origin refuses a session's 11th call, so **every path opens a new session every "
        "10 calls**. The origin has a single gateway-wide session (closing it via "
        "`POST /sessions/{id}/close` signs its Trust Record and rotates); with several agents a shared gate "
        "admits 10 calls per origin session and the agent completing the 10th rotates it while the others "
        "wait. Ours and direct: each agent has its own MCP session (`initialize` … `DELETE`).")
    add("- The origin runs as shipped in its dev mode (`CMCP_DEV_MODE=1`, software-only attestation, "
        "enforcing, its `examples/minimal` allow-all bundle, catalog built from the upstream's advertised "
        "tool). Ours: simulated TDX enclave, `enforce`, an allow-all bundle (same policy text), native "
        "request model. Both log at their defaults.")
    probes = []
    for o in ORIGINS:
        po = res.get("paths", {}).get(o, {})
        if po.get("sqlite_commit_probe"):
            pr = po["sqlite_commit_probe"]
            state = po.get("state", res.get("origin_state", "disk"))
            probes.append(f"`{o}` on **{state}** (one-row SQLite commit p50 {_f(pr.get('p50_ms'), 2)} ms, "
                          f"max {_f(pr.get('max_ms'), 2)} ms at the start of the run)")
    if probes:
        add("- The origin appends every audit entry to SQLite and commits before answering: "
            + "; ".join(probes) + ". Ours: every entry the enclave signs leaves in its answer and the "
            "gateway stores it before it uses the permit or answers (`ours`: its default SQLite file, "
            "WAL, `synchronous=FULL`, on the same disk; full runs also measure `ours-tmpfs`, the same "
            "file on /dev/shm, which separates our compute from the fsync, and `ours-postgres`, a local "
            "PostgreSQL server, as several gateway replicas would share). The `origin-tmpfs` path "
            "(same origin, its state directory on /dev/shm) separates the origin's compute from its "
            "fsync cost; the as-shipped `origin` path is the one the targets use.")
    if "baseline" in res.get("paths", {}):
        rev = str(res["paths"]["baseline"].get("rev", ""))[:7]
        add(f"- `baseline` (full runs): our product at git {rev}, the commit whose benchmark page set issue "
            "16's latency target, before the durable audit trail, started from that commit's own tree and "
            "harness code (`bench/baseline.py`) with its own enclave, guarded upstream and gateway. It "
            "answers whether the trail and everything since cost added latency, on this machine, in this "
            "run (docs/adr/0032-latency-target-against-the-baseline.md).")
    add("- Paths are interleaved in rounds (direct, ours, origin, then reversed) so background load hits "
        "all of them; warm-up calls are excluded. Percentiles: `statistics.quantiles(method='inclusive')`.")
    for n in res.get("notes", []):
        add(f"- {n}")
    add("")

    seq = res.get("sequential")
    if seq:
        add("## Sequential latency (one agent, one call at a time)")
        add("")
        add("| path | n | p50 ms | p95 ms | p99 ms | mean ms | max ms | errors | session open p50 ms "
            "| session close p50 ms |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for name, b in seq.items():
            lat = b["latency_ms"]
            add(f"| {LABELS.get(name, name)} | {lat['n']} | {_f(lat['p50'])} | {_f(lat['p95'])} | "
                f"{_f(lat['p99'])} | {_f(lat['mean'])} | {_f(lat['max'])} | {_errs(b)} | "
                f"{_f(b['session_open_ms']['p50'])} | {_f(b['session_close_ms']['p50'])} |")
        add("")
        ov = res.get("overhead", {})
        if ov:
            add("### Added latency over direct")
            add("")
            add("| path | p50 ms | p50 95% CI (bootstrap) | p95 ms | p99 ms | mean ms |")
            add("|---|---|---|---|---|---|")
            for name in ("ours", "ours-tmpfs", "ours-postgres", "baseline", *ORIGINS):
                if name in ov:
                    r = ov[name]
                    ci = r.get("p50_ci95_ms") or [None, None]
                    add(f"| {LABELS[name]} | {_f(r['p50_ms'])} | [{_f(ci[0])}, {_f(ci[1])}] | "
                        f"{_f(r['p95_ms'])} | {_f(r['p99_ms'])} | {_f(r['mean_ms'])} |")
            add("")
            if "ours_minus_baseline" in ov:
                d = ov["ours_minus_baseline"]
                ci = d.get("p50_ci95_ms") or [None, None]
                rev = str(res.get("paths", {}).get("baseline", {}).get("rev", ""))[:7]
                add(f"**Against the product before the durable trail** (`baseline`, git {rev}, the commit "
                    f"that set issue 16's target, run beside ours): ours adds {_f(d['p50_ms'])} ms p50 more "
                    f"(95% CI [{_f(ci[0])}, {_f(ci[1])}]; negative is faster).{_trail_commit(res)}")
                add("")
            for o in ORIGINS:
                if f"{o}_over_ours" in ov:
                    r = ov[f"{o}_over_ours"]
                    add(f"**Ratio ({LABELS[o]} overhead / our overhead):** p50 {_f(r['p50'], 2)}x, "
                        f"p95 {_f(r['p95'], 2)}x, p99 {_f(r['p99'], 2)}x.")
                    add("")
        bd = res.get("ours_breakdown")
        if bd and bd.get("gateway_histograms"):
            add("### Where our added latency goes")
            add("")
            add("| part (cmcp-gateway histogram) | mean ms | observations |")
            add("|---|---|---|")
            for k, v in bd["gateway_histograms"].items():
                add(f"| {k} | {_f(v['mean_ms'])} | {int(v['count'])} |")
            add(f"| (direct path, whole call, for comparison) | {_f(bd.get('direct_mean_ms'))} | |")
            add("")
            add(str(bd.get("note", "")))
            add("")
        if "latency" in plots:
            add(f"![sequential latency]({img_rel}/{plots['latency']})")
            add("")

    lines.extend(_streamed_lines(res))

    thr = res.get("throughput")
    if thr and thr.get("paths"):
        add("## Throughput (closed loop, N concurrent agents)")
        add("")
        add("| path | agents | calls/s | per round | p50 ms | p99 ms | calls | errors |")
        add("|---|---|---|---|---|---|---|---|")
        for name, rows in thr["paths"].items():
            for r in rows:
                per = ", ".join(f"{x:.0f}" for x in r.get("calls_per_s_per_round", []))
                add(f"| {LABELS.get(name, name)} | {r['clients']} | {_f(r['calls_per_s'], 1)} | {per} | "
                    f"{_f(r['latency_ms']['p50'])} | {_f(r['latency_ms']['p99'])} | {r['calls']} | "
                    f"{_errs(r)} |")
        add("")
        for o in (*ORIGINS, "direct"):
            ratio = thr.get(f"ours_over_{o}")
            if ratio:
                add(f"**Ratio (our throughput / {LABELS[o]} throughput):** "
                    + ", ".join(f"{c} agent{'s' if str(c) != '1' else ''} {_f(v, 2)}x"
                                for c, v in ratio.items()) + ".")
                add("")
        if "throughput" in plots:
            add(f"![throughput]({img_rel}/{plots['throughput']})")
            add("")

    cpu_rows = _cpu_rows(res)
    if cpu_rows:
        add("## CPU time per tools/call, by process")
        add("")
        add("User + system CPU (from /proc) each process spent during a run, divided by the calls it "
            "served (session open/close and warm-up included, amortised). Unlike latency, this barely "
            "moves with background load, and a single-threaded process cannot serve more than "
            "1000 / (its ms per call) calls per second per core.")
        add("")
        add("| path | agents | load generator | gateway | enclave | upstream (ours: + guard) | all |")
        add("|---|---|---|---|---|---|---|")
        for name, agents, cpu in cpu_rows:
            up = cpu.get("upstream", cpu.get("guarded-upstream"))
            add(f"| {LABELS.get(name, name)} | {agents} | {_f(cpu.get('load generator'), 2)} | "
                f"{_f(cpu.get('gateway'), 2)} | {_f(cpu.get('enclave'), 2)} | {_f(up, 2)} | "
                f"{_f(sum(cpu.values()), 2)} |")
        add("")

    enc = res.get("enclave_decision")
    add("## Enclave decision latency (in-process: Cedar + sign + audit)")
    add("")
    if isinstance(enc, dict) and enc.get("rows"):
        keys = [k for k in ("style", "policies", "n", "p50_us", "p95_us", "p99_us", "cpu_us",
                            "cedar_only_p50_us", "decisions_per_s", "grpc_seq_p50_us", "grpc_seq_p99_us",
                            "grpc_8conc_per_s")
                if any(k in r for r in enc["rows"])]
        add("| " + " | ".join(keys) + " |")
        add("|" + "---|" * len(keys))
        for r in enc["rows"]:
            add("| " + " | ".join(_f(r.get(k), 1) for k in keys) + " |")
        add("")
        if enc.get("note"):
            add(str(enc["note"]))
            add("")
        fair = enc.get("fairness")
        if isinstance(fair, dict):
            alone, beside = fair["alone"], fair["beside_heavy"]
            add("### One agent's heavy calls beside another's light ones")
            add("")
            add("| light agent | n | p50 us | p99 us | heavy agent's calls p50 ms |")
            add("|---|---|---|---|---|")
            add(f"| alone | {alone['light']['n']} | {_f(alone['light']['p50'], 0)} | "
                f"{_f(alone['light']['p99'], 0)} | — |")
            heavy = beside.get("heavy") or {}
            light = beside["light"]
            add(f"| beside {beside['heavy_in_flight']} heavy calls always in flight | {light['n']} | "
                f"{_f(light['p50'], 0)} | {_f(light['p99'], 0)} | {_f((heavy.get('p50') or 0) / 1000, 1)} |")
            add("")
            add(f"Both agents' decisions share one `DecideStream` to a real enclave process, as a gateway "
                f"multiplexes its agents; each heavy call carries {fair['heavy_argument_bytes']:,} bytes of "
                f"arguments. The light agent's p50 rises {_f(fair['light_p50_ratio'], 2)}x (target: at most "
                "2x): heavy calls are judged in the enclave's decision worker processes, one at a time per "
                "principal (docs/adr/0010-fair-decisions.md).")
            add("")
        if "enclave" in plots:
            add(f"![enclave decision]({img_rel}/{plots['enclave']})")
            add("")
    else:
        st = res.get("sections", {}).get("enclave-decision", {})
        add(f"Not measured in this run: {st.get('status')} — {st.get('reason')}")
        add("")

    mem = res.get("memory")
    add("## Memory with open sessions")
    add("")
    if isinstance(mem, dict) and mem.get("points"):
        comps = list(mem["points"][0]["rss_bytes"])
        add("| open sessions | " + " | ".join(f"{c} RSS MiB" for c in comps) + " | open errors |")
        add("|---|" + "---|" * len(comps) + "---|")
        for p in mem["points"]:
            add(f"| {p['sessions']} | " + " | ".join(_mib(p["rss_bytes"][c]) for c in comps)
                + f" | {p['open_errors']} |")
        add("")
        per = mem.get("bytes_per_session", {})
        add("Per open session (slope between " + " and ".join(str(x) for x in mem.get("slope_between", []))
            + " sessions): " + ", ".join(f"{c} {_f(v, 0)} bytes" for c, v in per.items()) + ".")
        add("")
        if mem.get("note"):
            add(str(mem["note"]) + ". The origin holds exactly one session per gateway process, so it "
                "has no equivalent figure.")
            add("")
        if "memory" in plots:
            add(f"![memory]({img_rel}/{plots['memory']})")
            add("")
    else:
        st = res.get("sections", {}).get("memory", {})
        add(f"Not measured in this run: {st.get('status')} — {st.get('reason')}")
        add("")
    after = res.get("rss_after_load_bytes")
    if after:
        add("RSS after the latency and throughput runs: "
            + ", ".join(f"{k} {_mib(v)} MiB" for k, v in after.items()) + ".")
        add("")

    comp = res.get("components")
    if isinstance(comp, dict) and comp:
        add("## Per-component figures")
        add("")
        ver = comp.get("verify")
        if isinstance(ver, dict) and isinstance(ver.get("results"), dict):
            add("Evidence appraisal (`bench/verify.py`, real TDX quote and Azure SNP report, pinned time):")
            add("")
            add("| evidence | n | p50 ms | p99 ms |")
            add("|---|---|---|---|")
            for k, v in ver["results"].items():
                if isinstance(v, dict):
                    add(f"| {k} | {v.get('n')} | {_f(v.get('p50'))} | {_f(v.get('p99'))} |")
            add("")
        gw = comp.get("gateway")
        if isinstance(gw, dict) and isinstance(gw.get("sequential"), dict):
            s = gw["sequential"]
            t = gw.get("throughput", {})
            add("Cross-check with the gateway's own benchmark (`bench/gateway.py`: stateless 2026-07-28 "
                "requests, no session rotation, `echo` tool, bearer-token agent — a different load "
                "generator, so not comparable with the origin): "
                f"overhead p50 {_f(s.get('overhead_p50_ms'))} ms, p99 {_f(s.get('overhead_p99_ms'))} ms; "
                f"{t.get('concurrency')} clients: gateway "
                f"{_f(t.get('gateway', {}).get('calls_per_second'), 1)} calls/s vs direct "
                f"{_f(t.get('direct', {}).get('calls_per_second'), 1)}.")
            add("")
        floor = comp.get("floor")
        if isinstance(floor, dict) and "floor_overhead_p50_ms" in floor:
            add("Transport floor with the gRPC stream (`bench/floor.py`: uvicorn + bare ASGI in front, "
                "one gRPC stream round trip, the pooled HTTP/1.1 forward — with no product work in them; "
                "the enclave's public API, no longer the decision path): "
                f"overhead p50 {_f(floor.get('floor_overhead_p50_ms'))} ms, "
                f"p99 {_f(floor.get('floor_overhead_p99_ms'))} ms over the same direct call.")
            if floor.get("lean_floor_overhead_p50_ms") is not None:
                add("")
                add("The same with one length-prefixed frame round trip on a long-lived TCP connection "
                    "(uvloop at both ends) in place of the gRPC stream, the parts of the lean decision hop "
                    "our path runs on (docs/adr/0024-lean-decision-hop.md): overhead p50 "
                    f"{_f(floor.get('lean_floor_overhead_p50_ms'))} ms, "
                    f"p99 {_f(floor.get('lean_floor_overhead_p99_ms'))} ms. No gateway built on these "
                    "parts goes below this on this machine; the rest of the overhead above is the "
                    "product's own work (authentication, JSON-RPC checks, Cedar, Ed25519 signing in the "
                    "enclave and verification in the gateway and the guard, the audit chain, the guard's "
                    "replay cache).")
            add("")
        ident = comp.get("identity")
        if isinstance(ident, dict):
            lines.extend(_identity_lines(ident))
        for k, v in comp.items():
            if isinstance(v, dict) and v.get("status") == "failed":
                add(f"- `{k}` failed: {v.get('reason')}")
        add("")

    add("## Operator: `kubectl apply` to attested and routed")
    add("")
    op = res.get("operator")
    if isinstance(op, dict) and op.get("rows"):
        add("| replicas | apply → attested (s) | apply → routed (s) | both (s) | note |")
        add("|---|---|---|---|---|")
        for r in op["rows"]:
            add(f"| {r.get('replicas')} | {_f(r.get('attested_s'), 2)} | {_f(r.get('routed_s'), 2)} | "
                f"{_f(r.get('seconds'), 2)} | {r.get('note', '')} |")
        add("")
        excluded = f"Cluster start-up (excluded): {_f(op.get('cluster_startup_s'), 1)} s"
        if "images_s" in op:  # the enclave image, built (or cached) and imported into the real node
            excluded += (f"; images built or found cached {_f(op.get('images_s'), 1)} s, "
                         f"imported {_f(op.get('import_s'), 1)} s")
        add(f"{op.get('note', '')}. {excluded}.")
        add("")
    else:
        st = res.get("sections", {}).get("operator", {})
        add(f"Not measured in this run: {st.get('status')} — {st.get('reason')}")
        add("")

    prof = res.get("profile")
    if isinstance(prof, dict):
        for comp in ("gateway", "enclave"):
            p = prof.get(comp) if comp in prof else (prof if comp == "gateway" and "serving" in prof
                                                     else None)
            if not isinstance(p, dict) or not p.get("serving"):
                continue
            srv = p["serving"]
            add(f"## {comp.capitalize()} hot-path profile (pyinstrument, {p.get('clients', 16)} agents)")
            add("")
            add(f"{p.get('samples')} samples over {_f(p.get('duration_s'), 1)} s, of which "
                f"{_f(srv.get('total_s'), 1)} s inside the serving loop (start-up excluded). Shares of "
                "self time only: the profiler slows the process, so absolute times mean nothing. "
                f"Full trees: `{Path(str(p.get('tree', ''))).name}`, `{Path(str(p.get('html', ''))).name}` "
                "(bench/results/).")
            add("")
            add("| package (self time) | share |")
            add("|---|---|")
            for x in srv.get("packages", [])[:12]:
                if x["share"] >= 0.005:
                    add(f"| {x['package']} | {x['share'] * 100:.1f}% |")
            add("")
            add("| function (self time) | share |")
            add("|---|---|")
            for x in srv.get("functions", [])[:15]:
                add(f"| `{x['function'].strip()}` | {x['share'] * 100:.1f}% |")
            add("")

    tg = res.get("targets", [])
    add("## Targets (the performance acceptance targets; each row names its limit), this run")
    add("")
    if tg:
        add("| target | measured | met | margin |")
        add("|---|---|---|---|")
        for t in tg:
            if "measured_ms" in t:
                meas = f"{_f(t['measured_ms'])} ms"
                margin = "" if t["met"] else f"missed by {_f(t['miss_by_ms'])} ms"
            elif "measured_ratio" in t:
                meas = f"{_f(t['measured_ratio'], 2)}x"
                margin = "" if t["met"] else f"missed by {_f(t['limit_ratio'] - t['measured_ratio'], 2)}x"
            elif "measured_us" in t:
                meas = f"{_f(t['measured_us'], 1)} µs"
                margin = "" if t["met"] else f"missed by {_f(t['measured_us'] - t['limit_us'], 1)} µs"
            else:
                meas = f"{_f(t.get('measured_bytes'), 0)} bytes"
                over = t["measured_bytes"] - t["limit_bytes"]
                margin = "" if t["met"] else f"missed by {_f(over, 0)} bytes"
            add(f"| {t['target']} | {meas} | {'yes' if t['met'] else '**no**'} | {margin} |")
        add("")
    else:
        add("No target could be evaluated in this run.")
        add("")
    paras = analysis(res)
    if paras:
        add("## What bounds the numbers")
        add("")
        for para in paras:
            add(para)
            add("")
    add("## Sections")
    add("")
    lines.extend(_section_status(res))
    add("")
    return "\n".join(lines) + "\n"


def write(res: dict[str, Any], *, docs: bool, stem: str | None = None) -> Path:
    """Markdown + PNGs: into docs/ when ``docs``, else ``bench/results/<stem>.md`` + ``plots-<stem>/``."""
    if docs:
        img_dir, md_path, img_rel, prefix = DOCS_IMG, DOCS_MD, "img", "bench-"
    else:
        stem = stem or str(res.get("mode", "run"))
        img_dir = RESULTS_DIR / f"plots-{stem}"
        md_path = RESULTS_DIR / f"{stem}.md"
        img_rel, prefix = img_dir.name, ""
    try:
        plots = _plots(res, img_dir, prefix)
    except ImportError as exc:  # matplotlib missing: tables only
        res.setdefault("notes", []).append(f"plots skipped: {exc}")
        plots = {}
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render_markdown(res, plots, img_rel), encoding="utf-8")
    return md_path
