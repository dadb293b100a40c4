"""The gateway's and the guard's front doors under the attacks issue 18 measured, as real processes.

Six connections each try to send 40 MiB of headers that never end (which grew the gateway by
270 MiB before): each is answered ``431 HEADERS_TOO_LARGE`` and closed after a few KiB, and
neither process grows by more than a few MiB. Six slowloris connections to the gateway (header
lines trickled, never finished) are answered ``408 REQUEST_TIMEOUT`` and closed; the gateway
still serves an honest request meanwhile. The protocol's own tests (tests/unit/cmcp_core/
test_http_front.py) show uvicorn's unbounded protocol failing the same attacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cmcp_devkit.stack import LocalStack
from tests.helpers.local_stack import serve_conformance_route

ATTACKERS = 6
HEADER_FLOOD = 40 * 1024 * 1024
CHUNK = 256 * 1024
GROWTH_LIMIT = 24 * 1024 * 1024  # what the six connections may cost a process, at most
HEADER_TIMEOUT = 0.5
WAIT = 30.0  # how long an attacker waits for the answer: far beyond every deadline


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("front-door")
    running = LocalStack(workdir, gateway_limits={"header_timeout_seconds": HEADER_TIMEOUT})
    try:
        yield serve_conformance_route(running, "front/enforce")
    finally:
        running.close()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Attacker:
    """A raw connection whose answer is collected in the background while the attack goes on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer, self.received = writer, bytearray()
        self.reading = asyncio.create_task(self._read_all(reader))

    async def _read_all(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self.received.extend(chunk)

    @property
    def answered(self) -> bool:
        return bool(self.received) or self.reading.done()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        await asyncio.sleep(0)  # let the answer in, if there is one

    async def answer(self) -> bytes:
        try:
            await asyncio.wait_for(self.reading, WAIT)
        finally:
            self.writer.close()
        return bytes(self.received)


async def flood(host: str, port: int) -> tuple[bytes, int]:
    """Headers that never end, until the server answers; its answer and what we got to send."""
    attacker = Attacker(*await asyncio.open_connection(host, port))
    sent = 0
    with contextlib.suppress(ConnectionError):
        await attacker.send(b"GET / HTTP/1.1\r\nhost: x\r\nx-flood: ")
        while sent < HEADER_FLOOD and not attacker.answered:
            await attacker.send(b"a" * CHUNK)
            sent += CHUNK
    return await attacker.answer(), sent


async def trickle(host: str, port: int) -> bytes:
    """Slowloris: a header line now and then, never the blank line that ends them."""
    attacker = Attacker(*await asyncio.open_connection(host, port))
    with contextlib.suppress(ConnectionError):
        await attacker.send(b"GET / HTTP/1.1\r\nhost: x\r\n")
        for n in range(int(WAIT / (HEADER_TIMEOUT / 4))):
            if attacker.answered:
                break
            await attacker.send(b"x-slow-%d: 1\r\n" % n)
            await asyncio.sleep(HEADER_TIMEOUT / 4)
    return await attacker.answer()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


@pytest.mark.parametrize("component", ["gateway", "guard"])
def test_six_connections_of_endless_headers_are_refused_with_bounded_memory(
        stack: LocalStack, component: str) -> None:
    guard = next(p for p in stack.procs if p.name == "guard")
    proc = stack.gateways["gateway"] if component == "gateway" else guard
    url = stack.gateway_url if component == "gateway" else stack.upstream_url
    host, port = _address(url)
    before = rss(proc.pid)

    async def attack() -> list[tuple[bytes, int]]:
        return await asyncio.gather(*(flood(host, port) for _ in range(ATTACKERS)))

    results = asyncio.run(attack())
    grown = rss(proc.pid) - before
    for answer, sent in results:
        assert answer.startswith(b"HTTP/1.1 431") and b"HEADERS_TOO_LARGE" in answer, answer[:200]
        assert sent < HEADER_FLOOD, "the server read 40 MiB of headers"
    assert grown < GROWTH_LIMIT, f"{component} grew by {grown / 2**20:.1f} MiB"


def test_slowloris_connections_are_cut_off_and_honest_requests_still_served(stack: LocalStack) -> None:
    host, port = _address(stack.gateway_url)

    async def attack() -> list[bytes]:
        return await asyncio.gather(*(trickle(host, port) for _ in range(ATTACKERS)))

    for answer in asyncio.run(attack()):
        assert answer.startswith(b"HTTP/1.1 408") and b"REQUEST_TIMEOUT" in answer, answer[:200]
    honest = httpx.get(f"{stack.gateway_url}/", timeout=10)
    assert honest.status_code < 500
