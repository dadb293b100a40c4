"""Which enclaves a gateway route trusts: a signed release's guest, pinned bundle, mode and audience,
and, when it follows an ``McpRoute``, exactly the initdata of the route's target or previous revision.

The attacker is the host or a route author: a guest booted with other firmware but the genuine
initdata, an advisory-mode enclave offered to an enforce route, an enclave measured for another
upstream, a pod of a revision the route has left. Each is refused with its code; the forged
guest's weakened-component row shows the release comparison is what refuses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from cmcp_core.attestation import Expected
from cmcp_core.digest import tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_core.route_status import PodStatus, RouteStatus, RouteTarget
from cmcp_core.verify import appraise
from cmcp_devkit.enclave import EnclaveProcess, render_initdata, start_enclave
from cmcp_devkit.release import dev_release
from cmcp_enclave.simulated import SimulatedGuest, launcher_env
from cmcp_gateway import enclave_pool
from cmcp_gateway.enclave_pool import EnclavePool
from tests.helpers.gateway_stack import AUDIENCE, MitmEnclave, attest_policy, audit_writer
from tests.paths import EXAMPLES

OTHER_DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    """The genuine bundle and initdata on a guest whose launcher measured another firmware (MRTD)."""
    bundle = EXAMPLES / "realistic"
    data = render_initdata(bundle, audience=AUDIENCE)
    with start_enclave(bundle, tmp_path_factory.mktemp("forged"), initdata_bytes=data,
                       env=launcher_env(data, SimulatedGuest(mrtd=b"\x42" * 48))) as proc:
        yield proc


@pytest.fixture(scope="module")
def advisory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    with start_enclave(EXAMPLES / "advisory", tmp_path_factory.mktemp("adv"), audience=AUDIENCE) as proc:
        yield proc



async def _pool(pools: list[EnclavePool], addresses: list[str], expected: Expected) -> EnclavePool:
    pool = EnclavePool("r", replace(attest_policy(), expected=expected), 5.0, audit_writer())
    pools.append(pool)
    await pool.set_endpoints(addresses)
    return pool


def _refusal(pool: EnclavePool, address: str) -> Code:
    endpoint = pool.endpoints[address]
    assert endpoint.attested is None and endpoint.error is not None
    return endpoint.error.code


async def test_the_honest_enclave_is_trusted(enclave: EnclaveProcess, pools: list[EnclavePool]) -> None:
    pool = await _pool(pools, [enclave.address],
                       Expected(bundle_hashes=frozenset({enclave.bundle_hash}), audience=AUDIENCE))
    assert [e.address for e in pool.attested()] == [enclave.address]


async def test_a_forged_guest_is_never_trusted(
    forged: EnclaveProcess, pools: list[EnclavePool], monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = Expected(bundle_hashes=frozenset({forged.bundle_hash}), audience=AUDIENCE)
    pool = await _pool(pools, [forged.address], pinned)
    assert _refusal(pool, forged.address) is Code.REFERENCE_VALUE_MISMATCH and not pool.attested()
    with pytest.raises(CmcpError) as closed:  # what the agent is told: why, not where
        await pool.pick("session")
    assert closed.value.code is Code.TEE_UNAVAILABLE and "REFERENCE_VALUE_MISMATCH" in closed.value.detail
    assert forged.address not in closed.value.detail
    # weakened: without the release comparison the same guest is trusted and would decide calls
    monkeypatch.setattr(appraise, "match_release", lambda *_args: dev_release())
    await pool.refresh()
    assert [e.address for e in pool.attested()] == [forged.address]


async def test_an_advisory_enclave_is_refused_by_an_enforce_route(
    advisory: EnclaveProcess, pools: list[EnclavePool]
) -> None:
    pinned = Expected(bundle_hashes=frozenset({advisory.bundle_hash}))
    pool = await _pool(pools, [advisory.address], pinned)
    assert _refusal(pool, advisory.address) is Code.INITDATA_UNEXPECTED
    opted_in = await _pool(pools, [advisory.address], replace(pinned, modes=frozenset({"advisory"})))
    assert opted_in.attested()


async def test_an_enclave_measured_for_another_upstream_is_refused(
    enclave: EnclaveProcess, pools: list[EnclavePool]
) -> None:
    pinned = Expected(bundle_hashes=frozenset({enclave.bundle_hash}), audience="urn:cmcp:another-upstream")
    pool = await _pool(pools, [enclave.address], pinned)
    assert _refusal(pool, enclave.address) is Code.REFERENCE_VALUE_MISMATCH


def enclave_initdata_digest(enclave: EnclaveProcess) -> str:
    return tagged_sha256(enclave.initdata)


def _status(address: str, *targets: str) -> RouteStatus:
    revisions = [RouteTarget("sha256:" + "ab" * 32, digest) for digest in targets]
    return RouteStatus(pods=(PodStatus(pod="p", uid="u", node="n", address=address, attested=True),),
                       target=revisions[0] if revisions else None,
                       previous=revisions[1] if len(revisions) > 1 else None)


async def test_a_followed_route_pins_its_target_and_previous_initdata(
    enclave: EnclaveProcess, pools: list[EnclavePool]
) -> None:
    """Every measured byte (launch policy included) must be the route's target or previous revision."""
    pool = await _pool(pools, [], Expected())
    digest = enclave_initdata_digest(enclave)
    await pool.follow(_status(enclave.address, OTHER_DIGEST))
    assert _refusal(pool, enclave.address) is Code.INITDATA_UNEXPECTED
    await pool.follow(_status(enclave.address, OTHER_DIGEST, digest))  # mid-rollout: previous is ours
    assert [e.address for e in pool.attested()] == [enclave.address]
    await pool.follow(_status(enclave.address, digest))
    assert pool.attested()
    await pool.follow(_status(enclave.address))  # the operator has rendered nothing: trust nothing
    assert _refusal(pool, enclave.address) is Code.ATTESTED_BUNDLE_UNEXPECTED


@pytest.fixture(scope="module")
def gpu_enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    """The honest enclave with a simulated GPU beside it (``--gpu simulated``, from the environment)."""
    with start_enclave(EXAMPLES / "realistic", tmp_path_factory.mktemp("gpu"), audience=AUDIENCE,
                       env={"CMCP_GPU": "simulated"}) as proc:
        yield proc


GPU = {"vendor": "nvidia", "count": 1, "revocation": "not-checked"}


async def test_a_route_requiring_a_gpu_trusts_only_enclaves_that_prove_one(
    enclave: EnclaveProcess, gpu_enclave: EnclaveProcess, pools: list[EnclavePool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator marked both pods attested; the gateway re-attests them itself under the route's
    GPU requirement (status.gpu), so a pod that sends no GPU evidence never decides a call."""
    pool = await _pool(pools, [], Expected())
    without = replace(_status(enclave.address, enclave_initdata_digest(enclave)), gpu=GPU)
    await pool.follow(without)
    assert _refusal(pool, enclave.address) is Code.GPU_EVIDENCE_MISSING and not pool.attested()
    with_gpu = replace(_status(gpu_enclave.address, enclave_initdata_digest(gpu_enclave)), gpu=GPU)
    await pool.follow(with_gpu)
    assert [e.address for e in pool.attested()] == [gpu_enclave.address]
    # weakened: a gateway that ignores the route's GPU requirement trusts the enclave without a GPU
    monkeypatch.setattr(enclave_pool.GpuRequirement, "from_spec", staticmethod(lambda _spec: None))
    await pool.follow(without)
    assert [e.address for e in pool.attested()] == [enclave.address]


async def test_an_unreadable_gpu_requirement_trusts_no_endpoint(
    gpu_enclave: EnclaveProcess, pools: list[EnclavePool]
) -> None:
    pool = await _pool(pools, [], Expected())
    status = replace(_status(gpu_enclave.address, enclave_initdata_digest(gpu_enclave)), gpu={"count": 0})
    await pool.follow(status)
    assert not pool.endpoints and not pool.attested()


def test_the_forged_guest_got_the_genuine_initdata(forged: EnclaveProcess, enclave: EnclaveProcess) -> None:
    """So the refusal above comes from the launch measurements alone."""
    assert forged.initdata == enclave.initdata



async def test_a_session_id_the_enclave_does_not_own_is_refused(
        pools: list[EnclavePool], enclave: EnclaveProcess) -> None:
    """A host in the middle answers OpenSession with an id naming another enclave (to steer the
    session, or to collide with one there): the gateway refuses to hand it out."""
    mitm = await MitmEnclave(enclave.address, tamper="foreign-id").start()
    try:
        pool = await _pool(pools, [mitm.address], Expected(bundle_hashes=frozenset({enclave.bundle_hash})))
        with pytest.raises(CmcpError) as refused:
            await pool.open_session(await pool.pick("agent"), "agent")
        assert refused.value.code is Code.DECISION_UNVERIFIED
    finally:
        await mitm.stop()


async def test_weakened_pool_without_the_owner_check_hands_out_a_foreign_id(
        pools: list[EnclavePool], enclave: EnclaveProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above catches the hole: without it the agent gets an id naming another enclave."""
    monkeypatch.setattr(enclave_pool.session_ids, "owned_by", lambda session_id, kid: True)
    mitm = await MitmEnclave(enclave.address, tamper="foreign-id").start()
    try:
        pool = await _pool(pools, [mitm.address], Expected(bundle_hashes=frozenset({enclave.bundle_hash})))
        handed_out = await pool.open_session(await pool.pick("agent"), "agent")
        assert not handed_out.startswith(enclave.kid[:16])
    finally:
        await mitm.stop()
