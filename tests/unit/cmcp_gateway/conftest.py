"""Fixtures the gateway's unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cmcp_gateway.enclave_pool import EnclavePool


@pytest.fixture
async def pools() -> AsyncIterator[list[EnclavePool]]:
    """The pools a test makes: append each, and every one is closed afterwards (channels, tasks)."""
    made: list[EnclavePool] = []
    yield made
    for pool in made:
        await pool.close()
