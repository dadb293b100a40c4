"""Enclave-minted session ids: shape, owner and uniqueness."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import session_id
from cmcp_core.crypto import thumbprint

KID = thumbprint(Ed25519PrivateKey.generate().public_key())


def test_minted_id_names_its_owner() -> None:
    sid = session_id.mint(KID)
    owner, random_part = sid.split(".")
    assert owner == KID[:16] and len(random_part) == 22
    assert session_id.owner_prefix(sid) == owner
    assert KID.startswith(session_id.owner_prefix(sid) or "x")
    assert session_id.owned_by(sid, KID)


def test_ids_do_not_repeat() -> None:
    assert len({session_id.mint(KID) for _ in range(10_000)}) == 10_000


def test_malformed_ids_have_no_owner() -> None:
    good = session_id.mint(KID)
    for bad in ("", "abc", good + "x", good.replace(".", ""), "." + good.split(".")[1],
                good.split(".")[0] + ".", good.replace(".", ".\n"), "a" * 16 + "." + "b" * 21,
                "a" * 16 + "." + "b" * 22 + "\n", "a/" * 8 + "." + "b" * 22):
        assert session_id.owner_prefix(bad) is None, bad


def test_another_enclaves_id_is_not_owned() -> None:
    other = thumbprint(Ed25519PrivateKey.generate().public_key())
    assert not session_id.owned_by(session_id.mint(other), KID)


def test_short_kid_is_refused() -> None:
    try:
        session_id.mint("short")
    except ValueError:
        return
    raise AssertionError("a kid shorter than the owner prefix must be refused")
