"""Rendezvous pinning: deterministic per session, spread over enclaves, moved by nothing but loss."""

from __future__ import annotations

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.pinning import Pin, pick

ENCLAVES = [Pin(f"10.0.0.{i}:50051", f"kid-{i}") for i in range(4)]


def test_a_session_always_gets_the_same_enclave() -> None:
    assert pick("s-1", ENCLAVES, "r") == pick("s-1", list(reversed(ENCLAVES)), "r")


def test_sessions_spread_over_the_enclaves() -> None:
    chosen = {pick(f"s-{n}", ENCLAVES, "r") for n in range(200)}
    assert chosen == set(ENCLAVES)


def test_only_the_sessions_of_a_departed_enclave_move() -> None:
    before = {f"s-{n}": pick(f"s-{n}", ENCLAVES, "r") for n in range(200)}
    survivors = ENCLAVES[1:]
    for session_id, pin in before.items():
        if pin != ENCLAVES[0]:
            assert pick(session_id, survivors, "r") == pin


def test_no_attested_enclave_is_tee_unavailable() -> None:
    with pytest.raises(CmcpError) as raised:
        pick("s-1", [], "demo")
    assert raised.value.code is Code.TEE_UNAVAILABLE and "demo" in raised.value.detail
