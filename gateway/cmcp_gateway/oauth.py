"""MCP authorization at the gateway: a route as an OAuth 2.1 protected resource.

The gateway trusts no token itself: an enclave of the route verifies each one against the
measured bundle (:mod:`cmcp_core.identity`) and refuses any principal a token does not prove.
What is here is the protocol around that: the request's bearer token (RFC 6750, header only), the
principal it proves (asked of an enclave with ``Authenticate`` and cached by digest until the
token expires, so a call costs no extra round trip), Protected Resource Metadata (RFC 9728) and
the ``WWW-Authenticate`` challenges that send a client to it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

import orjson

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway import jsonrpc
from cmcp_gateway.config import Authorization
from cmcp_gateway.jsonrpc import FailedRequest
from cmcp_gateway.transport import Response

CACHE_SIZE = 4096
# The enclave's refusals that mean "this token does not do": answered 401 with a challenge.
TOKEN_REFUSED = frozenset({code for code in Code if code.value.startswith("TOKEN_")}
                          | {Code.UNAUTHENTICATED, Code.IDENTITY_MISMATCH})

Authenticate = Callable[[str], Awaitable[tuple[str, float]]]  # token -> (principal, expires_at)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The ``Authorization: Bearer`` value, ``None`` without the header; any other scheme (or a
    token in the query string, which is never read) is ``UNAUTHENTICATED``."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise CmcpError(Code.UNAUTHENTICATED, "send the access token as Authorization: Bearer <token>")
    return token


class TokenPrincipals:
    """Which principal each token proved, by SHA-256 digest, until the token's ``exp``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._known: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    async def principal(self, token: str, authenticate: Authenticate) -> str:
        digest = hashlib.sha256(token.encode()).digest()
        known = self._known.get(digest)
        if known is not None and self.clock() < known[1]:
            return known[0]
        principal, expires_at = await authenticate(token)
        self._known[digest] = (principal, expires_at)
        while len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)
        return principal

    def forget(self, token: str) -> None:
        """The enclave refused this token after all (expired meanwhile): ask again next time."""
        self._known.pop(hashlib.sha256(token.encode()).digest(), None)


def www_authenticate(auth: Authorization, *, error: str | None = None, description: str | None = None,
                     scope: str | None = None) -> str:
    """An RFC 6750 challenge naming the route's RFC 9728 metadata (where to get a token)."""
    params = [f'resource_metadata="{auth.metadata_url}"']
    if error:
        params.append(f'error="{error}"')
    if description:
        params.append(f'error_description="{description}"')
    if scope:
        params.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(params)


def refused(auth: Authorization, exc: CmcpError) -> FailedRequest:
    """``401`` with a challenge: no token at all (no error, per RFC 6750 §3.1) or one refused."""
    missing = exc.code in (Code.UNAUTHENTICATED, Code.TOKEN_MISSING)
    challenge = www_authenticate(auth) if missing else www_authenticate(
        auth, error="invalid_token", description=exc.code.value)
    return FailedRequest(jsonrpc.error_response(None, exc.code, exc.detail, status=401,
                                                headers={"www-authenticate": challenge}), str(exc.code))


def metadata_response(auth: Authorization) -> Response:
    return Response(orjson.dumps(auth.metadata()), media_type=jsonrpc.JSON,
                    headers={"cache-control": "max-age=300"})
