"""Request limits: nesting depth, string length and per-agent concurrency, each with its own code."""

from __future__ import annotations

import json

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_gateway.config import GatewayLimits
from cmcp_gateway.limits import ConcurrencyLimiter, check_shape

LIMITS = GatewayLimits(max_depth=4, max_string=16)


def _check(doc: object) -> None:
    check_shape(json.dumps(doc).encode(), doc, LIMITS)


def test_within_limits_passes() -> None:
    _check({"a": [1, {"b": "short"}]})
    _check("x" * 16)


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ({"a": {"b": {"c": {"d": {}}}}}, Code.JSON_TOO_DEEP),
        ([[[[[]]]]], Code.JSON_TOO_DEEP),
        ({"a": "x" * 17}, Code.STRING_TOO_LONG),
        ({"k" * 17: 1}, Code.STRING_TOO_LONG),
        ([["y" * 40]], Code.STRING_TOO_LONG),
    ],
)
def test_each_breach_has_its_code(doc: object, code: Code) -> None:
    with pytest.raises(CmcpError) as err:
        _check(doc)
    assert err.value.code is code


def test_concurrency_is_limited_per_agent_and_released() -> None:
    limiter = ConcurrencyLimiter(2)
    with limiter.slot("alice"), limiter.slot("alice"):
        with pytest.raises(CmcpError) as err, limiter.slot("alice"):
            pass
        assert err.value.code is Code.TOO_MANY_CONCURRENT
        with limiter.slot("bob"):  # another agent is not affected
            pass
    with limiter.slot("alice"), limiter.slot("alice"):  # both slots came back
        pass


def test_a_failing_request_still_releases_its_slot() -> None:
    limiter = ConcurrencyLimiter(1)
    with pytest.raises(RuntimeError), limiter.slot("alice"):
        raise RuntimeError("handler failed")
    with limiter.slot("alice"):
        pass
