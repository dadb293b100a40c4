"""Fetching evidence (:mod:`cmcp_operator.attestor`): one Attest call with a fresh nonce to a
real ``cmcp-enclave`` (the dev kit's, through the shared ``enclave`` fixture), and a coded
error when nothing answers."""

from __future__ import annotations

import socket

import pytest

from cmcp_core.verify import appraise_response
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.release import dev_appraisal
from cmcp_operator.attestor import NONCE_BYTES, EnclaveUnreachable, fetch_evidence


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_evidence_is_fresh_and_bound_to_our_nonce(enclave: EnclaveProcess) -> None:
    nonce, ev = await fetch_evidence("127.0.0.1", deadline=10.0, port=enclave.port)
    assert len(nonce) == NONCE_BYTES == 32
    assert ev.platform == "simulated" and ev.bundle_hash == enclave.bundle_hash
    verdict = appraise_response(ev, nonce, dev_appraisal(), expected_bundle_hash=enclave.bundle_hash,
                                expected_initdata=enclave.initdata)
    assert verdict.ok, verdict
    again, ev2 = await fetch_evidence("127.0.0.1", deadline=10.0, port=enclave.port)
    assert again != nonce  # a new nonce per call: old evidence cannot be replayed
    stale = appraise_response(ev, again, dev_appraisal(), expected_bundle_hash=enclave.bundle_hash,
                              expected_initdata=enclave.initdata)
    assert not stale.ok and stale.code == "BINDING_REPORT_DATA_MISMATCH"
    assert appraise_response(ev2, again, dev_appraisal(), expected_bundle_hash=enclave.bundle_hash,
                             expected_initdata=enclave.initdata).ok


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_nothing_listening_is_enclave_unreachable(address: str) -> None:
    """IPv4 and IPv6 pod IPs alike: a refused connection is a coded, catchable error."""
    with pytest.raises(EnclaveUnreachable) as err:
        await fetch_evidence(address, deadline=5.0, port=_closed_port())
    assert str(err.value).startswith(("UNAVAILABLE:", "DEADLINE_EXCEEDED:"))
