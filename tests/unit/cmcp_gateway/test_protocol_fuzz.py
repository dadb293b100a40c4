"""Hypothesis fuzz of the gateway's JSON-RPC front: random bodies never crash it, never forward.

The enclave (examples/minimal) only catalogues ``echo``; the fuzzer never names ``echo``, so any
increment of the upstream's own call counter would be a forward that should not have happened.
The stack runs on its own event loop in a thread; hypothesis drives it with a sync client.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cmcp_devkit.enclave import start_enclave
from cmcp_gateway.config import GatewayLimits
from tests.helpers.gateway_stack import AUDIENCE, Stack, run_stack
from tests.paths import ROOT

HEADERS = {
    "authorization": "Bearer tok-alice",
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
}
ALLOWED_STATUS = {200, 202, 400, 401, 404, 405, 413, 429}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_enclave(ROOT / "examples/minimal", tmp_path_factory.mktemp("enc"), audience=AUDIENCE) as enc:
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            box["stop"] = asyncio.Event()
            limits = GatewayLimits(max_body_bytes=64 * 1024, max_depth=16, max_string=4096)
            async with run_stack([enc], audience=AUDIENCE, limits=limits) as s:
                box["stack"] = s
                box["loop"] = asyncio.get_running_loop()
                ready.set()
                await box["stop"].wait()

        thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        thread.start()
        assert ready.wait(60)
        yield box["stack"]
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
methods = st.sampled_from(
    [
        "tools/call",
        "tools/list",
        "initialize",
        "ping",
        "server/discover",
        "notifications/initialized",
        "resources/read",
        "prompts/get",
    ]
) | st.text(max_size=20)
tool_names = st.sampled_from(
    ["add", "image", "payments.transfer", "", "ECHO", "echo ", "résumé.parse"]
) | st.text(max_size=20)
call_params = st.fixed_dictionaries(
    {"name": tool_names},
    optional={
        "arguments": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | json_values,
        "_meta": json_values,
    },
)
rpc = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", 2]), "method": methods},
    optional={
        "id": st.integers() | st.text(max_size=8) | st.none() | st.floats() | st.booleans(),
        "params": call_params | json_values,
    },
)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = (
    st.binary(max_size=256)
    | json_values.map(encode)
    | rpc.map(encode)
    | st.lists(rpc, max_size=3).map(encode)
)


def names_echo(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    docs = doc if isinstance(doc, list) else [doc]
    return any(
        isinstance(d, dict) and isinstance(d.get("params"), dict) and d["params"].get("name") == "echo"
        for d in docs
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, session=st.booleans())
def test_random_bodies_never_crash_never_forward(stack: Stack, body: bytes, session: bool) -> None:
    assume(not names_echo(body))
    headers = dict(HEADERS)
    if session:
        headers["mcp-session-id"] = "not-a-session"
    resp = httpx.post(stack.url, content=body, headers=headers, timeout=30)
    assert resp.status_code in ALLOWED_STATUS, (resp.status_code, resp.text)
    if resp.content:
        doc = resp.json()
        assert doc["jsonrpc"] == "2.0" and ("result" in doc or "error" in doc)
    assert stack.upstream.counter.total() == 0


def test_the_fuzzed_stack_does_forward_an_allowed_call(stack: Stack) -> None:
    """Control: the same stack forwards ``echo``, so the counter assertion above has teeth."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}},
    }
    before = stack.upstream.counter.total()
    resp = httpx.post(stack.url, json=body, headers=HEADERS, timeout=30)
    assert resp.status_code == 200 and "result" in resp.json(), resp.text
    assert stack.upstream.counter.total() == before + 1
