"""Profile our hot path: pyinstrument around the gateway and the enclave under 16-agent load.

Both run as ``python -m pyinstrument -r pyisession -o FILE -m <module> ...``; the
same load generator drives them for a fixed time; on SIGINT pyinstrument
writes each session, rendered here as a call tree (``profile-<name>.txt``) and
HTML (``profile-<name>.html``) in ``bench/results/``, plus a self-time
breakdown by package and by function inside the serving loop.

Sampling profilers slow the process down, so only the *shares* mean anything;
latency and throughput figures come from unprofiled runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer
from pyinstrument.session import Session

from bench import loadgen, ours


def _package(path: str) -> str:
    """Coarse owner of a source file: a site-packages distribution, one of ours, or the stdlib."""
    p = path.replace("\\", "/")
    if "site-packages/" in p:
        return p.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for ours_pkg in ("cmcp_gateway", "cmcp_core", "cmcp_guard", "cmcp_enclave"):
        if f"/{ours_pkg}/" in p:
            return ours_pkg
    if "importlib" in p or p.startswith("<frozen"):
        return "importlib (runtime imports)"
    if "/asyncio/" in p:
        return "asyncio"
    return "stdlib/builtin"


def _by_package(session: Any) -> dict[str, Any]:
    """Self time per package inside the event loop (start-up imports excluded)."""
    root = session.root_frame()
    serving: list[Any] = []

    def find(frame: Any, function: str, path_end: str) -> None:
        if frame.function == function and (frame.file_path or "").endswith(path_end):
            serving.append(frame)
            return
        for child in frame.children:
            find(child, function, path_end)

    # The event loop: every request handled, none of the start-up imports. With the stdlib loop
    # that is BaseEventLoop.run_forever; with uvloop (native) the nearest Python frame is
    # asyncio.run / Runner.run, whose own self time is then the native loop (waiting included).
    if root is not None:
        find(root, "run_forever", "asyncio/base_events.py")
        if not serving:
            find(root, "run", "asyncio/runners.py")
    acc: Counter[str] = Counter()
    funcs: Counter[str] = Counter()

    def walk(frame: Any) -> None:
        self_time = frame.time - sum(c.time for c in frame.children)
        owner = frame.parent if frame.function == "[self]" and frame.parent is not None else frame
        short = owner.file_path_short or ""
        path = owner.file_path or short
        fn = owner.function or ""
        if fn == "run" and (owner.file_path or "").endswith("asyncio/runners.py"):
            pkg = "native event loop (uvloop: waiting + scheduling)"
        elif fn.endswith("poll") or (fn.endswith("select")
                                     and ("selectors" in short or "<built-in>" in short)):
            pkg = "idle (event loop waiting)"
        elif fn == "Context.run" and "<built-in>" in short:
            pkg = "native code run as loop callbacks (grpc's Cython core, ...)"
        elif "<built-in>" in short:
            # a C function: charge it to the Python caller's package
            caller = owner.parent
            pkg = _package((caller.file_path or caller.file_path_short or "") if caller else "")
        else:
            pkg = _package(path)
        acc[pkg] += self_time
        funcs[f"{owner.function}  {short}:{owner.line_no}"] += self_time
        for child in frame.children:
            walk(child)

    for frame in serving:
        walk(frame)
    total = sum(acc.values()) or 1.0
    return {"total_s": total,
            "packages": [{"package": k, "share": v / total} for k, v in acc.most_common(15)],
            "functions": [{"function": k, "share": v / total} for k, v in funcs.most_common(25)]}


def _render(session_path: Path, out_dir: Path, name: str) -> dict[str, Any]:
    session = Session.load(str(session_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    tree = ConsoleRenderer(unicode=False, color=False, show_all=False,
                           time="percent_of_total").render(session)
    (out_dir / f"profile-{name}.txt").write_text(tree, encoding="utf-8")
    (out_dir / f"profile-{name}.html").write_text(HTMLRenderer().render(session), encoding="utf-8")
    return {"tree": str(out_dir / f"profile-{name}.txt"), "html": str(out_dir / f"profile-{name}.html"),
            "duration_s": session.duration, "samples": session.sample_count, "serving": _by_package(session)}


def run(work: Path, log_dir: Path, *, tool_def: dict[str, Any] | None, seconds: float, out_dir: Path,
        log: Callable[[str], None] = print, clients: int = 16) -> dict[str, Any]:
    """Profile gateway and enclave together under ``clients`` agents for ``seconds``."""
    work.mkdir(parents=True, exist_ok=True)
    sessions = {"gateway": work / "gateway.pyisession", "enclave": work / "enclave.pyisession"}

    def prefix(name: str) -> list[str]:
        return [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(sessions[name])]

    stack = ours.start_stack(work, log_dir, tool_def=tool_def, gateway_argv_prefix=prefix("gateway"),
                             enclave_argv_prefix=prefix("enclave"))
    try:
        target = loadgen.LoadTarget("ours", stack.url)
        s = asyncio.run(loadgen.run_concurrent(target, clients, seconds, 1.0))
        log(f"   profiled load: {s.calls / s.wall_s if s.wall_s else 0:.1f} calls/s (profilers on), "
            f"errors {s.errors}")
    finally:
        stack.gateway.stop(timeout=30)
        stack.enclave.process.send_signal(2)  # SIGINT: graceful stop, pyinstrument writes its session
        with contextlib.suppress(Exception):  # fall back to the normal stop below
            stack.enclave.process.wait(timeout=30)
        stack.stop()
    rate = s.calls / s.wall_s if s.wall_s else None
    out: dict[str, Any] = {"clients": clients, "load_calls_per_s_with_profiler": rate}
    for name, path in sessions.items():
        if not path.exists():
            out[name] = {"status": "failed", "reason": "pyinstrument wrote no session"}
            continue
        out[name] = {**_render(path, out_dir, name), "clients": clients}
    return out
