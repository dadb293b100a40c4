"""The guard's front door at the ASGI level: a body over the limit is refused before it is read
(declared) or as it streams, and a client that leaves mid-body gets nothing while the wrapped
app never sees the call. Shares ``cmcp_core.asgi.read_body`` with the gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import permit as permits
from cmcp_core.crypto import thumbprint
from cmcp_core.mcp_target import args_digest, call_target
from cmcp_guard import middleware
from cmcp_guard.check import PermitChecker
from cmcp_guard.middleware import Guard, GuardMiddleware
from cmcp_guard.spent_sqlite import SqliteSpentPermits


class App:
    """The wrapped MCP app; it must never be reached in these tests."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1


def guarded(limit: int) -> tuple[GuardMiddleware, App]:
    app = App()
    checker = PermitChecker(audience="urn:cmcp:test", keys=dict)  # no key: nothing could pass
    return GuardMiddleware(app, Guard(checker, max_body=limit)), app


def scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}


async def drive(mw: GuardMiddleware, headers: list[tuple[bytes, bytes]],
                messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inbox = iter(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(inbox)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw(scope(headers), receive, send)
    return sent


async def test_declared_length_over_the_limit_is_refused_unread() -> None:
    mw, app = guarded(limit=100)
    sent = await drive(mw, [(b"content-length", b"101")], [])  # receive() is never called
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["data"]["error_code"] == "BODY_TOO_LARGE"
    assert app.calls == 0


async def test_streamed_body_over_the_limit_is_refused() -> None:
    mw, app = guarded(limit=100)
    chunks = [{"type": "http.request", "body": b"x" * 60, "more_body": True},
              {"type": "http.request", "body": b"x" * 60, "more_body": False}]
    sent = await drive(mw, [], chunks)
    assert sent[0]["status"] == 413 and app.calls == 0


async def test_client_gone_mid_body_gets_nothing_and_reaches_nothing() -> None:
    mw, app = guarded(limit=100)
    messages = [{"type": "http.request", "body": b'{"jsonrpc":', "more_body": True},
                {"type": "http.disconnect"}]
    assert await drive(mw, [], messages) == []
    assert app.calls == 0


async def test_a_store_that_cannot_record_the_nonce_denies_with_503(tmp_path: Path) -> None:
    """Fail closed: a valid permit whose nonce cannot be recorded never reaches the app."""
    key = Ed25519PrivateKey.generate()
    arguments = {"q": "x"}
    permit = permits.mint(
        key, session_id="s", call_id="c", tool="t", args_digest=args_digest(arguments),
        audience="urn:cmcp:test", bundle_hash="sha256:" + "0" * 64, ttl_seconds=60,
    )  # fmt: skip
    store = SqliteSpentPermits(tmp_path / "spent.db", retention_seconds=30)
    store.close()  # the store is gone
    checker = PermitChecker(
        audience="urn:cmcp:test", keys=lambda: {thumbprint(key.public_key()): key.public_key()}, replay=store
    )
    app = App()
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": arguments}}
    ).encode()
    sent = await drive(
        GuardMiddleware(app, Guard(checker)),
        [(permits.PERMIT_HEADER.lower().encode(), permit.encode())],
        [{"type": "http.request", "body": body, "more_body": False}],
    )
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"]["data"]["error_code"] == "SPENT_STORE_UNAVAILABLE"
    assert app.calls == 0


def _body(message: Any) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": json.dumps(message).encode(), "more_body": False}]


async def test_every_gated_method_without_a_permit_is_refused() -> None:
    """What the host would send around the gateway: resources and prompts carry the same data as
    tools (it read PHI through the guard before), so each needs its permit like a tool call."""
    requests = {
        "resources/read": {"uri": "ehr://patients/p-1"},
        "resources/subscribe": {"uri": "ehr://patients/p-1"},
        "resources/unsubscribe": {"uri": "ehr://patients/p-1"},
        "prompts/get": {"name": "summarise"},
        "completion/complete": {"ref": {"type": "ref/prompt", "name": "summarise"},
                                "argument": {"name": "a", "value": "b"}},
        "logging/setLevel": {"level": "debug"},
        "subscriptions/listen": {"notifications": {"resourceSubscriptions": ["ehr://patients/p-1"]}},
    }
    for method, params in requests.items():
        mw, app = guarded(limit=4096)
        sent = await drive(mw, [], _body({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        assert (sent[0]["status"], app.calls) == (403, 0), method
        assert json.loads(sent[1]["body"])["error"]["data"]["error_code"] == "PERMIT_MISSING", method


async def test_a_message_nobody_decides_is_refused_by_default() -> None:
    for method in ("sampling/createMessage", "anything/new"):
        mw, app = guarded(limit=4096)
        sent = await drive(mw, [], _body({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}))
        assert (sent[0]["status"], app.calls) == (403, 0), method
        assert json.loads(sent[1]["body"])["error"]["data"]["error_code"] == "PERMIT_METHOD_UNSUPPORTED"
    for odd in ({"jsonrpc": "2.0", "id": 1, "result": {}},  # a response, smuggled
                [{"jsonrpc": "2.0", "method": "ping", "id": 1},
                 {"jsonrpc": "2.0", "method": "resources/read", "id": 2, "params": {"uri": "x"}}]):
        mw, app = guarded(limit=4096)
        sent = await drive(mw, [], _body(odd))
        assert sent[0]["status"] in (400, 403) and app.calls == 0, odd


class Recorder(App):
    """The wrapped app, recording the bodies it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)
        self.bodies.append(json.loads((await receive())["body"]))


def _permitting(method: str, name: str, arguments: dict[str, Any],
                digest: str | None = None) -> tuple[GuardMiddleware, Recorder, str]:
    key = Ed25519PrivateKey.generate()
    digest = digest or args_digest(arguments)
    token = permits.mint(key, session_id="s", call_id="c", tool=name, args_digest=digest,
                         audience="urn:cmcp:test", bundle_hash="sha256:" + "0" * 64, ttl_seconds=60,
                         method=method)
    keys = {thumbprint(key.public_key()): key.public_key()}
    checker = PermitChecker(audience="urn:cmcp:test", keys=lambda: keys)
    app = Recorder()
    return GuardMiddleware(app, Guard(checker)), app, token


def _with(token: str) -> list[tuple[bytes, bytes]]:
    return [(permits.PERMIT_HEADER.lower().encode(), token.encode())]


async def test_a_resource_read_with_its_permit_runs_once() -> None:
    mw, app, token = _permitting("resources/read", "ehr://patients/p-1", {})
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "ehr://patients/p-1"}}
    first = await drive(mw, _with(token), _body(read))
    assert first == [] and app.calls == 1  # the app answered (this stand-in sends nothing)
    assert app.bodies[0]["params"]["uri"] == "ehr://patients/p-1"
    again = await drive(mw, _with(token), _body(read))
    assert again[0]["status"] == 403 and app.calls == 1
    assert json.loads(again[1]["body"])["error"]["data"]["error_code"] == "PERMIT_REPLAYED"


async def test_a_permit_is_for_one_method_and_one_target() -> None:
    """A prompt's permit is no tool call's, and a permit for one record reads no other."""
    cases = [
        ("prompts/get", "summarise", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                      "params": {"name": "summarise", "arguments": {}}},
         "PERMIT_METHOD_MISMATCH"),
        ("resources/read", "ehr://patients/p-1", {"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                                                  "params": {"uri": "ehr://patients/p-2"}},
         "PERMIT_TOOL_MISMATCH"),
        ("prompts/get", "summarise", {"jsonrpc": "2.0", "id": 1, "method": "prompts/get",
                                      "params": {"name": "summarise", "arguments": {"who": "all"}}},
         "PERMIT_ARGS_MISMATCH"),
    ]
    for method, name, request, code in cases:
        mw, app, token = _permitting(method, name, {})
        sent = await drive(mw, _with(token), _body(request))
        assert (sent[0]["status"], app.calls) == (403, 0), code
        assert json.loads(sent[1]["body"])["error"]["data"]["error_code"] == code


ANSWERS = {"inputResponses": {"q1": {"action": "accept", "content": {"email": "a@example.com"}}},
           "requestState": "opaque"}


def _repeated(answers: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "web.search", "arguments": {"q": "x"}, **answers}}


async def test_the_answers_of_a_repeated_request_are_bound_by_its_permit() -> None:
    """The enclave decided these answers (MCP 2026-07-28 inputResponses): the permit carries
    them, and no other answers, nor these added to a permit for the plain call, get through."""
    bound = call_target("tools/call", _repeated(ANSWERS)["params"]).digest
    mw, app, token = _permitting("tools/call", "web.search", {"q": "x"}, digest=bound)
    assert await drive(mw, _with(token), _body(_repeated(ANSWERS))) == [] and app.calls == 1
    assert app.bodies[0]["params"]["inputResponses"] == ANSWERS["inputResponses"]
    forged = {**ANSWERS, "inputResponses": {"q1": {"action": "accept", "content": {"email": "evil@x"}}}}
    for permitted, sent_answers in ((bound, forged), (None, ANSWERS), (bound, {})):
        mw, app, token = _permitting("tools/call", "web.search", {"q": "x"}, digest=permitted)
        sent = await drive(mw, _with(token), _body(_repeated(sent_answers)))
        assert (sent[0]["status"], app.calls) == (403, 0)
        assert json.loads(sent[1]["body"])["error"]["data"]["error_code"] == "PERMIT_ARGS_MISMATCH"


async def test_weakened_guard_that_binds_only_the_arguments_lets_forged_answers_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hole the bound digest closes: a guard that checks the arguments alone accepts the
    permit of the plain call for a request carrying answers no one decided."""
    mw, app, token = _permitting("tools/call", "web.search", {"q": "x"})
    await drive(mw, _with(token), _body(_repeated(ANSWERS)))
    assert app.calls == 0
    monkeypatch.setattr(middleware.Guard, "_check", lambda self, token, target: self.checker.check(
        token, target.name, target.arguments, method=target.method))
    mw, app, token = _permitting("tools/call", "web.search", {"q": "x"})
    await drive(mw, _with(token), _body(_repeated(ANSWERS)))
    assert app.calls == 1


async def test_weakened_guard_that_checks_tool_calls_only_lets_a_resource_read_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hole the default closes: a guard that gates only tools/call and lets reads pass (as
    one with resources open would) hands the record over; the real one does not."""
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "ehr://patients/p-1"}}
    mw, app = guarded(limit=4096)
    await drive(mw, [], _body(read))
    assert app.calls == 0
    monkeypatch.setattr(middleware, "GATED_METHODS", frozenset({"tools/call"}))
    monkeypatch.setattr(middleware, "OPEN_METHODS", middleware.OPEN_METHODS | {"resources/read"})
    mw, app = guarded(limit=4096)
    await drive(mw, [], _body(read))
    assert app.calls == 1


async def test_the_handshake_and_discovery_pass_without_a_permit() -> None:
    for method in ("initialize", "notifications/initialized", "ping", "server/discover", "tools/list",
                   "resources/list", "resources/templates/list", "prompts/list"):
        mw, app = guarded(limit=4096)
        await drive(mw, [], _body({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}))
        assert app.calls == 1, method


async def test_a_request_carrying_an_agent_token_is_refused() -> None:
    mw, app = guarded(limit=4096)
    sent = await drive(mw, [(b"authorization", b"Bearer agent-token")],
                       _body({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
    assert (sent[0]["status"], app.calls) == (403, 0)
    assert json.loads(sent[1]["body"])["error"]["data"]["error_code"] == "AGENT_TOKEN_FORWARDED"
