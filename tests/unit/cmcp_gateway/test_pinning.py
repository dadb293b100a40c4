"""Rendezvous pinning: keyed on the principal, so every replica agrees; a session found by its id's
owner or its principal, and never anywhere but there."""

from __future__ import annotations

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_core.session_id import mint
from cmcp_gateway.pinning import Pin, owner, pick

ENCLAVES = [Pin(f"10.0.0.{i}:50051", f"{i}" * 16 + "-thumbprint-of-key-" + f"{i}" * 8) for i in range(4)]


def test_a_principal_always_gets_the_same_enclave_whatever_the_replica_sees_first() -> None:
    """Two replicas list the attested set in different orders: they still agree on the enclave."""
    assert pick("alice", ENCLAVES, "r") == pick("alice", list(reversed(ENCLAVES)), "r")


def test_principals_spread_over_the_enclaves() -> None:
    chosen = {pick(f"agent-{n}", ENCLAVES, "r") for n in range(200)}
    assert chosen == set(ENCLAVES)


def test_only_the_principals_of_a_departed_enclave_move() -> None:
    before = {f"agent-{n}": pick(f"agent-{n}", ENCLAVES, "r") for n in range(200)}
    survivors = ENCLAVES[1:]
    for principal, pin in before.items():
        if pin != ENCLAVES[0]:
            assert pick(principal, survivors, "r") == pin


def test_no_attested_enclave_is_tee_unavailable() -> None:
    with pytest.raises(CmcpError) as raised:
        pick("alice", [], "demo")
    assert raised.value.code is Code.TEE_UNAVAILABLE and "demo" in raised.value.detail


def test_a_minted_session_is_found_at_the_enclave_its_id_names_not_the_principals() -> None:
    home = pick("alice", ENCLAVES, "r")
    elsewhere = next(p for p in ENCLAVES if p != home)
    assert owner(mint(elsewhere.kid), "alice", ENCLAVES) == elsewhere


def test_a_session_whose_owner_is_not_attested_is_lost_never_moved() -> None:
    """The attacker's hope: the owner is gone, so the session lands on a clean enclave. It does not."""
    gone, *others = ENCLAVES
    with pytest.raises(CmcpError) as raised:
        owner(mint(gone.kid), "alice", others)
    assert raised.value.code is Code.SESSION_LOST
    with pytest.raises(CmcpError) as none:
        owner(mint(gone.kid), "alice", [])
    assert none.value.code is Code.SESSION_LOST


def test_an_id_without_an_owner_prefix_goes_to_the_principals_enclave() -> None:
    assert owner("0" * 32, "alice", ENCLAVES) == pick("alice", ENCLAVES, "r")
    with pytest.raises(CmcpError) as raised:
        owner("0" * 32, "alice", [])
    assert raised.value.code is Code.SESSION_LOST
