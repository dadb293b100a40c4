"""Attesting a real enclave over gRPC: release values, then what *we* expect its initdata to name.

Each refusal changes one thing an attacker controls (the guest they boot, the enclave they
point us at, the mode it runs in) against an otherwise honest set-up; the honest case passes
first, so every refusal is caused by that one change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from cmcp_core.attestation import AttestedEnclave, AttestPolicy, Expected, attest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2_grpc
from cmcp_core.verify import appraise
from cmcp_devkit.enclave import DEFAULT_ROUTE, EnclaveProcess, render_initdata, start_enclave
from cmcp_devkit.release import dev_appraisal, dev_release
from cmcp_enclave.simulated import SimulatedGuest, launcher_env
from tests.helpers.gateway_stack import AUDIENCE
from tests.paths import EXAMPLES


async def _attest(address: str, expected: Expected) -> AttestedEnclave:
    async with grpc.aio.insecure_channel(address) as channel:
        return await attest(enclave_pb2_grpc.EnclaveStub(channel), address,
                            AttestPolicy(appraisal=dev_appraisal(), expected=expected))


async def _refused(address: str, expected: Expected) -> CmcpError:
    with pytest.raises(CmcpError) as err:
        await _attest(address, expected)
    return err.value


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    """The genuine bundle and initdata, started by a launcher that boots another guest (RTMR2)."""
    bundle = EXAMPLES / "realistic"
    data = render_initdata(bundle, audience=AUDIENCE)
    guest = SimulatedGuest(rtmrs=(*SimulatedGuest().rtmrs[:2], b"\x66" * 48))
    with start_enclave(bundle, tmp_path_factory.mktemp("forged"), initdata_bytes=data,
                       env=launcher_env(data, guest)) as proc:
        yield proc


async def test_an_honest_enclave_is_attested(enclave: EnclaveProcess) -> None:
    pinned = Expected(bundle_hashes=frozenset({enclave.bundle_hash}), audience=AUDIENCE, route=DEFAULT_ROUTE)
    attested = await _attest(enclave.address, pinned)
    assert attested.kid == enclave.kid and attested.assurance == "software-only"
    by_digest = Expected(initdata_digests=frozenset({attested.appraisal.initdata_digest}))
    assert (await _attest(enclave.address, by_digest)).kid == enclave.kid
    with_catalog = replace(pinned, catalog_hashes=frozenset({attested.catalog_hash}))
    assert (await _attest(enclave.address, with_catalog)).kid == enclave.kid


async def test_pinning_nothing_trusts_nothing(enclave: EnclaveProcess) -> None:
    err = await _refused(enclave.address, Expected())
    assert err.code is Code.ATTESTED_BUNDLE_UNEXPECTED and "nothing is pinned" in err.detail


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"bundle_hashes": frozenset({"sha256:" + "0" * 64})}, Code.ATTESTED_BUNDLE_UNEXPECTED),
        ({"catalog_hashes": frozenset({"sha256:" + "0" * 64})}, Code.INITDATA_UNEXPECTED),
        ({"initdata_digests": frozenset({"sha256:" + "0" * 64})}, Code.INITDATA_UNEXPECTED),
        ({"route": "other/route"}, Code.INITDATA_UNEXPECTED),
        ({"audience": "urn:cmcp:another-upstream"}, Code.REFERENCE_VALUE_MISMATCH),
        ({"modes": frozenset({"advisory"})}, Code.INITDATA_UNEXPECTED),
    ],
)
async def test_an_enclave_measured_for_something_else_is_refused(
    enclave: EnclaveProcess, change: dict[str, object], code: Code
) -> None:
    honest = Expected(bundle_hashes=frozenset({enclave.bundle_hash}), audience=AUDIENCE, route=DEFAULT_ROUTE)
    err = await _refused(enclave.address, dataclasses.replace(honest, **change))  # type: ignore[arg-type]
    assert err.code is code, err.detail


async def test_a_forged_guest_is_refused(forged: EnclaveProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = Expected(bundle_hashes=frozenset({forged.bundle_hash}), audience=AUDIENCE)
    err = await _refused(forged.address, pinned)
    assert err.code is Code.REFERENCE_VALUE_MISMATCH and "RTMR2" in err.detail
    # Weakened: without the release comparison the forged guest is indistinguishable from the
    # genuine one (same bundle, initdata, key binding) - the check above is what refuses it.
    monkeypatch.setattr(appraise, "match_release", lambda *_args: dev_release())
    assert (await _attest(forged.address, pinned)).bundle_hash == forged.bundle_hash


def test_the_forged_guest_got_the_genuine_initdata(forged: EnclaveProcess, enclave: EnclaveProcess) -> None:
    """So only the launch measurements differ: the refusal above is not an initdata check."""
    assert forged.initdata == enclave.initdata
