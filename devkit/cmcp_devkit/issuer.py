"""A development token issuer: real keys and real JWT access tokens, for local runs and tests.

:class:`DevIssuer` plays an OAuth 2.1 authorization server (or a cluster's ServiceAccount
issuer) where none runs: it signs access tokens with its own RSA, EC or Ed25519 key (PyJWT) and
publishes its JWK Set, also over HTTP with OIDC discovery (:func:`serving`);
:func:`identity_section` is the manifest ``identity`` section that trusts it (cmcp_core.identity).
The local conformance target and the tests use it; nothing in a deployment does.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from cmcp_core.identity import jwk_thumbprint

RESOURCE = "https://gateway.example/routes/demo/mcp"  # the resource (RFC 8707) tokens are for by default


class DevIssuer:
    """A development OAuth issuer: its own key, tokens it signs, its JWK Set."""

    def __init__(self, issuer: str = "https://issuer.example", alg: str = "RS256") -> None:
        self.issuer = issuer
        self.alg = alg
        if alg == "RS256":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            public = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            public = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        else:
            raise ValueError(alg)
        self.thumbprint = jwk_thumbprint(public)
        self.public_jwk = {**public, "kid": self.thumbprint, "use": "sig", "alg": alg}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def token(self, subject: str = "agent-a", *, audience: str | list[str] = RESOURCE,
              lifetime: int = 600, now: float | None = None, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
        """A signed access token; ``claims`` override or add to the standard ones."""
        issued = int(time.time() if now is None else now)
        body = {"iss": self.issuer, "sub": subject, "aud": audience, "iat": issued,
                "nbf": issued, "exp": issued + lifetime, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.alg,
                          headers={"kid": self.thumbprint, **(header or {})})

    def trust(self, *, pinned: bool = False, principal_prefix: str = "") -> dict[str, Any]:
        """This issuer's entry in a manifest's ``identity.issuers`` (keys inline, or pinned)."""
        keys = {"key_thumbprints": [self.thumbprint]} if pinned else {"jwks": self.jwks()}
        entry = {"issuer": self.issuer, "algorithms": [self.alg], **keys}
        return {**entry, "principal_prefix": principal_prefix} if principal_prefix else entry


def identity_section(*issuers: DevIssuer, audiences: tuple[str, ...] = (RESOURCE,),
                     **extra: Any) -> dict[str, Any]:
    prefixes = len(issuers) > 1
    return {"audiences": list(audiences), **extra,
            "issuers": [i.trust(principal_prefix=f"{n}:" if prefixes else "")
                        for n, i in enumerate(issuers)]}


@contextlib.contextmanager
def serving(issuer: DevIssuer) -> Iterator[str]:
    """OIDC discovery (``/.well-known/openid-configuration``) and the JWK Set (``/jwks``) over HTTP
    at the issuer's own URL, which must be ``http://127.0.0.1:<free port>``; yields that URL."""
    where = urlsplit(issuer.issuer)
    if where.scheme != "http" or where.hostname != "127.0.0.1" or where.port is None:
        raise ValueError(f"{issuer.issuer}: serve a development issuer at http://127.0.0.1:<port>")
    documents = {"/.well-known/openid-configuration": {"issuer": issuer.issuer,
                                                        "jwks_uri": f"{issuer.issuer}/jwks"},
                 "/jwks": issuer.jwks()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document = documents.get(self.path)
            if document is None:
                self.send_error(404)
                return
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", where.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer.issuer
    finally:
        server.shutdown()
        server.server_close()
