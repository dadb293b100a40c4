"""Session ids name their owner enclave; anything not minted in the format has no owner."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.crypto import thumbprint
from cmcp_core.session_id import mint, owner_prefix


def test_a_minted_id_names_its_owner_and_is_fresh() -> None:
    kid = thumbprint(Ed25519PrivateKey.generate().public_key())
    first, second = mint(kid), mint(kid)
    assert first != second
    owner = owner_prefix(first)
    assert owner is not None and kid.startswith(owner) and len(owner) == 16
    assert len(first.split(".")[1]) == 22


@pytest.mark.parametrize(
    "session_id",
    ["", "0123456789abcdef", "f" * 32, "0123456789abcde.AAAAAAAAAAAAAAAAAAAAAA",
     "0123456789abcdef.AAAAAAAAAAAAAAAAAAAAA", "0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAA.x",
     "0123456789abcde=.AAAAAAAAAAAAAAAAAAAAAA", "0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAA\n"],
)
def test_malformed_ids_have_no_owner(session_id: str) -> None:
    assert owner_prefix(session_id) is None


def test_a_key_id_too_short_mints_nothing() -> None:
    with pytest.raises(ValueError):
        mint("short")
