"""A token issuer for tests: real keys, real JWTs (PyJWT), and the manifest section that trusts it.

:class:`TestIssuer` plays an OAuth 2.1 authorization server: it signs access tokens with its own
RSA, EC or Ed25519 key and publishes its JWK Set. :func:`identity_bundle` copies a bundle
directory with the ``identity`` section that trusts it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from cmcp_core.identity import jwk_thumbprint

RESOURCE = "https://gateway.example/routes/demo/mcp"


class TestIssuer:
    __test__ = False  # not a pytest class

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

    def trust(self, *, pinned: bool = False, **extra: Any) -> dict[str, Any]:
        """This issuer's entry in a manifest's ``identity.issuers`` (keys inline, or pinned)."""
        keys = {"key_thumbprints": [self.thumbprint]} if pinned else {"jwks": self.jwks()}
        return {"issuer": self.issuer, "algorithms": [self.alg], **keys, **extra}


def identity_section(*issuers: TestIssuer, audiences: tuple[str, ...] = (RESOURCE,),
                     **extra: Any) -> dict[str, Any]:
    prefixes = len(issuers) > 1
    return {"audiences": list(audiences), **extra,
            "issuers": [i.trust(**({"principal_prefix": f"{n}:"} if prefixes else {}))
                        for n, i in enumerate(issuers)]}


AGENT_WITH_ATTRIBUTES = """entity Agent = {
    issuer?: String, subject?: String, client_id?: String, groups?: Set<String>, scopes?: Set<String>,
  };"""


def identity_bundle(source: Path, target: Path, section: dict[str, Any], *,
                    required_scopes: dict[str, list[str]] | None = None,
                    policies: dict[str, str] | None = None) -> Path:
    """A copy of the bundle directory ``source`` that trusts ``section``'s issuers; its schema gives
    ``cMCP::Agent`` the attributes a token proves, ``policies`` adds Cedar files."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "identity": section}, indent=2))
    catalog = json.loads((target / "catalog.json").read_text())
    for entry in catalog:
        if required_scopes and entry["tool_name"] in required_scopes:
            entry["required_scopes"] = required_scopes[entry["tool_name"]]
    (target / "catalog.json").write_text(json.dumps(catalog, indent=2, ensure_ascii=False))
    schema = target / "schema.cedarschema"
    schema.write_text(schema.read_text().replace("entity Agent;", AGENT_WITH_ATTRIBUTES, 1))
    for name, text in (policies or {}).items():
        (target / "policies" / name).write_text(text)
    return target
