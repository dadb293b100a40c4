"""Agent identity proven by an OAuth 2.1 access token (a JWT), checked against the measured bundle.

The manifest's ``identity`` section names the issuers the bundle trusts: each with its keys
inline (``jwks``) or pinned by RFC 7638 thumbprint (``key_thumbprints``, the keys themselves
supplied at run time, e.g. a cluster's JWKS), the algorithms it signs with, and how its claims
map to the Cedar principal (``cMCP::Agent::"<prefix><principal claim>"``) and the principal's
attributes (``issuer``, ``subject``, ``client_id``, ``groups``, ``scopes``). ``audiences`` are
the resource URIs (RFC 8707) a token must be issued for. The enclave verifies every token
itself, so a gateway can only name a principal some trusted issuer vouched for; a bundle without
the section is the development mode in which the gateway's word is taken.

Tokens are checked by :class:`IdentityPolicy.verify` with PyJWT (signature first, then claims)
and cached by SHA-256 digest until they expire: the hot path does one hash and one dict lookup.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from cmcp_core.digest import b64url
from cmcp_core.errors import CmcpError, Code

MANIFEST_KEY = "identity"
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_CLAIMS = {"principal": "sub", "client_id": "client_id", "groups": "groups", "scopes": "scope"}
DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_MAX_LIFETIME_SECONDS = 24 * 3600
MAX_TOKEN_BYTES = 16 * 1024
CACHE_SIZE = 4096
_FALLBACK_CLAIMS = {"client_id": ("azp",), "scopes": ("scp",)}  # RFC 9068 names, then common ones
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


class IdentityConfigError(ValueError):
    """The manifest's ``identity`` section is unusable (the bundle does not validate)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token proves the agent is; what Cedar sees as the principal's attributes."""

    principal: str
    issuer: str
    subject: str
    client_id: str
    groups: frozenset[str]
    scopes: frozenset[str]
    expires_at: float

    def attributes(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "subject": self.subject, "client_id": self.client_id,
                "groups": sorted(self.groups), "scopes": sorted(self.scopes)}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (base64url SHA-256 of the required members) of an RSA, EC or OKP key."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise IdentityConfigError(f"key type {jwk.get('kty')!r} or its members are not supported")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class _Key:
    thumbprint: str
    kid: str
    key: Any  # a PyJWT algorithm's key object
    algorithms: tuple[str, ...]


def _key(jwk: Mapping[str, Any], allowed: tuple[str, ...]) -> _Key:
    """A public key from its JWK, with the allowed algorithms that fit its type."""
    if any(private in jwk for private in ("d", "p", "q")):
        raise IdentityConfigError("a trusted key must be a public key (it carries private members)")
    thumbprint = jwk_thumbprint(jwk)
    algorithms = get_default_algorithms()
    fitting = []
    for name in allowed:
        try:
            key = algorithms[name].from_jwk(dict(jwk))
        except (jwt.exceptions.PyJWTError, ValueError, KeyError, TypeError):
            continue
        fitting.append((name, key))
    if not fitting:
        raise IdentityConfigError(f"key {thumbprint} fits none of the algorithms {list(allowed)}")
    return _Key(thumbprint, str(jwk.get("kid") or thumbprint), fitting[0][1], tuple(n for n, _ in fitting))


@dataclass
class Issuer:
    """One trusted issuer: its keys (inline, or pinned and supplied later) and its claims mapping."""

    issuer: str
    algorithms: tuple[str, ...]
    claims: dict[str, str]
    prefix: str
    pins: frozenset[str]
    keys: dict[str, _Key] = field(default_factory=dict)  # by thumbprint

    def candidates(self, kid: str | None) -> list[_Key]:
        if kid is None:
            return list(self.keys.values())
        return [k for k in self.keys.values() if kid in (k.kid, k.thumbprint)]


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise IdentityConfigError(f"{what} must be a list of non-empty strings")
    return list(value)


def _issuer(raw: Any, index: int) -> Issuer:
    where = f"identity.issuers[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("issuer"), str) or not raw["issuer"]:
        raise IdentityConfigError(f"{where} needs an issuer URL")
    algorithms = tuple(_strings(raw.get("algorithms", list(DEFAULT_ALGORITHMS)), f"{where}.algorithms"))
    unknown = [a for a in algorithms if a not in get_default_algorithms() or a.lower() == "none"
               or a.startswith("HS")]
    if unknown:
        raise IdentityConfigError(f"{where}.algorithms: {unknown} are not asymmetric signature algorithms")
    claims = dict(DEFAULT_CLAIMS)
    mapping = raw.get("claims", {})
    if not isinstance(mapping, dict) or not all(k in DEFAULT_CLAIMS and isinstance(v, str) and v
                                                for k, v in mapping.items()):
        raise IdentityConfigError(f"{where}.claims maps {sorted(DEFAULT_CLAIMS)} to claim names")
    claims.update(mapping)
    prefix = raw.get("principal_prefix", "")
    if not isinstance(prefix, str):
        raise IdentityConfigError(f"{where}.principal_prefix must be a string")
    pins = frozenset(_strings(raw.get("key_thumbprints", []), f"{where}.key_thumbprints"))
    issuer = Issuer(raw["issuer"], algorithms, claims, prefix, pins)
    jwks = raw.get("jwks")
    if jwks is not None:
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
            raise IdentityConfigError(f"{where}.jwks must be a JWK Set with at least one key")
        for jwk in jwks["keys"]:
            if not isinstance(jwk, dict):
                raise IdentityConfigError(f"{where}.jwks: every key must be a JWK object")
            key = _key(jwk, algorithms)
            issuer.keys[key.thumbprint] = key
    if not issuer.keys and not pins:
        raise IdentityConfigError(f"{where} trusts no key: give jwks or key_thumbprints")
    return issuer


class IdentityPolicy:
    """The bundle's trusted issuers and audiences, and the cache of tokens already verified."""

    def __init__(self, issuers: list[Issuer], audiences: list[str], *, leeway: int,
                 max_lifetime: int) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self.audiences = audiences
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self._cache: OrderedDict[bytes, Identity] = OrderedDict()

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> IdentityPolicy | None:
        """The manifest's ``identity`` section; ``None`` when it has none (development mode)."""
        raw = manifest.get(MANIFEST_KEY)
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise IdentityConfigError("identity must be an object")
        audiences = _strings(raw.get("audiences"), "identity.audiences")
        if not audiences:
            raise IdentityConfigError("identity.audiences must name at least one resource URI")
        issuers_raw = raw.get("issuers")
        if not isinstance(issuers_raw, list) or not issuers_raw:
            raise IdentityConfigError("identity.issuers must list at least one issuer")
        issuers = [_issuer(entry, n) for n, entry in enumerate(issuers_raw)]
        if len({i.issuer for i in issuers}) != len(issuers):
            raise IdentityConfigError("identity.issuers names an issuer twice")
        if len(issuers) > 1 and len({i.prefix for i in issuers}) != len(issuers):
            raise IdentityConfigError("with several issuers each needs its own principal_prefix, "
                                      "or two issuers' subjects could name one principal")
        leeway = raw.get("leeway_seconds", DEFAULT_LEEWAY_SECONDS)
        lifetime = raw.get("max_token_lifetime_seconds", DEFAULT_MAX_LIFETIME_SECONDS)
        if not isinstance(leeway, int) or not 0 <= leeway <= 300:
            raise IdentityConfigError("identity.leeway_seconds must be an integer in 0..300")
        if not isinstance(lifetime, int) or lifetime <= 0:
            raise IdentityConfigError("identity.max_token_lifetime_seconds must be a positive integer")
        return cls(issuers, audiences, leeway=leeway, max_lifetime=lifetime)

    def add_keys(self, jwks: Mapping[str, Any]) -> list[str]:
        """Take the keys of ``jwks`` (untrusted, e.g. fetched from an issuer) whose thumbprint an
        issuer pins; every other key is ignored. Returns the thumbprints taken."""
        taken = []
        for jwk in jwks.get("keys", []) if isinstance(jwks.get("keys"), list) else []:
            if not isinstance(jwk, dict):
                continue
            try:
                thumbprint = jwk_thumbprint(jwk)
            except IdentityConfigError:
                continue
            for issuer in self.issuers.values():
                if thumbprint in issuer.pins and thumbprint not in issuer.keys:
                    try:
                        issuer.keys[thumbprint] = _key(jwk, issuer.algorithms)
                    except IdentityConfigError:
                        continue
                    taken.append(thumbprint)
        return taken

    def verify(self, token: str, now: float) -> Identity:
        """The identity ``token`` proves at ``now``; ``CmcpError`` with a ``TOKEN_*`` code otherwise."""
        if not token:
            raise CmcpError(Code.TOKEN_MISSING, "this route's bundle requires an access token")
        if len(token) > MAX_TOKEN_BYTES:
            raise CmcpError(Code.TOKEN_MALFORMED, f"the token exceeds {MAX_TOKEN_BYTES} bytes")
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if now < cached.expires_at + self.leeway:
                return cached
            del self._cache[digest]
            raise CmcpError(Code.TOKEN_EXPIRED, "the token has expired")
        identity = self._verify(token, now)
        self._cache[digest] = identity
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity

    def _verify(self, token: str, now: float) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.exceptions.PyJWTError as exc:
            raise CmcpError(Code.TOKEN_MALFORMED, f"the token is not a JWT: {exc}") from exc
        named = unverified.get("iss")
        issuer = self.issuers.get(named) if isinstance(named, str) else None
        if issuer is None:
            raise CmcpError(Code.TOKEN_ISSUER_UNTRUSTED,
                            f"the bundle trusts no issuer {unverified.get('iss')!r}")
        algorithm = header.get("alg")
        if algorithm not in issuer.algorithms:
            raise CmcpError(Code.TOKEN_BAD_SIGNATURE,
                            f"algorithm {algorithm!r} is not one {issuer.issuer} may sign with")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        keys = [k for k in issuer.candidates(kid) if algorithm in k.algorithms]
        if not keys:
            raise CmcpError(Code.TOKEN_KEY_UNTRUSTED,
                            f"the token's key {kid!r} is not one the bundle pins for {issuer.issuer}")
        claims = self._claims(token, keys, algorithm, issuer, now)
        return self._identity(claims, issuer)

    def _claims(self, token: str, keys: list[_Key], algorithm: str, issuer: Issuer,
                now: float) -> dict[str, Any]:
        failure: CmcpError | None = None
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key.key, algorithms=[algorithm], audience=self.audiences, issuer=issuer.issuer,
                    options={"require": ["exp", "iss", "aud"], "verify_exp": False,
                             "verify_nbf": False, "verify_iat": False})  # times: _check_times
            except jwt.exceptions.InvalidSignatureError:
                failure = CmcpError(Code.TOKEN_BAD_SIGNATURE, "the token's signature does not verify")
                continue
            except jwt.exceptions.PyJWTError as exc:
                raise _claim_error(exc) from exc
            break
        else:
            assert failure is not None
            raise failure
        self._check_times(claims, now)
        return claims

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        """Times against the enclave's clock (PyJWT checked them against the host's)."""
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not isinstance(exp, int | float) or now >= exp + self.leeway:
            raise CmcpError(Code.TOKEN_EXPIRED, "the token has expired")
        if isinstance(nbf, int | float) and now + self.leeway < nbf:
            raise CmcpError(Code.TOKEN_NOT_YET_VALID, "the token is not valid yet")
        start = iat if isinstance(iat, int | float) else nbf if isinstance(nbf, int | float) else now
        if exp - start > self.max_lifetime:
            raise CmcpError(Code.TOKEN_CLAIMS_INVALID,
                            f"the token lives {int(exp - start)} s, over the bundle's {self.max_lifetime} s")

    def _identity(self, claims: Mapping[str, Any], issuer: Issuer) -> Identity:
        names = issuer.claims
        subject = claims.get(names["principal"])
        if not isinstance(subject, str) or not subject:
            raise CmcpError(Code.TOKEN_CLAIMS_INVALID, f"the token has no {names['principal']!r} claim")
        return Identity(
            principal=issuer.prefix + subject, issuer=issuer.issuer, subject=subject,
            client_id=_claim(claims, names["client_id"], "client_id") or "",
            groups=frozenset(_string_set(_claim(claims, names["groups"], "groups"))),
            scopes=frozenset(_string_set(_claim(claims, names["scopes"], "scopes"))),
            expires_at=float(claims["exp"]))


def _claim(claims: Mapping[str, Any], name: str, role: str) -> Any:
    if name in claims:
        return claims[name]
    for fallback in _FALLBACK_CLAIMS.get(role, ()):
        if fallback in claims:
            return claims[fallback]
    return None


def _string_set(value: Any) -> list[str]:
    """A space-separated ``scope`` string (RFC 9068) or a list of strings; anything else is none."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _claim_error(exc: Exception) -> CmcpError:
    errors = jwt.exceptions
    if isinstance(exc, errors.ExpiredSignatureError):
        return CmcpError(Code.TOKEN_EXPIRED, "the token has expired")
    if isinstance(exc, errors.ImmatureSignatureError):
        return CmcpError(Code.TOKEN_NOT_YET_VALID, "the token is not valid yet")
    if isinstance(exc, errors.InvalidAudienceError):
        return CmcpError(Code.TOKEN_AUDIENCE_MISMATCH,
                         "the token is not issued for this route's resource (RFC 8707 audience)")
    if isinstance(exc, errors.InvalidIssuerError):
        return CmcpError(Code.TOKEN_ISSUER_UNTRUSTED, "the token's issuer is not the key's issuer")
    if isinstance(exc, errors.MissingRequiredClaimError):
        return CmcpError(Code.TOKEN_CLAIMS_INVALID, str(exc))
    return CmcpError(Code.TOKEN_MALFORMED, f"the token does not decode: {exc}")
