"""Properties of the guard's permit check, attacked with hypothesis.

A permit minted by a real enclave process is the seed; any edit to it, any other tool or
argument, any second use, is refused with a coded error, and the replay cache stays bounded.
"""

from __future__ import annotations

import asyncio
import string
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cmcp_core import permit as permits
from cmcp_core.errors import CmcpError
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_guard.check import PermitChecker
from cmcp_guard.replay import ReplayCache
from tests.helpers.gateway_stack import AUDIENCE, PERMIT_ARGS, PERMIT_TOOL, get_permit

B64 = string.ascii_letters + string.digits + "-_."


@pytest.fixture(scope="module")
def token(enclave: EnclaveProcess) -> str:
    return asyncio.run(get_permit(enclave.address))


def checker(enclave: EnclaveProcess) -> PermitChecker:
    """Keys as the guard would hold them after appraising this enclave (attestation is tested elsewhere)."""
    return PermitChecker(audience=AUDIENCE, keys=lambda: {enclave.kid: enclave.public_key})


def test_the_seed_permit_is_good_exactly_once(enclave: EnclaveProcess, token: str) -> None:
    gate = checker(enclave)
    assert gate.check(token, PERMIT_TOOL, PERMIT_ARGS).kid == enclave.kid
    with pytest.raises(CmcpError) as again:
        gate.check(token, PERMIT_TOOL, PERMIT_ARGS)
    assert again.value.code.value == "PERMIT_REPLAYED"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_edit_to_a_permit_is_refused(enclave: EnclaveProcess, token: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(B64))
    mutated = token[:position] + char + token[position + 1 :]
    assume(mutated != token)
    with pytest.raises(CmcpError) as refused:
        checker(enclave).check(mutated, PERMIT_TOOL, PERMIT_ARGS)
    assert refused.value.code.value.startswith("PERMIT_")


json_scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    tool=st.text(min_size=1, max_size=20),
    arguments=st.dictionaries(st.text(max_size=8), json_scalars, max_size=4),
)
def test_other_tool_or_arguments_are_refused(
    enclave: EnclaveProcess, token: str, tool: str, arguments: dict[str, Any]
) -> None:
    assume(tool != PERMIT_TOOL or arguments != PERMIT_ARGS)
    with pytest.raises(CmcpError) as refused:
        checker(enclave).check(token, tool, arguments)
    assert refused.value.code.value in {"PERMIT_TOOL_MISMATCH", "PERMIT_ARGS_MISMATCH"}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.integers(0, 50)), max_size=60))
def test_replay_cache_detects_reuse_until_expiry_and_stays_bounded(uses: list[tuple[str, int]]) -> None:
    cache = ReplayCache(max_entries=1000)
    seen: dict[str, int] = {}
    now = 1000.0
    for nonce, ttl in uses:
        now += 1
        exp = int(now) + ttl
        live = nonce in seen and seen[nonce] + permits.CLOCK_SKEW_SECONDS >= now
        if live:
            with pytest.raises(CmcpError):
                cache.use(nonce, exp, now=now)
        else:
            cache.use(nonce, exp, now=now)
            seen[nonce] = exp
        # only permits that could still verify are remembered
        assert len(cache) <= sum(1 for e in seen.values() if e + permits.CLOCK_SKEW_SECONDS >= now - 1)


def test_replay_cache_fails_closed_when_full() -> None:
    cache = ReplayCache(max_entries=2)
    cache.use("a", 2000, now=1000)
    cache.use("b", 2000, now=1000)
    with pytest.raises(CmcpError) as full:
        cache.use("c", 2000, now=1000)
    assert full.value.code.value == "PERMIT_REPLAYED"
    cache.use("c", 3000, now=2010)  # once a and b have expired there is room again
