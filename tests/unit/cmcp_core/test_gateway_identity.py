"""Gateway proofs: only a key the initdata names, for this RPC, this enclave, this request, now."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cmcp_core.errors import CmcpError, Code
from cmcp_core.gateway_identity import (
    MAX_SKEW_SECONDS,
    check_proof,
    initdata_value,
    load_private_key,
    make_proof,
    trusted_keys,
)

NOW = 1_800_000_000.0
GATEWAY = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
TRUSTED = trusted_keys([initdata_value(GATEWAY)])
CLOSE = b"\n\x01s"  # some request bytes


def _check(proof: str | None, *, rpc: str = "CloseSession", enclave: str = "enclave-a",
           request: bytes = CLOSE, now: float = NOW) -> str:
    return check_proof(proof, TRUSTED, rpc=rpc, enclave_kid=enclave, request=request, now=now)


def _proof(key: Ed25519PrivateKey = GATEWAY, **over: object) -> str:
    fields: dict[str, object] = {"rpc": "CloseSession", "enclave_kid": "enclave-a", "request": CLOSE,
                                 "now": NOW}
    fields.update(over)
    return make_proof(key, **fields)  # type: ignore[arg-type]


def test_the_gateways_own_proof_is_accepted_and_names_its_key() -> None:
    assert _check(_proof()) in TRUSTED


@pytest.mark.parametrize(("proof", "check"), [
    (lambda: None, {}),
    (lambda: "", {}),
    (lambda: "not-a-proof", {}),
    (lambda: _proof(STRANGER), {}),                                   # a stranger's key
    (lambda: _proof(), {"rpc": "OpenSession"}),                       # replayed on another RPC
    (lambda: _proof(), {"enclave": "enclave-b"}),                     # replayed at another enclave
    (lambda: _proof(), {"request": b"\n\x01t"}),                      # another session's close
    (lambda: _proof(), {"now": NOW + MAX_SKEW_SECONDS + 1}),          # stale
    (lambda: _proof(now=NOW + MAX_SKEW_SECONDS + 1), {}),             # from the future
    (lambda: _proof().rsplit(".", 1)[0] + ".AAAA", {}),               # forged signature
    (lambda: _proof().rsplit(".", 1)[0] + ".!!", {}),                 # not base64url
], ids=["missing", "empty", "malformed", "stranger", "other-rpc", "other-enclave", "other-request",
        "stale", "future", "forged", "garbage"])
def test_every_other_proof_is_refused(proof: object, check: dict[str, object]) -> None:
    with pytest.raises(CmcpError) as refused:
        _check(proof(), **check)  # type: ignore[operator, arg-type]
    assert refused.value.code is Code.GATEWAY_UNAUTHENTICATED


def test_a_key_in_the_initdata_is_named_by_its_raw_public_bytes(tmp_path: Path) -> None:
    pem = tmp_path / "gateway.pem"
    pem.write_bytes(GATEWAY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    loaded = load_private_key(pem)
    assert initdata_value(loaded) == initdata_value(GATEWAY)
    with pytest.raises(ValueError):
        trusted_keys(["not base64url!"])
