"""Launcher side of the simulated TEE: what a host-process launcher (dev stack, demo, test) hands the enclave.

On hardware the platform measures the guest's firmware and boot chain (MRTD, RTMR0-2) and the
initdata (MRCONFIGID) before the guest runs; in simulation the *launcher* plays that role and
passes the registers in ``CMCP_SIM_*`` variables. The enclave checks the initdata file it reads
against ``CMCP_SIM_MRCONFIGID``, and relying parties check the launch registers against a signed
release manifest, so a launcher that "boots another guest" (other MRTD/RTMRs) is refused exactly
as a host booting its own firmware or kernel on hardware is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cmcp_core import initdata
from cmcp_core.evidence.simulated import SIMULATED_MRTD, SIMULATED_RTMRS

ENV_MRCONFIGID = "CMCP_SIM_MRCONFIGID"
ENV_MRTD = "CMCP_SIM_MRTD"
ENV_RTMRS = ("CMCP_SIM_RTMR0", "CMCP_SIM_RTMR1", "CMCP_SIM_RTMR2")
REGISTER_LEN = 48


@dataclass(frozen=True)
class SimulatedGuest:
    """The launch registers of the guest a launcher boots; the default is the genuine simulated guest."""

    mrtd: bytes = SIMULATED_MRTD
    rtmrs: tuple[bytes, bytes, bytes] = SIMULATED_RTMRS


def launcher_env(initdata_bytes: bytes, guest: SimulatedGuest | None = None) -> dict[str, str]:
    """Environment a launcher sets for a simulated enclave measuring ``initdata_bytes``."""
    guest = guest or SimulatedGuest()
    env = {ENV_MRCONFIGID: initdata.tdx_mrconfigid(initdata_bytes).hex(), ENV_MRTD: guest.mrtd.hex()}
    env.update({name: value.hex() for name, value in zip(ENV_RTMRS, guest.rtmrs, strict=True)})
    return env


def register(env: Mapping[str, str], name: str) -> bytes:
    """One 48-byte register from the launcher's environment; ``ValueError`` names what is wrong."""
    raw_hex = env.get(name)
    if not raw_hex:
        raise ValueError(f"simulated TEE needs {name} from its launcher")
    try:
        value = bytes.fromhex(raw_hex)
    except ValueError as exc:
        raise ValueError(f"{name} is not hex") from exc
    if len(value) != REGISTER_LEN:
        raise ValueError(f"{name} must be {REGISTER_LEN} bytes")
    return value


def guest_from_env(env: Mapping[str, str]) -> SimulatedGuest:
    rtmr0, rtmr1, rtmr2 = (register(env, name) for name in ENV_RTMRS)
    return SimulatedGuest(mrtd=register(env, ENV_MRTD), rtmrs=(rtmr0, rtmr1, rtmr2))
