"""Access tokens checked against the bundle's issuers: each forgery or misuse has its own code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from jwt.algorithms import OKPAlgorithm

from cmcp_core.errors import CmcpError, Code
from cmcp_core.identity import IdentityConfigError, IdentityPolicy, jwk_thumbprint
from cmcp_devkit.issuer import RESOURCE, DevIssuer, identity_section

NOW = 1_900_000_000.0


def policy(*issuers: DevIssuer, **extra: object) -> IdentityPolicy:
    found = IdentityPolicy.from_manifest({"identity": identity_section(*issuers, **extra)})
    assert found is not None
    return found


def refused(pol: IdentityPolicy, token: str, now: float = NOW) -> Code:
    with pytest.raises(CmcpError) as caught:
        pol.verify(token, now)
    return caught.value.code


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_token_proves_its_subject_and_claims(alg: str) -> None:
    issuer = DevIssuer(alg=alg)
    identity = policy(issuer).verify(
        issuer.token("agent-a", now=NOW, scope="mail:send files:read", groups=["ops"], client_id="cli"),
        NOW)
    assert (identity.principal, identity.issuer, identity.client_id) == ("agent-a", issuer.issuer, "cli")
    assert identity.scopes == {"mail:send", "files:read"} and identity.groups == {"ops"}
    assert identity.expires_at == NOW + 600


def test_forgeries_and_misuse_each_have_their_code() -> None:
    issuer, other = DevIssuer(), DevIssuer("https://other.example")
    pol = policy(issuer)
    good = issuer.token(now=NOW)
    head, _, signature = good.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps(
        {**jwt.decode(good, options={"verify_signature": False}), "sub": "admin"}).encode()).rstrip(b"=")
    unsigned = jwt.encode({"iss": issuer.issuer, "sub": "admin", "aud": RESOURCE, "exp": NOW + 60},
                          None, algorithm="none")
    cases = {
        "payload edited": (f"{head}.{forged_body.decode()}.{signature}", Code.TOKEN_BAD_SIGNATURE),
        "alg none": (unsigned, Code.TOKEN_BAD_SIGNATURE),
        "signed by another key": (_resign(other, issuer), Code.TOKEN_BAD_SIGNATURE),
        "expired": (issuer.token(now=NOW - 3600), Code.TOKEN_EXPIRED),
        "not yet valid": (issuer.token(now=NOW + 3600), Code.TOKEN_NOT_YET_VALID),
        "wrong audience": (issuer.token(now=NOW, audience="https://other.example/mcp"),
                           Code.TOKEN_AUDIENCE_MISMATCH),
        "wrong issuer": (other.token(now=NOW), Code.TOKEN_ISSUER_UNTRUSTED),
        "unknown key id": (issuer.token(now=NOW, header={"kid": "not-pinned"}), Code.TOKEN_KEY_UNTRUSTED),
        "no subject": (issuer.token(None, now=NOW), Code.TOKEN_CLAIMS_INVALID),  # type: ignore[arg-type]
        "no expiry": (issuer.token(now=NOW, exp=None), Code.TOKEN_CLAIMS_INVALID),
        "lives too long": (issuer.token(now=NOW, lifetime=48 * 3600), Code.TOKEN_CLAIMS_INVALID),
        "not a JWT": ("not.a.jwt", Code.TOKEN_MALFORMED),
        "empty": ("", Code.TOKEN_MISSING),
    }
    assert {name: refused(pol, token) for name, (token, _) in cases.items()} == {
        name: code for name, (_, code) in cases.items()}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _resign(other: DevIssuer, issuer: DevIssuer) -> str:
    """A token naming ``issuer`` and its key id, signed with ``other``'s key."""
    claims = {"iss": issuer.issuer, "sub": "admin", "aud": RESOURCE, "iat": int(NOW), "exp": int(NOW) + 60}
    return jwt.encode(claims, other.private, algorithm="RS256", headers={"kid": issuer.thumbprint})


def test_hmac_with_the_public_key_as_secret_is_refused() -> None:
    """Algorithm confusion: an HS256 token keyed with the issuer's public key bytes."""
    issuer = DevIssuer()
    secret = json.dumps(issuer.public_jwk).encode()
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.thumbprint}).encode())
    body = _b64(json.dumps({"iss": issuer.issuer, "sub": "admin", "aud": RESOURCE,
                            "exp": int(NOW) + 60}).encode())
    mac = _b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    token = f"{head}.{body}.{mac}"
    assert refused(policy(issuer), token) is Code.TOKEN_BAD_SIGNATURE


def test_the_enclave_clock_decides_expiry_and_the_cache_keeps_to_it() -> None:
    issuer = DevIssuer()
    pol = policy(issuer, leeway_seconds=0)
    token = issuer.token(now=NOW, lifetime=600)
    assert pol.verify(token, NOW).principal == "agent-a"
    assert pol.verify(token, NOW + 599).principal == "agent-a"  # from the cache
    assert refused(pol, token, NOW + 600) is Code.TOKEN_EXPIRED  # the cached one too
    assert refused(pol, token, NOW + 601) is Code.TOKEN_EXPIRED


def test_pinned_keys_are_taken_only_when_their_thumbprint_is_pinned() -> None:
    pinned, stranger = DevIssuer(), DevIssuer("https://issuer.example")
    pol = IdentityPolicy.from_manifest({"identity": {"audiences": [RESOURCE],
                                                     "issuers": [pinned.trust(pinned=True)]}})
    assert pol is not None
    token = pinned.token(now=NOW)
    assert refused(pol, token) is Code.TOKEN_KEY_UNTRUSTED  # pinned, but not supplied yet
    assert pol.add_keys({"keys": [stranger.public_jwk]}) == []  # same issuer URL, key not pinned
    assert refused(pol, stranger.token(now=NOW)) is Code.TOKEN_KEY_UNTRUSTED
    assert pol.add_keys({"keys": [pinned.public_jwk, {"kty": "oct", "k": "x"}]}) == [pinned.thumbprint]
    assert pol.verify(token, NOW).principal == "agent-a"


def test_several_issuers_keep_their_principals_apart() -> None:
    first, second = DevIssuer("https://one.example"), DevIssuer("https://two.example", alg="ES256")
    pol = policy(first, second)
    assert pol.verify(first.token("alice", now=NOW), NOW).principal == "0:alice"
    assert pol.verify(second.token("alice", now=NOW), NOW).principal == "1:alice"


@pytest.mark.parametrize("section, message", [
    ({"audiences": [], "issuers": []}, "audiences"),
    ({"audiences": [RESOURCE], "issuers": [{"issuer": "https://x"}]}, "trusts no key"),
    ({"audiences": [RESOURCE], "issuers": [{"issuer": "https://x", "key_thumbprints": ["t"],
                                            "algorithms": ["HS256"]}]}, "asymmetric"),
    ({"audiences": [RESOURCE], "issuers": [{"issuer": "https://x", "key_thumbprints": ["t"],
                                            "algorithms": ["none"]}]}, "asymmetric"),
    ({"audiences": [RESOURCE], "issuers": [{"issuer": "https://x", "key_thumbprints": ["t"]},
                                           {"issuer": "https://y", "key_thumbprints": ["u"]}]},
     "principal_prefix"),
    ({"audiences": [RESOURCE], "issuers": [{"issuer": "https://x", "key_thumbprints": ["t"],
                                            "claims": {"role": "x"}}]}, "claims"),
])
def test_an_unusable_identity_section_is_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(IdentityConfigError, match=message):
        IdentityPolicy.from_manifest({"identity": section})


def test_a_private_key_is_never_trusted_inline() -> None:
    issuer = DevIssuer(alg="EdDSA")
    private = json.loads(OKPAlgorithm.to_jwk(issuer.private))
    with pytest.raises(IdentityConfigError, match="private"):
        IdentityPolicy.from_manifest({"identity": {"audiences": [RESOURCE], "issuers": [
            {"issuer": issuer.issuer, "jwks": {"keys": [private]}}]}})


def test_thumbprint_is_rfc7638() -> None:
    """The RFC 7638 section 3.1 example key and its published thumbprint."""
    key = {"kty": "RSA", "e": "AQAB", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
        "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    assert jwk_thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
