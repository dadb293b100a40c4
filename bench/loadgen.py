"""The one load generator used for every path: raw httpx JSON-RPC over MCP streamable HTTP.

* One ``httpx.AsyncClient`` per simulated agent (HTTP/1.1 keep-alive: the
  connection is reused for every request of that agent).
* Each agent opens an MCP session (``initialize`` + ``notifications/initialized``),
  makes ``calls_per_session`` (10) ``tools/call`` requests, closes the session and
  opens a new one.  The origin gateway refuses a session's 11th call, so both
  systems rotate every 10 calls.
* A target with ``progress`` > 0 (the streamed-call figure) sends ``_meta.progressToken`` on each
  call and must get an SSE answer carrying exactly that many ``notifications/progress`` for its
  token before the result; any other count is an error of that call.
* Only the ``tools/call`` round trip is timed for latency (``perf_counter_ns``
  around send + full response read + parse check).  Session open/close are timed
  separately; they are inside the wall clock used for throughput.

Session styles:

``mcp``
    Standard MCP: ``initialize`` returns ``Mcp-Session-Id`` (if the server is
    stateful), requests carry it, ``DELETE`` ends the session.  Used for the
    direct path and for our gateway.
``origin``
    The origin gateway (``cmcp-runtime`` 0.7.1) has exactly one live session per
    gateway process; ``POST /sessions/{id}/close`` signs its Trust Record and
    rotates to a fresh one.  Its 10-call budget is therefore shared by all
    concurrent agents: a shared gate admits at most 10 calls per gateway
    session, and the agent that completes the 10th closes it while the others
    wait.  That serialisation is the origin's architecture, not a harness
    artefact, and it is what its throughput numbers include.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from cmcp_devkit.upstream import BENCH_TOOL as TOOL_NAME
from cmcp_devkit.upstream import PAYLOAD_BYTES

SessionStyle = Literal["mcp", "origin"]
PROTOCOL_VERSION = "2025-11-25"
CALLS_PER_SESSION = 10


@dataclass
class LoadTarget:
    """One path under test."""

    name: str
    url: str  # the MCP endpoint, e.g. http://127.0.0.1:PORT/mcp
    style: SessionStyle = "mcp"
    headers: dict[str, str] = field(default_factory=dict)
    tool: str = TOOL_NAME
    #: progress notifications each call must bring back: >0 sends ``_meta.progressToken`` and
    #: requires an SSE answer with exactly that many for the token before the result (0: a plain call)
    progress: int = 0
    calls_per_session: int = CALLS_PER_SESSION
    #: processes serving this path (component -> pid), for CPU-per-call accounting
    pids: dict[str, int] = field(default_factory=dict)
    _gate: OriginGate | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return self.url.rsplit("/", 1)[0]

    def gate(self) -> OriginGate | None:
        """The origin's session gate, shared by every run against this target.

        The origin's session outlives a run (sequential round, throughput level), so the
        count of calls already made in it must too, or a new run would make its 11th call.
        """
        if self.style != "origin":
            return None
        if self._gate is None:
            self._gate = OriginGate(self.calls_per_session)
        return self._gate


class CallError(Exception):
    pass


@dataclass
class Samples:
    """Raw per-call latencies (ms) and counters for one run of one path."""

    call_ms: list[float] = field(default_factory=list)
    session_open_ms: list[float] = field(default_factory=list)
    session_close_ms: list[float] = field(default_factory=list)
    errors: int = 0
    warmup_errors: int = 0
    warmup_calls: int = 0
    #: CPU seconds each serving process (and the load generator) used during the run
    cpu_s: dict[str, float] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    calls: int = 0
    wall_s: float = 0.0

    def error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(msg[:300])

    def extend(self, other: Samples) -> None:
        self.call_ms.extend(other.call_ms)
        self.session_open_ms.extend(other.session_open_ms)
        self.session_close_ms.extend(other.session_close_ms)
        self.errors += other.errors
        self.warmup_errors += other.warmup_errors
        self.warmup_calls += other.warmup_calls
        for k, v in other.cpu_s.items():
            self.cpu_s[k] = self.cpu_s.get(k, 0.0) + v
        for e in other.error_examples:
            if len(self.error_examples) < 5:
                self.error_examples.append(e)
        self.calls += other.calls
        self.wall_s += other.wall_s


def sse_messages(text: str) -> list[Any]:
    """The JSON messages of an SSE body, in order (an event's ``data:`` lines joined, as SSE says)."""
    out: list[Any] = []
    data: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            out.append(json.loads("\n".join(data)))
            data = []
    return out


def split_sse(text: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The JSON-RPC response of an SSE body (its last result or error) and the notifications
    (messages without an ``id``) sent before it."""
    response: dict[str, Any] | None = None
    notes: list[dict[str, Any]] = []
    for obj in sse_messages(text):
        if not isinstance(obj, dict):
            continue
        if "result" in obj or "error" in obj:
            response = obj
        elif "id" not in obj and response is None:
            notes.append(obj)
    return response, notes


def count_progress(notes: list[dict[str, Any]], token: str | int) -> int:
    """How many of ``notes`` are ``notifications/progress`` for ``token``."""
    return sum(1 for n in notes if n.get("method") == "notifications/progress"
               and isinstance(n.get("params"), dict) and n["params"].get("progressToken") == token)


def _parse_answer(resp: httpx.Response) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The response and, for an SSE answer, the notifications before it."""
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        try:
            last, notes = split_sse(resp.text)
        except ValueError as exc:
            raise CallError(f"SSE event with non-JSON data (HTTP {resp.status_code}): {exc}") from exc
        if last is None:
            raise CallError(f"SSE response without a JSON-RPC result (HTTP {resp.status_code})")
        return last, notes
    try:
        body = json.loads(resp.content)
    except ValueError as exc:
        raise CallError(f"non-JSON response HTTP {resp.status_code}: {resp.text[:200]}") from exc
    if not isinstance(body, dict):
        raise CallError(f"unexpected JSON-RPC body: {str(body)[:200]}")
    return body, []


def _parse_body(resp: httpx.Response) -> dict[str, Any]:
    return _parse_answer(resp)[0]


class Agent:
    """One simulated agent: its own connection, its own session rotation."""

    def __init__(self, target: LoadTarget, gate: OriginGate | None = None, timeout: float = 30.0) -> None:
        self.target = target
        self.gate = gate
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.http = httpx.AsyncClient(timeout=timeout, limits=limits, headers={
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            **target.headers,
        })
        self.session_id: str | None = None  # Mcp-Session-Id
        self.cmcp_session: str | None = None  # origin's _cmcp.session_id
        self.in_session = 0
        self.open = False
        self._rid = 0

    def _next_id(self) -> int:
        self._rid += 1
        return self._rid

    def _headers(self) -> dict[str, str]:
        h = {"mcp-protocol-version": PROTOCOL_VERSION}
        if self.session_id:
            h["mcp-session-id"] = self.session_id
        return h

    async def aclose(self) -> None:
        if self.open and self.target.style == "mcp":
            with contextlib.suppress(Exception):  # best effort at teardown
                await self.close_session()
        await self.http.aclose()

    async def open_session(self) -> float:
        t0 = time.perf_counter_ns()
        body = {"jsonrpc": "2.0", "id": self._next_id(), "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "cmcp-bench", "version": "1"}}}
        resp = await self.http.post(self.target.url, content=json.dumps(body),
                                    headers={"mcp-protocol-version": PROTOCOL_VERSION})
        if resp.status_code != 200:
            raise CallError(f"initialize: HTTP {resp.status_code}: {resp.text[:200]}")
        parsed = _parse_body(resp)
        if "error" in parsed:
            raise CallError(f"initialize error: {parsed['error']}")
        self.session_id = resp.headers.get("mcp-session-id")
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        resp2 = await self.http.post(self.target.url, content=json.dumps(note), headers=self._headers())
        if resp2.status_code >= 400 and self.target.style == "mcp":
            raise CallError(f"notifications/initialized: HTTP {resp2.status_code}: {resp2.text[:200]}")
        self.in_session = 0
        self.open = True
        return (time.perf_counter_ns() - t0) / 1e6

    async def close_session(self) -> float:
        t0 = time.perf_counter_ns()
        if self.target.style == "mcp":
            if self.session_id:
                resp = await self.http.delete(self.target.url, headers=self._headers())
                if resp.status_code >= 400 and resp.status_code != 404:
                    raise CallError(f"DELETE session: HTTP {resp.status_code}: {resp.text[:200]}")
        else:
            sid = self.cmcp_session
            if sid is None:
                raise CallError("origin: no _cmcp.session_id seen before close")
            resp = await self.http.post(f"{self.target.base}/sessions/{sid}/close")
            if resp.status_code != 200:
                raise CallError(f"origin close: HTTP {resp.status_code}: {resp.text[:200]}")
        self.session_id = None
        self.open = False
        self.in_session = 0
        return (time.perf_counter_ns() - t0) / 1e6

    async def call(self, seq: int) -> float:
        """One timed tools/call; returns latency in ms, raises CallError on any failure."""
        rid = self._next_id()
        token = ',"_meta":{"progressToken":' + str(rid) + '}' if self.target.progress else ""
        body = ('{"jsonrpc":"2.0","id":' + str(rid) + ',"method":"tools/call","params":'
                '{"name":"' + self.target.tool + '","arguments":{"seq":' + str(seq) + '}' + token + '}}')
        headers = self._headers()
        t0 = time.perf_counter_ns()
        resp = await self.http.post(self.target.url, content=body, headers=headers)
        parsed, notes = _parse_answer(resp)
        elapsed = (time.perf_counter_ns() - t0) / 1e6
        self.in_session += 1
        if "error" in parsed:
            raise CallError(f"HTTP {resp.status_code} error {json.dumps(parsed['error'])[:300]}")
        if self.target.progress:
            got = count_progress(notes, rid)
            if got != self.target.progress:
                ctype = resp.headers.get("content-type", "")
                raise CallError(f"{got} progress notifications ({ctype}), expected {self.target.progress}")
        result = parsed.get("result")
        if not isinstance(result, dict) or result.get("isError"):
            raise CallError(f"bad result: {str(result)[:200]}")
        content = result.get("content") or []
        text = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        if len(text) != PAYLOAD_BYTES:
            raise CallError(f"payload {len(text)} bytes, expected {PAYLOAD_BYTES}")
        meta = result.get("_cmcp")
        if isinstance(meta, dict) and isinstance(meta.get("session_id"), str):
            self.cmcp_session = meta["session_id"]
        return elapsed


class OriginGate:
    """Admits at most ``per_session`` calls per (global) origin session.

    The agent that completes the last admitted call closes the session; every
    other agent waits for the rotation before its next call.
    """

    def __init__(self, per_session: int) -> None:
        self.per_session = per_session
        self._cond: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.issued = 0
        self.done = 0
        self.rotating = False

    @property
    def cond(self) -> asyncio.Condition:
        # The counts outlive an event loop (each run is its own asyncio.run); the
        # condition must not.  Between runs no call is in flight, so this is safe.
        loop = asyncio.get_running_loop()
        if self._cond is None or self._loop is not loop:
            self._cond, self._loop = asyncio.Condition(), loop
        return self._cond

    async def acquire(self) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: not self.rotating and self.issued < self.per_session)
            self.issued += 1

    async def release(self, agent: Agent, samples: Samples | None) -> None:
        async with self.cond:
            self.done += 1
            last = self.done >= self.per_session
            if last:
                self.rotating = True
        if not last:
            return
        try:
            ms = await agent.close_session()
            if samples is not None:
                samples.session_close_ms.append(ms)
        except CallError as exc:
            if samples is not None:
                samples.error(str(exc))
        finally:
            async with self.cond:
                self.issued = 0
                self.done = 0
                self.rotating = False
                self.cond.notify_all()


async def _one_call(agent: Agent, seq: int, samples: Samples | None) -> None:
    """Open/rotate the session as needed, then make one call (recorded into ``samples``)."""
    t = agent.target
    if t.style == "mcp":
        if agent.open and agent.in_session >= t.calls_per_session:
            ms = await agent.close_session()
            if samples is not None:
                samples.session_close_ms.append(ms)
        if not agent.open:
            ms = await agent.open_session()
            if samples is not None:
                samples.session_open_ms.append(ms)
        try:
            lat = await agent.call(seq)
            if samples is not None:
                samples.call_ms.append(lat)
                samples.calls += 1
        except (CallError, httpx.HTTPError) as exc:
            if samples is not None:
                samples.error(str(exc))
            agent.open = False  # start over with a fresh session
            agent.session_id = None
        return
    # origin: a global session shared by every agent
    gate = agent.gate
    if gate is None:
        raise RuntimeError("origin style needs an OriginGate")
    if not agent.open:
        ms = await agent.open_session()
        if samples is not None:
            samples.session_open_ms.append(ms)
    await gate.acquire()
    try:
        lat = await agent.call(seq)
        if samples is not None:
            samples.call_ms.append(lat)
            samples.calls += 1
    except (CallError, httpx.HTTPError) as exc:
        if samples is not None:
            samples.error(str(exc))
    finally:
        await gate.release(agent, samples)


async def run_sequential(target: LoadTarget, calls: int, warmup: int) -> Samples:
    """One agent, one call at a time: ``warmup`` unrecorded calls then ``calls`` recorded."""
    agent = Agent(target, target.gate())
    samples = Samples()
    warm = Samples()
    try:
        for i in range(warmup):
            await _one_call(agent, i, warm)
        t0 = time.perf_counter()
        for i in range(calls):
            try:
                await _one_call(agent, i, samples)
            except (CallError, httpx.HTTPError) as exc:
                samples.error(str(exc))
                agent.open = False
                agent.session_id = None
        samples.wall_s = time.perf_counter() - t0
    finally:
        await agent.aclose()
    samples.warmup_errors = warm.errors
    samples.warmup_calls = len(warm.call_ms)
    for e in warm.error_examples:
        samples.error_examples.append(f"(warm-up) {e}")
    return samples


async def run_concurrent(target: LoadTarget, clients: int, duration_s: float, warmup_s: float) -> Samples:
    """``clients`` agents in a closed loop for ``warmup_s`` (unrecorded) then ``duration_s``.

    Throughput = calls completed inside the measured window / window length.
    Session open/close happen inside the window (they cost wall time) but are
    not call latencies.
    """
    gate = target.gate()
    agents = [Agent(target, gate) for _ in range(clients)]
    samples = Samples()
    warm = Samples()
    state = {"phase": "warmup"}

    async def loop(agent: Agent, idx: int) -> None:
        seq = idx * 1_000_000
        while state["phase"] != "stop":
            rec = samples if state["phase"] == "measure" else warm
            try:
                await _one_call(agent, seq, rec)
            except (CallError, httpx.HTTPError) as exc:
                # session open/close failure: record, back off briefly, retry
                if rec is not None:
                    rec.error(str(exc))
                agent.open = False
                agent.session_id = None
                await asyncio.sleep(0.01)
            seq += 1

    tasks = [asyncio.create_task(loop(a, i)) for i, a in enumerate(agents)]
    try:
        await asyncio.sleep(warmup_s)
        state["phase"] = "measure"
        t0 = time.perf_counter()
        await asyncio.sleep(duration_s)
        state["phase"] = "stop"
        # Calls that started inside the window are recorded even if they end
        # after it; the window is closed when the last of them completes.
        done, pending = await asyncio.wait(tasks, timeout=30)
        samples.wall_s = time.perf_counter() - t0
        for t in pending:
            t.cancel()
        for t in done:
            exc = t.exception()
            if exc is not None:
                samples.error(f"agent task failed: {exc!r}")
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*(a.aclose() for a in agents), return_exceptions=True)
    samples.warmup_errors = warm.errors
    samples.warmup_calls = len(warm.call_ms)
    for e in warm.error_examples[:2]:
        samples.error_examples.append(f"(warm-up) {e}")
    return samples
