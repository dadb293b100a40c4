"""The simulated TEE's launcher contract: every measured register comes from the launcher."""

from __future__ import annotations

import pytest

from cmcp_core import initdata
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.simulated import SIMULATED_MRTD, SIMULATED_RTMRS
from cmcp_core.evidence.tdx import parse_quote
from cmcp_devkit.initdata import render_initdata
from cmcp_enclave.simulated import (
    ENV_MRCONFIGID,
    ENV_MRTD,
    ENV_RTMRS,
    SimulatedGuest,
    guest_from_env,
    launcher_env,
)
from cmcp_enclave.tee import SimulatedProvider
from tests.paths import EXAMPLES

DATA = render_initdata(EXAMPLES / "minimal")
FORGED = SimulatedGuest(mrtd=b"\x11" * 48, rtmrs=(b"\x22" * 48, b"\x33" * 48, b"\x44" * 48))


def test_the_default_guest_is_the_genuine_simulated_guest() -> None:
    env = launcher_env(DATA)
    assert env[ENV_MRCONFIGID] == initdata.tdx_mrconfigid(DATA).hex()
    assert guest_from_env(env) == SimulatedGuest(mrtd=SIMULATED_MRTD, rtmrs=SIMULATED_RTMRS)


def test_the_quote_carries_the_launchers_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in launcher_env(DATA, FORGED).items():
        monkeypatch.setenv(name, value)
    body = parse_quote(SimulatedProvider().report(bytes(64)).evidence).body
    assert body.mrtd == FORGED.mrtd and body.rtmrs[:3] == FORGED.rtmrs and body.rtmrs[3] == bytes(48)
    assert body.mrconfigid == initdata.tdx_mrconfigid(DATA)


@pytest.mark.parametrize("name", [ENV_MRCONFIGID, ENV_MRTD, *ENV_RTMRS])
def test_a_missing_or_malformed_register_refuses_to_start(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    env = launcher_env(DATA)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(name)
    with pytest.raises(CmcpError) as err:
        SimulatedProvider()
    assert err.value.code is Code.TEE_PROVIDER_FAILED and name in err.value.detail
    monkeypatch.setenv(name, "ab" * 47)
    with pytest.raises(CmcpError, match="48 bytes"):
        SimulatedProvider()
