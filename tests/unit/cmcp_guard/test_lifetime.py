"""Permit lifetime on the guard's own clock: an enclave whose clock the host moved cannot stretch a permit.

The permits are minted with the core permit API by a key the checker holds as attested (the
same position a real enclave's key has after appraisal), with ``iat``/``exp`` forged the way a
host-set guest clock would produce them.
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import permit as permits
from cmcp_core.crypto import thumbprint
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import args_digest
from cmcp_core.permit import Permit
from cmcp_guard.check import PermitChecker
from cmcp_guard.lifetime import DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_MAX_TTL_SECONDS, LifetimePolicy

AUDIENCE = "urn:cmcp:test-upstream"
TOOL = "payments.transfer"
ARGS = {"amount": 100, "currency": "EUR", "to": "acct-1"}
YEAR = 365 * 24 * 3600
GUARD_NOW = 1_800_000_000.0  # the guard's clock, fixed so no test depends on when it runs

KEY = Ed25519PrivateKey.generate()


def mint(*, iat: float, ttl: int = DEFAULT_MAX_TTL_SECONDS) -> str:
    """A permit from an attested enclave whose own clock reads ``iat``."""
    return permits.mint(
        KEY,
        session_id="s",
        call_id="c",
        tool=TOOL,
        args_digest=args_digest(ARGS),
        audience=AUDIENCE,
        bundle_hash="sha256:" + "0" * 64,
        ttl_seconds=ttl,
        now=iat,
    )


def checker(lifetime: LifetimePolicy | None = None) -> PermitChecker:
    return PermitChecker(
        audience=AUDIENCE, keys=lambda: {thumbprint(KEY.public_key()): KEY.public_key()}, lifetime=lifetime
    )


def refusal(gate: PermitChecker, token: str, now: float) -> Code:
    with pytest.raises(CmcpError) as refused:
        gate.check(token, TOOL, ARGS, now=now)
    return refused.value.code


class TrustsExpOnly(LifetimePolicy):
    """Weakened component: the guard before this change, believing the enclave's ``exp``."""

    def check(self, permit: Permit, now: float) -> None:
        if permit.exp <= now:
            raise CmcpError(Code.PERMIT_EXPIRED, "expired")


def test_a_fresh_permit_on_both_clocks_is_accepted() -> None:
    assert checker().check(mint(iat=GUARD_NOW), TOOL, ARGS, now=GUARD_NOW + 1).tool == TOOL


def test_enclave_clock_a_year_ahead_is_refused_and_stays_refused_after_a_guard_restart() -> None:
    token = mint(iat=GUARD_NOW + YEAR)
    assert refusal(checker(), token, GUARD_NOW) is Code.PERMIT_NOT_YET_VALID
    # a minute later, at a freshly started guard (no spent nonces at all): still refused
    assert refusal(checker(), token, GUARD_NOW + 60) is Code.PERMIT_NOT_YET_VALID


def test_a_guard_that_trusts_exp_accepts_the_year_ahead_permit() -> None:
    token = mint(iat=GUARD_NOW + YEAR)
    weakened = checker(TrustsExpOnly())
    assert weakened.check(token, TOOL, ARGS, now=GUARD_NOW + 60).tool == TOOL  # the hole the check closes


def test_a_lifetime_longer_than_the_guards_ttl_is_refused() -> None:
    token = mint(iat=GUARD_NOW, ttl=DEFAULT_MAX_TTL_SECONDS + 1)
    assert refusal(checker(), token, GUARD_NOW) is Code.PERMIT_LIFETIME_TOO_LONG


def test_a_guard_that_trusts_exp_accepts_the_stretched_lifetime() -> None:
    token = mint(iat=GUARD_NOW, ttl=YEAR)
    weakened = checker(TrustsExpOnly())
    assert weakened.check(token, TOOL, ARGS, now=GUARD_NOW + 3600).tool == TOOL
    assert (
        refusal(checker(), mint(iat=GUARD_NOW, ttl=YEAR), GUARD_NOW + 3600) is Code.PERMIT_LIFETIME_TOO_LONG
    )


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (DEFAULT_CLOCK_SKEW_SECONDS, None),  # enclave ahead by exactly the skew: accepted
        (DEFAULT_CLOCK_SKEW_SECONDS + 1, Code.PERMIT_NOT_YET_VALID),
        (-(DEFAULT_MAX_TTL_SECONDS - 1), None),  # behind, but exp still after the guard's now
        (-DEFAULT_MAX_TTL_SECONDS, Code.PERMIT_EXPIRED),  # exp == guard's now
        (-YEAR, Code.PERMIT_EXPIRED),
    ],
)
def test_skew_bounds_on_the_guards_clock(offset: int, expected: Code | None) -> None:
    token = mint(iat=GUARD_NOW + offset)
    if expected is None:
        assert checker().check(token, TOOL, ARGS, now=GUARD_NOW).iat == int(GUARD_NOW + offset)
    else:
        assert refusal(checker(), token, GUARD_NOW) is expected


def test_configured_ttl_and_skew_are_the_guards_own() -> None:
    strict = LifetimePolicy(max_ttl=10, skew=0)
    assert refusal(checker(strict), mint(iat=GUARD_NOW, ttl=11), GUARD_NOW) is Code.PERMIT_LIFETIME_TOO_LONG
    assert refusal(checker(strict), mint(iat=GUARD_NOW + 1, ttl=10), GUARD_NOW) is Code.PERMIT_NOT_YET_VALID
    assert checker(strict).check(mint(iat=GUARD_NOW, ttl=10), TOOL, ARGS, now=GUARD_NOW).exp == GUARD_NOW + 10


def test_the_guards_real_clock_is_used_when_no_time_is_given() -> None:
    with pytest.raises(CmcpError) as refused:
        checker().check(mint(iat=time.time() + YEAR), TOOL, ARGS)
    assert refused.value.code is Code.PERMIT_NOT_YET_VALID
    assert checker().check(mint(iat=time.time()), TOOL, ARGS).tool == TOOL
