"""The gateway's OAuth protocol pieces: bearer parsing, the principal cache, RFC 6750 challenges."""

from __future__ import annotations

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.config import Authorization, parse_route
from cmcp_gateway.oauth import TokenPrincipals, bearer_token, refused, www_authenticate

AUTH = Authorization("https://gw.example/mcp/mail", ("https://issuer.example",), ("mail:send",))


def test_bearer_token_comes_from_the_header_only() -> None:
    assert bearer_token({}) is None
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "bearer  abc "}) == "abc"
    for bad in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer   "):
        with pytest.raises(CmcpError) as caught:
            bearer_token({"authorization": bad})
        assert caught.value.code is Code.UNAUTHENTICATED


async def test_a_token_is_asked_about_once_until_it_expires() -> None:
    now = [1000.0]
    asked: list[str] = []

    async def authenticate(token: str) -> tuple[str, float]:
        asked.append(token)
        return f"principal-of-{token}", 1060.0

    cache = TokenPrincipals(clock=lambda: now[0])
    assert await cache.principal("t1", authenticate) == "principal-of-t1"
    assert await cache.principal("t1", authenticate) == "principal-of-t1"
    assert asked == ["t1"]
    now[0] = 1060.0  # expired: asked again (the enclave will refuse it)
    await cache.principal("t1", authenticate)
    cache.forget("t1")
    await cache.principal("t1", authenticate)
    assert asked == ["t1", "t1", "t1"]


async def test_a_refusal_is_not_cached() -> None:
    async def refuse(token: str) -> tuple[str, float]:
        raise CmcpError(Code.TOKEN_EXPIRED, "expired")

    cache = TokenPrincipals()
    for _ in range(2):
        with pytest.raises(CmcpError):
            await cache.principal("t", refuse)


def test_challenges_follow_rfc_6750_and_name_the_metadata() -> None:
    metadata = 'resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp/mail"'
    assert www_authenticate(AUTH) == f"Bearer {metadata}"
    missing = refused(AUTH, CmcpError(Code.UNAUTHENTICATED, "no token")).response
    assert (missing.status, dict(missing.headers or {})["www-authenticate"]) == (401, f"Bearer {metadata}")
    expired = refused(AUTH, CmcpError(Code.TOKEN_EXPIRED, "expired")).response
    assert dict(expired.headers or {})["www-authenticate"] == (
        f'Bearer {metadata}, error="invalid_token", error_description="TOKEN_EXPIRED"')
    assert www_authenticate(AUTH, error="insufficient_scope", scope="mail:send").endswith(
        'error="insufficient_scope", scope="mail:send"')


@pytest.mark.parametrize("block, message", [
    ({"resource": "gw.example/mcp", "authorization_servers": ["https://i"]}, "absolute"),
    ({"resource": "https://gw.example/mcp#x", "authorization_servers": ["https://i"]}, "fragment"),
    ({"resource": "https://gw.example/mcp", "authorization_servers": []}, "issuers"),
])
def test_a_route_authorization_block_is_checked(block: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_route({"name": "r", "upstream": "http://u", "audience": "a",
                     "expected_bundle_hashes": ["sha256:" + "0" * 64], "authorization": block})
    with pytest.raises(ValueError, match="open"):
        parse_route({"name": "r", "upstream": "http://u", "audience": "a", "open": True,
                     "expected_bundle_hashes": ["sha256:" + "0" * 64],
                     "authorization": {"resource": "https://g/mcp", "authorization_servers": ["https://i"]}})
