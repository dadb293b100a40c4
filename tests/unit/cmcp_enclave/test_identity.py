"""Identity decided in the enclave: a gateway can only name the principal the agent's token proves.

The attacker is the gateway: it opens sessions and asks decisions for a principal of its choice,
with no token, another agent's token or a stale one. A weakened enclave that takes the gateway's
word (as before issue 17) shows the lie then succeeds.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from cmcp_core.digest import json_digest
from cmcp_core.errors import Code
from cmcp_devkit.enclave import DEFAULT_AUDIENCE, NO_TRAIL, inprocess_enclave
from cmcp_devkit.issuer import DevIssuer, identity_section
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.judging import RequestError
from tests.helpers.issuer import identity_bundle
from tests.paths import EXAMPLES

NOW = 1_900_000_000.0
CALLS = itertools.count()
FINANCE_ONLY = """
@id("payments-need-finance")
forbid (principal, action == cMCP::Action::"call_tool", resource == cMCP::Tool::"payments.transfer")
unless { principal has groups && principal.groups.contains("finance") };
"""
TRANSFER = {"amount": 10, "currency": "EUR", "to": "acct-1"}


@pytest.fixture(scope="module")
def issuer() -> DevIssuer:
    return DevIssuer()


def _enclave(tmp_path: Path, issuer: DevIssuer) -> Enclave:
    bundle = identity_bundle(EXAMPLES / "realistic", tmp_path / "bundle", identity_section(issuer),
                             required_scopes={"email.send_external": ["mail:send"]},
                             policies={"identity.cedar": FINANCE_ONLY})
    enc = inprocess_enclave(bundle, tmp_path / "enc")
    enc.clock = lambda: NOW
    return enc


def _decide(enc: Enclave, session: str, principal: str, token: str, tool: str,
            args: dict[str, object]) -> dict[str, object]:
    result = enc.decide(session_id=session, call_id=f"c{next(CALLS)}",
                        principal=principal, method="tools/call", tool=tool,
                        arguments_json=json.dumps(args).encode(), arguments_digest=json_digest(args),
                        audience=DEFAULT_AUDIENCE, access_token=token)
    return result.document


def _code(call: object, *args: object, **kwargs: object) -> Code:
    with pytest.raises(RequestError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.code


def test_a_gateway_cannot_open_or_decide_for_a_principal_the_token_does_not_prove(
        tmp_path: Path, issuer: DevIssuer) -> None:
    enc = _enclave(tmp_path, issuer)
    alice, bob = issuer.token("alice", now=NOW), issuer.token("bob", now=NOW)
    assert _code(enc.open_session, "alice", trail=NO_TRAIL) is Code.TOKEN_MISSING
    assert _code(enc.open_session, "alice", trail=NO_TRAIL, access_token=bob) is Code.IDENTITY_MISMATCH
    session = enc.open_session("alice", trail=NO_TRAIL, access_token=alice)
    # the lying gateway: alice's session, decided as alice, with bob's token, with none, or as bob
    assert _code(_decide, enc, session, "alice", bob, "web.search", {"query": "q"}) is Code.IDENTITY_MISMATCH
    assert _code(_decide, enc, session, "alice", "", "web.search", {"query": "q"}) is Code.TOKEN_MISSING
    assert _code(_decide, enc, session, "bob", bob, "web.search", {"query": "q"}) \
        is Code.SESSION_PRINCIPAL_MISMATCH
    assert _code(enc.list_tools, session_id=session, principal="alice", access_token=bob) \
        is Code.IDENTITY_MISMATCH
    assert _decide(enc, session, "alice", alice, "web.search", {"query": "q"})["decision"] == "allow"


def test_an_expired_token_stops_deciding_even_from_the_cache(tmp_path: Path, issuer: DevIssuer) -> None:
    enc = _enclave(tmp_path, issuer)
    token = issuer.token("alice", now=NOW, lifetime=600)
    session = enc.open_session("alice", trail=NO_TRAIL, access_token=token)
    assert _decide(enc, session, "alice", token, "web.search", {"query": "q"})["decision"] == "allow"
    enc.clock = lambda: NOW + 600 + 31  # past exp and the 30 s leeway
    assert _code(_decide, enc, session, "alice", token, "web.search", {"query": "q"}) is Code.TOKEN_EXPIRED


def test_cedar_sees_what_the_token_proves(tmp_path: Path, issuer: DevIssuer) -> None:
    enc = _enclave(tmp_path, issuer)
    clerk = issuer.token("clerk", now=NOW, groups=["support"])
    treasurer = issuer.token("treasurer", now=NOW, groups=["finance"])
    denied = _decide(enc, enc.open_session("clerk", trail=NO_TRAIL, access_token=clerk), "clerk", clerk,
                     "payments.transfer", TRANSFER)
    rule = "policies/identity.cedar#payments-need-finance"
    assert (denied["decision"], denied["policy_ids"]) == ("deny", [rule])
    session = enc.open_session("treasurer", trail=NO_TRAIL, access_token=treasurer)
    decided = _decide(enc, session, "treasurer", treasurer, "payments.transfer", TRANSFER)
    assert rule not in decided["policy_ids"]


def test_a_tool_that_requires_a_scope_is_denied_signed_without_it(tmp_path: Path, issuer: DevIssuer) -> None:
    enc = _enclave(tmp_path, issuer)
    mail = {"to": ["bob@partner.example"], "subject": "s", "body": "b"}
    plain = issuer.token("alice", now=NOW, scope="files:read")
    scoped = issuer.token("alice", now=NOW + 1, scope="files:read mail:send")
    session = enc.open_session("alice", trail=NO_TRAIL, access_token=plain)
    denied = _decide(enc, session, "alice", plain, "email.send_external", mail)
    assert (denied["decision"], denied["reason_code"]) == ("deny", "INSUFFICIENT_SCOPE")
    assert denied["errors"] == [{"policy_id": "", "message": "the token lacks a scope the tool requires",
                                 "scope": "mail:send"}]
    assert _decide(enc, session, "alice", scoped, "email.send_external", mail)["reason_code"] != \
        "INSUFFICIENT_SCOPE"


def test_authenticate_names_the_principal_and_refuses_without_an_identity_section(
        tmp_path: Path, issuer: DevIssuer) -> None:
    enc = _enclave(tmp_path, issuer)
    assert enc.authenticate(issuer.token("alice", now=NOW)).principal == "alice"
    assert _code(enc.authenticate, DevIssuer("https://rogue.example").token(now=NOW)) \
        is Code.TOKEN_ISSUER_UNTRUSTED
    dev = inprocess_enclave(EXAMPLES / "realistic", tmp_path / "dev")
    assert _code(dev.authenticate, issuer.token(now=NOW)) is Code.TOKEN_ISSUER_UNTRUSTED
    # development mode: the gateway's word is taken and a token is not looked at
    assert dev.open_session("anyone", trail=NO_TRAIL, access_token="not-a-token")


def test_weakened_enclave_that_takes_the_gateways_word_lets_it_decide_as_anyone(
        tmp_path: Path, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The enclave before issue 17: the principal named is believed. The first test would fail."""
    monkeypatch.setattr(Enclave, "identify", lambda self, principal, token: None)
    enc = _enclave(tmp_path, issuer)
    session = enc.open_session("alice", trail=NO_TRAIL, access_token=issuer.token("bob", now=NOW))
    assert _decide(enc, session, "alice", "", "web.search", {"query": "q"})["decision"] == "allow"
