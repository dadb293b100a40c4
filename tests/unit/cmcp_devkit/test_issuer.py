"""The development issuer signs real JWTs that the product's own verifier accepts."""

from __future__ import annotations

import time

import pytest

from cmcp_core.identity import IdentityPolicy
from cmcp_devkit.issuer import RESOURCE, DevIssuer, identity_section


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_tokens_verify_against_the_section_that_trusts_the_issuer(alg: str) -> None:
    issuer = DevIssuer(alg=alg)
    policy = IdentityPolicy.from_manifest({"identity": identity_section(issuer)})
    assert policy is not None
    identity = policy.verify(issuer.token("alice", scope="a b"), time.time())
    assert (identity.principal, identity.scopes, identity.issuer) == ("alice", {"a", "b"}, issuer.issuer)
    assert issuer.trust(pinned=True)["key_thumbprints"] == [issuer.thumbprint]
    assert identity_section(issuer)["audiences"] == [RESOURCE]
