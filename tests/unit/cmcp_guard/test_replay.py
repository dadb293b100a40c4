"""The in-memory spent-permit store: single use within a process, bounded, failing closed when full."""

from __future__ import annotations

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_guard.replay import ReplayCache

NOW = 1_800_000_000


def _replayed(cache: ReplayCache, nonce: str, exp: int = NOW + 60, now: float = NOW) -> bool:
    try:
        cache.use(nonce, exp, now=now)
    except CmcpError as exc:
        assert exc.code is Code.PERMIT_REPLAYED
        return True
    return False


def test_a_nonce_is_spent_once() -> None:
    cache = ReplayCache()
    assert not _replayed(cache, "n1")
    assert _replayed(cache, "n1")
    assert not _replayed(cache, "n2") and len(cache) == 2


def test_a_nonce_is_remembered_until_its_permit_and_the_skew_have_passed() -> None:
    cache = ReplayCache(retention_seconds=30)
    cache.use("n", NOW + 60, now=NOW)
    assert _replayed(cache, "n", now=NOW + 60 + 29)  # still inside exp + skew: a replay
    assert len(cache) == 1
    assert not _replayed(cache, "other", now=NOW + 60 + 31)  # evicts "n" on the way
    assert len(cache) == 1


def test_a_full_cache_refuses_rather_than_forget() -> None:
    """It cannot prove a new nonce fresh without remembering it: fail closed."""
    cache = ReplayCache(max_entries=2)
    cache.use("a", NOW + 60, now=NOW)
    cache.use("b", NOW + 60, now=NOW)
    with pytest.raises(CmcpError) as full:
        cache.use("c", NOW + 60, now=NOW)
    assert full.value.code is Code.PERMIT_REPLAYED and "full" in full.value.detail
