"""Launcher side of the simulated TEE: what a node agent / demo / test hands the enclave.

On hardware the platform measures the initdata before the guest runs; in simulation the
*launcher* plays that role and passes the measured register in ``CMCP_SIM_MRCONFIGID``. The
enclave then checks the initdata file it reads against that value, so a launcher that measured
one initdata and a file swapped underneath is refused exactly as on hardware.
"""

from __future__ import annotations

from cmcp_core import initdata

ENV_MRCONFIGID = "CMCP_SIM_MRCONFIGID"


def launcher_env(initdata_bytes: bytes) -> dict[str, str]:
    """Environment a launcher sets for a simulated enclave measuring ``initdata_bytes``."""
    return {ENV_MRCONFIGID: initdata.tdx_mrconfigid(initdata_bytes).hex()}
