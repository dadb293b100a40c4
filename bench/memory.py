"""Gateway and enclave RSS with 1, 1,000 and 10,000 open sessions.

A session counts as open once it has been initialised through the gateway and
has made one ``tools/call`` (so the enclave holds its state and audit chain);
it is never closed during the measurement.  Sessions are opened by a few
workers that reuse their HTTP connections (one connection per session would
measure socket buffers, not sessions).

RSS is ``VmRSS`` from ``/proc/<pid>/status``, read after a short settle pause.
CPython's allocator keeps freed arenas and RSS moves in pages, so the
per-session figure is the slope between the largest two points, not a
per-object size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from bench import loadgen
from cmcp_devkit import procs


async def open_sessions(target: loadgen.LoadTarget, count: int, workers: int = 8) -> dict[str, Any]:
    """Open ``count`` sessions (initialise + one call each) and leave them open."""
    agents = [loadgen.Agent(target) for _ in range(max(1, min(workers, count)))]
    errors: list[str] = []
    opened = 0
    next_idx = 0
    lock = asyncio.Lock()

    async def worker(agent: loadgen.Agent) -> None:
        nonlocal opened, next_idx
        while True:
            async with lock:
                if next_idx >= count:
                    return
                next_idx += 1
            try:
                await agent.open_session()
                await agent.call(0)
                opened += 1
            except (loadgen.CallError, httpx.HTTPError) as exc:
                if len(errors) < 5:
                    errors.append(str(exc)[:300])
            # forget the session without closing it
            agent.open = False
            agent.session_id = None

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(a) for a in agents))
    finally:
        await asyncio.gather(*(a.http.aclose() for a in agents), return_exceptions=True)
    return {"opened": opened, "errors": count - opened, "error_examples": errors,
            "seconds": time.perf_counter() - t0}


def _rss(pids: int | Sequence[int]) -> int:
    return sum(procs.rss_of(pid) for pid in ([pids] if isinstance(pids, int) else pids))


def measure(target: loadgen.LoadTarget, pids: Mapping[str, int | Sequence[int]], points: Sequence[int],
            log: Callable[[str], None] = print, settle_s: float = 1.0) -> dict[str, Any]:
    """RSS of each component (one pid, or several summed) at each cumulative open-session count
    in ``points`` (ascending)."""
    rows: list[dict[str, Any]] = []
    base = {name: _rss(pid) for name, pid in pids.items()}
    open_now = 0
    for point in points:
        need = point - open_now
        info: dict[str, Any] = {"opened": 0, "errors": 0, "seconds": 0.0}
        if need > 0:
            info = asyncio.run(open_sessions(target, need))
            open_now += int(info["opened"])
        time.sleep(settle_s)
        rss = {name: _rss(pid) for name, pid in pids.items()}
        rows.append({"sessions": open_now, "target_sessions": point, "rss_bytes": rss,
                     "open_seconds": info["seconds"], "open_errors": info["errors"],
                     "error_examples": info.get("error_examples", [])})
        log(f"  {open_now:>6} sessions: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in rss.items())
            + (f"  ({info['errors']} errors)" if info["errors"] else ""))
    per_session: dict[str, float | None] = {}
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        ds = b["sessions"] - a["sessions"]
        for name in pids:
            per_session[name] = ((b["rss_bytes"][name] - a["rss_bytes"][name]) / ds) if ds > 0 else None
    return {"baseline_rss_bytes": base, "points": rows, "bytes_per_session": per_session,
            "slope_between": [r["sessions"] for r in rows[-2:]]}
