"""The transport floor: what the gateway's hops cost on this machine with no work in them.

The same shape as ``bench/gateway.py`` with every piece of product logic removed: a *null
gateway* (uvicorn + a bare ASGI callable, the gateway's stack) takes the agent's POST, makes
one round trip on a gRPC bidirectional stream to an *echo enclave* (grpc.aio, the enclave's
stack; it answers each message with itself) and forwards the body with the gateway's own
pooled HTTP/1.1 client to the same unguarded ``mcp`` SDK upstream the direct target is.
No authentication, JSON parsing, Cedar, signing, verification or guard.

A third variant replaces the gRPC stream with what a lean decision hop would be (issue 21,
docs/adr/0024-lean-decision-hop.md): 4-byte length-prefixed frames over one long-lived TCP
connection, ``asyncio.Protocol`` on uvloop at both ends. It is the floor of that hop's parts,
not the hop: no handshake, heartbeat, deadline or backpressure is in it.

Whatever this overhead is, the real gateway cannot go below it on this machine; the gap
between the two is what the product's own work costs. Numbers are reported, never asserted.

    python -m bench.floor [--calls 2000] [--out bench/results/floor.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import grpc
import uvicorn
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_json  # noqa: E402
from bench.gateway import HEADERS, sequential, start_upstream, summary, wait_http  # noqa: E402
from cmcp_devkit.ports import free_port  # noqa: E402
from cmcp_gateway.http1 import Http1Client  # noqa: E402

ECHO_METHOD = "/cmcp.bench.Floor/Echo"


def _same(raw: bytes) -> bytes:
    return raw


async def serve_echo(port: int) -> None:
    async def echo(requests: Any, _context: Any) -> Any:
        async for message in requests:
            yield message

    handler = grpc.method_handlers_generic_handler(
        "cmcp.bench.Floor", {"Echo": grpc.stream_stream_rpc_method_handler(echo, _same, _same)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


FRAME = struct.Struct(">I")  # a frame's length, then the frame


def _frames(buf: bytearray) -> list[bytes]:
    """Take the complete frames off the front of ``buf`` (length prefix included)."""
    out = []
    while len(buf) >= FRAME.size:
        (n,) = FRAME.unpack_from(buf)
        if len(buf) < FRAME.size + n:
            break
        out.append(bytes(buf[: FRAME.size + n]))
        del buf[: FRAME.size + n]
    return out


class _Framed(asyncio.Protocol):
    """Buffers bytes from one connection and hands each whole frame to :meth:`frame_received`."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for frame in _frames(self.buf):
            self.frame_received(frame)

    def frame_received(self, frame: bytes) -> None:
        raise NotImplementedError


class _FrameEcho(_Framed):
    """Each frame back as it came: a framed enclave with no work in it."""

    def frame_received(self, frame: bytes) -> None:
        self.transport.write(frame)


class _FrameClient(_Framed):
    """One long-lived connection; answers come in order, each completing the oldest question."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: deque[asyncio.Future[bytes]] = deque()

    def frame_received(self, frame: bytes) -> None:
        self.waiting.popleft().set_result(frame[FRAME.size:])

    def ask(self, body: bytes) -> asyncio.Future[bytes]:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append(answer)
        self.transport.write(FRAME.pack(len(body)) + body)
        return answer


async def serve_frame_echo(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_FrameEcho, "127.0.0.1", port)
    print("READY", flush=True)
    await server.serve_forever()


def serve_null_gateway(port: int, echo_port: int | None, upstream: str,
                       frame_port: int | None = None) -> None:
    """``echo_port`` None: the HTTP hop alone, no gRPC round trip; ``frame_port``: a framed round
    trip instead."""
    state: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if echo_port is not None:
                    channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}")
                    state["stream"] = channel.stream_stream(ECHO_METHOD, _same, _same)()
                if frame_port is not None:
                    _, state["frames"] = await asyncio.get_running_loop().create_connection(
                        _FrameClient, "127.0.0.1", frame_port)
                state["lock"] = asyncio.Lock()
                state["upstream"] = Http1Client(upstream)
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if "stream" in state:
            async with state["lock"]:  # one message in flight: the benchmark is sequential
                await state["stream"].write(body)
                await state["stream"].read()
        if "frames" in state:
            await state["frames"].ask(body)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.startswith(b"mcp-")}
        headers.update({"content-type": "application/json", "accept": "application/json, text/event-stream"})
        response = await state["upstream"].post(body, headers, 30.0)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": response.content})

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", log_level="warning",
                access_log=False, lifespan="on")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port, echo_port, frame_port = free_port(), free_port(), free_port()
        upstream = start_upstream(up_port, None, work / "upstream.log")
        procs.append(upstream)
        echo = subprocess.Popen([sys.executable, "-m", "bench.floor", "--role", "echo", "--port",
                                 str(echo_port)], cwd=ROOT, stdout=subprocess.PIPE)
        procs.append(echo)
        assert echo.stdout is not None
        if not echo.stdout.readline().startswith(b"READY"):
            raise RuntimeError("echo enclave did not start")
        frame_echo = subprocess.Popen([sys.executable, "-m", "bench.floor", "--role", "frame-echo", "--port",
                                       str(frame_port)], cwd=ROOT, stdout=subprocess.PIPE)
        procs.append(frame_echo)
        assert frame_echo.stdout is not None
        if not frame_echo.stdout.readline().startswith(b"READY"):
            raise RuntimeError("framed echo enclave did not start")
        direct_url = f"http://127.0.0.1:{up_port}/mcp"
        urls: dict[str, str] = {}
        for name, extra in (("http_hop", []), ("http_hop_and_grpc", ["--echo-port", str(echo_port)]),
                            ("http_hop_and_frames", ["--frame-port", str(frame_port)])):
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.floor", "--role", "gateway", "--port",
                                           str(port), "--upstream", direct_url, *extra], cwd=ROOT))
            urls[name] = f"http://127.0.0.1:{port}/mcp"
            wait_http(urls[name])

        async def measure() -> dict[str, list[float]]:
            samples: dict[str, list[float]] = {"direct": [], **{name: [] for name in urls}}
            rounds = 4  # interleaved, so drift on a shared machine hits all alike
            calls, warmup = args.calls // rounds, args.warmup // rounds
            for _ in range(rounds):
                for name, url in (("direct", direct_url), *urls.items()):
                    samples[name] += await sequential(url, HEADERS, calls, warmup)
            return samples

        samples = asyncio.run(measure())
        d = summary(samples["direct"])
        result: dict[str, Any] = {
            "benchmark": "floor",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "setup": "null gateway (uvicorn + bare ASGI, pooled HTTP/1.1 forward; with and without one "
            "gRPC stream round trip, or one length-prefixed frame round trip on a TCP connection, to an "
            "echo server) vs direct, same unguarded mcp SDK upstream; the null gateway and the framed echo "
            "on uvloop, the gRPC echo on the default loop (as the enclave was before ADR 0020)",
            "direct": d,
        }
        for name in urls:
            g = summary(samples[name])
            result[name] = {**g, "overhead_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3),
                            "overhead_p99_ms": round(g["p99_ms"] - d["p99_ms"], 3)}
        result["floor_overhead_p50_ms"] = result["http_hop_and_grpc"]["overhead_p50_ms"]
        result["floor_overhead_p99_ms"] = result["http_hop_and_grpc"]["overhead_p99_ms"]
        result["lean_floor_overhead_p50_ms"] = result["http_hop_and_frames"]["overhead_p50_ms"]
        result["lean_floor_overhead_p99_ms"] = result["http_hop_and_frames"]["overhead_p99_ms"]
        return result
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench/results/floor.json"))
    parser.add_argument("--role", choices=("bench", "echo", "frame-echo", "gateway"), default="bench",
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--echo-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--frame-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "echo":
        asyncio.run(serve_echo(args.port))
        return
    if args.role == "frame-echo":
        uvloop.run(serve_frame_echo(args.port))
        return
    if args.role == "gateway":
        serve_null_gateway(args.port, args.echo_port, args.upstream, args.frame_port)
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
