"""The audit trail leaves the enclave: real processes (enclave, guard, upstream, gateway) with
the gateway's audit store on SQLite and on PostgreSQL.

Killing the enclave mid-session (SIGKILL: no shutdown, no close) loses nothing that was
answered: every decision, and every outcome of a call that ran, is in the store and verifies
from genesis, with the enclave's ledger. What the last call's outcome needs: the gateway sends an
outcome nothing carries as its own ``Complete`` (``OUTCOME_FLUSH_SECONDS``); carried outcomes are
recorded before the decision that carries them and stored with it. The test waits for the last
outcome before the kill (it polls the store; it never sleeps a guessed time).
Before issue 16 these entries lived only in the enclave's ring and died with it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cmcp_conformance.target import Profile
from cmcp_core.audit import verify_chain
from cmcp_core.audit_store import chain_entries, open_audit_store
from cmcp_core.crypto import key_from_jwk, public_jwk
from cmcp_ctl.main import main as cmcpctl
from cmcp_devkit.postgres import PostgresServer
from cmcp_devkit.stack import LocalStack
from tests.helpers.local_stack import serve_conformance_route

CALLS = 12


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalStack]:
    """The local stack with the gateway's store on a SQLite file, or on the real PostgreSQL."""
    store = "" if request.param == "sqlite" else _own_database(request.getfixturevalue("postgres_server"))
    running = LocalStack(tmp_path, audit_store=store)
    try:
        yield serve_conformance_route(running, "audit/enforce")
    finally:
        running.close()


def _own_database(server: PostgresServer) -> str:
    """A database of this test's own on the shared server: the whole-store verify below must see
    only this stack's chains, not other tests' deliberately forged rows."""
    name = f"audit_{secrets.token_hex(6)}"
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + f"/{name}"


def _rpc(http: httpx.Client, url: str, method: str, params: dict[str, Any], session: str | None,
         request_id: int) -> httpx.Response:
    headers = {"mcp-session-id": session} if session else {}
    return http.post(url, json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
                     headers={**headers, "accept": "application/json, text/event-stream"})


def _stored(spec: str, chain: str) -> list[dict[str, Any]]:
    store = open_audit_store(spec)
    try:
        return [json.loads(raw) for raw in chain_entries(store, chain)]
    finally:
        store.close()


def test_killing_the_enclave_mid_session_loses_no_decision_and_no_outcome(stack: LocalStack) -> None:
    url = f"{stack.gateway_url}/mcp/enforce"
    profile = Profile()
    with httpx.Client(headers={"authorization": f"Bearer {stack.token}"}, timeout=30) as http:
        opened = _rpc(http, url, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                "clientInfo": {"name": "t", "version": "1"}}, None, 0)
        session = opened.headers["mcp-session-id"]
        for i in range(CALLS):
            tool = profile.allowed_tool if i % 3 else profile.denied_tool  # allowed, and some denied
            answer = _rpc(http, url, "tools/call", {"name": tool, "arguments": {"text": f"hi {i}"}},
                          session, i + 1).json()
            assert ("result" in answer) == (tool == profile.allowed_tool), answer
    ran = sum(1 for i in range(CALLS) if i % 3)
    deadline = time.monotonic() + 15.0
    while sum(e["kind"] == "complete" for e in _stored(stack.audit_store, session)) < ran:
        assert time.monotonic() < deadline, "the outcomes never reached the store"
        time.sleep(0.05)

    enclave = stack.enclaves["enforce"]
    key = key_from_jwk(enclave.ready["public_key_jwk"])
    enclave.proc.popen.kill()  # SIGKILL mid-session: no close, no goodbye
    enclave.proc.popen.wait(10)

    entries = _stored(stack.audit_store, session)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("decision") == CALLS and kinds.count("complete") == ran
    assert kinds[0] == "open" and "close" not in kinds
    assert verify_chain(entries, key).ok  # from genesis, every link and signature
    ledger = _stored(stack.audit_store, f"ledger:{enclave.ready['kid']}")
    assert verify_chain(ledger, key).ok and ledger[-1]["data"]["session_id"] == session
    key_arg = json.dumps(public_jwk(key))
    assert cmcpctl(["audit", "verify", "--store", stack.audit_store, "--key", key_arg]) == 0
