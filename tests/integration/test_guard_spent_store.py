"""Permits are spent once across guard replicas and restarts: two real ``cmcp-guard`` processes.

Real parts: an enclave process on the simulated TEE minting permits over gRPC, one unguarded
upstream counting tool executions, and ``cmcp-guard`` reverse-proxy processes in front of it
that attest the enclave themselves. The attacker is the host: it holds one genuine permit and
sends it to every replica, and again after a guard restart.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from cmcp_core.permit import PERMIT_HEADER
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.ports import free_port
from cmcp_devkit.postgres import PostgresServer
from cmcp_devkit.procs import wait_http
from cmcp_devkit.release import write_dev_release
from cmcp_devkit.upstream import RunningUpstream, run_upstream
from tests.helpers.gateway_stack import AUDIENCE, MODERN_META, PERMIT_ARGS, PERMIT_TOOL, get_permit
from tests.paths import ROOT

HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": PERMIT_TOOL,
}
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": PERMIT_TOOL, "arguments": PERMIT_ARGS, "_meta": MODERN_META},
    }
)


@pytest.fixture
async def upstream() -> AsyncIterator[RunningUpstream]:
    async with run_upstream(None) as up:  # unguarded: the guard processes stand in front of it
        yield up


@contextmanager
def guard_process(upstream: RunningUpstream, enclave: EnclaveProcess, store: str, log: Path) -> Iterator[str]:
    """One ``cmcp-guard`` replica; yields its MCP URL once it answers."""
    port = free_port()
    base = upstream.url.removesuffix("/mcp")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "cmcp_guard.main",
            "--listen", f"127.0.0.1:{port}",
            "--upstream", base,
            "--audience", AUDIENCE,
            "--enclave", enclave.address,
            "--expected-bundle-hash", enclave.bundle_hash,
            "--allow-simulated", *write_dev_release(log.parent / f"release-{port}").argv(),
            "--spent-store", store,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


async def ready(url: str) -> str:
    # the upstream answers in this event loop, so the blocking probe runs in a thread
    await asyncio.to_thread(wait_http, url)
    return url


async def spend(url: str, permit: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url, content=BODY, headers={**HEADERS, PERMIT_HEADER: permit})


def error_code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["data"]["error_code"])


def shared_store(kind: str, tmp_path: Path, postgres: PostgresServer) -> str:
    """A store every replica reaches: a SQLite file on one node, or PostgreSQL for every node."""
    return f"sqlite:{tmp_path / 'spent.db'}" if kind == "sqlite" else postgres.dsn


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_same_permit_at_two_replicas_sharing_a_store_runs_once(
    tmp_path: Path, upstream: RunningUpstream, enclave: EnclaveProcess, kind: str,
    postgres_server: PostgresServer,
) -> None:
    store = shared_store(kind, tmp_path, postgres_server)
    with (
        guard_process(upstream, enclave, store, tmp_path / "a.log") as a,
        guard_process(upstream, enclave, store, tmp_path / "b.log") as b,
    ):
        await ready(a)
        await ready(b)
        permit = await get_permit(enclave.address)
        first = await spend(a, permit)
        assert first.status_code == 200, first.text
        second = await spend(b, permit)
        assert second.status_code == 403 and error_code(second) == "PERMIT_REPLAYED", second.text
    assert upstream.counter.total() == 1


async def test_weakened_per_process_memory_stores_run_the_replayed_permit_twice(
    tmp_path: Path, upstream: RunningUpstream, enclave: EnclaveProcess
) -> None:
    with (
        guard_process(upstream, enclave, "memory", tmp_path / "a.log") as a,
        guard_process(upstream, enclave, "memory", tmp_path / "b.log") as b,
    ):
        await ready(a)
        await ready(b)
        permit = await get_permit(enclave.address)
        assert (await spend(a, permit)).status_code == 200
        assert (await spend(b, permit)).status_code == 200  # the hole the shared store closes
    assert upstream.counter.total() == 2


@pytest.mark.parametrize(
    ("store", "replay_refused"), [("sqlite", True), ("postgresql", True), ("memory", False)]
)
async def test_a_guard_restart_between_two_uses(
    tmp_path: Path, upstream: RunningUpstream, enclave: EnclaveProcess, store: str, replay_refused: bool,
    postgres_server: PostgresServer,
) -> None:
    """With a durable store the restarted guard refuses; the weakened memory store forgets and runs
    it again."""
    spec = "memory" if store == "memory" else shared_store(store, tmp_path, postgres_server)
    permit = await get_permit(enclave.address)
    with guard_process(upstream, enclave, spec, tmp_path / "before.log") as before:
        assert (await spend(await ready(before), permit)).status_code == 200
    with guard_process(upstream, enclave, spec, tmp_path / "after.log") as after:
        again = await spend(await ready(after), permit)
    if replay_refused:
        assert again.status_code == 403 and error_code(again) == "PERMIT_REPLAYED", again.text
        assert upstream.counter.total() == 1
    else:
        assert again.status_code == 200, again.text
        assert upstream.counter.total() == 2
