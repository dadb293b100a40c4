"""Agent identity: bearer tokens (file or mounted Secret directory) and mTLS client certificates.

The identity found here is the Cedar principal the enclave decides for. Tokens are compared as
SHA-256 digests with ``hmac.compare_digest`` against every entry (no early exit), so neither
the token's content nor which entry matched leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from pathlib import Path
from typing import Any

import yaml
from uvicorn.protocols.http.h11_impl import H11Protocol

from cmcp_core.errors import CmcpError, Code
from cmcp_core.http_front import BoundedHttpToolsProtocol

ANONYMOUS = "anonymous"
PEER_CERT_STATE = "cmcp_peer_cert"


class TokenStore:
    def __init__(self, tokens: dict[str, str]) -> None:
        """``tokens`` maps token -> agent id."""
        for token, agent in tokens.items():
            if not token or not agent:
                raise ValueError("empty token or agent id")
        self._entries = [(hashlib.sha256(t.encode()).digest(), a) for t, a in tokens.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> TokenStore:
        """YAML or JSON mapping ``token: agent-id``."""
        text = Path(path).read_text(encoding="utf-8")
        raw: Any = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of token to agent id")
        return cls({str(k): str(v) for k, v in raw.items()})

    @classmethod
    def from_dir(cls, path: str | Path) -> TokenStore:
        """A mounted Kubernetes Secret: each key file is an agent id, its content the token."""
        tokens: dict[str, str] = {}
        for entry in sorted(Path(path).iterdir()):
            if entry.name.startswith(".") or not entry.is_file():  # skip ..data symlink dirs
                continue
            tokens[entry.read_text(encoding="utf-8").strip()] = entry.name
        return cls(tokens)

    def lookup(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for candidate, agent in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = agent
        return found


def identity_from_cert(cert: dict[str, Any]) -> str | None:
    """Agent id from a verified peer certificate: first URI/DNS SAN, else the subject CN."""
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("URI", "DNS"):
            return str(value)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def authenticate(
    headers: dict[str, str], peer_cert: dict[str, Any] | None, tokens: TokenStore | None, open_route: bool
) -> str:
    """Return the principal or raise ``UNAUTHENTICATED``; a credential that is presented must verify."""
    authz = headers.get("authorization")
    if authz is not None:
        scheme, _, token = authz.partition(" ")
        agent = tokens.lookup(token.strip()) if tokens is not None and scheme.lower() == "bearer" else None
        if agent is None:
            raise CmcpError(Code.UNAUTHENTICATED, "bearer token not recognised")
        if peer_cert is not None and identity_from_cert(peer_cert) not in (None, agent):
            raise CmcpError(Code.UNAUTHENTICATED, "client certificate and token name different agents")
        return agent
    if peer_cert is not None:
        agent = identity_from_cert(peer_cert)
        if agent:
            return agent
    if open_route:
        return ANONYMOUS
    raise CmcpError(Code.UNAUTHENTICATED, "this route needs an agent credential")


class _PeerCertMixin:
    """Expose the verified client certificate to the app.

    uvicorn does not implement the ASGI TLS extension, so the certificate goes into the
    per-connection copy of ``scope["state"]``.
    """

    app_state: dict[str, Any]

    def _capture_peer_cert(self, transport: Any) -> None:
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        if cert:
            self.app_state = {**self.app_state, PEER_CERT_STATE: cert}


class PeerCertH11Protocol(_PeerCertMixin, H11Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._capture_peer_cert(transport)


class PeerCertHttpToolsProtocol(_PeerCertMixin, BoundedHttpToolsProtocol):
    """The httptools parser: several times cheaper per request than h11 (the gateway's hot path),
    within the front door's limits (:func:`cmcp_core.http_front.bounded`)."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._capture_peer_cert(transport)
