"""The guard follows a route's enclave addresses (``--route``) and still trusts only its own appraisal.

The route source is injected (an async function over a list the test edits, returning the typed
status the thin ``McpRoute`` reader returns); the enclaves are real ``cmcp-enclave`` processes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from cmcp_core.attestation import AttestPolicy, Expected
from cmcp_core.digest import tagged_sha256
from cmcp_core.permit import PERMIT_HEADER
from cmcp_core.route_status import PodStatus, RouteStatus, RouteTarget
from cmcp_devkit.enclave import EnclaveProcess, render_initdata, start_enclave
from cmcp_devkit.release import dev_appraisal, write_dev_release
from cmcp_devkit.upstream import free_port, run_upstream
from cmcp_guard import trust as trust_module
from cmcp_guard.main import build_guard, main
from cmcp_guard.trust import TrustStore
from tests.helpers.gateway_stack import AUDIENCE, MODERN_META, PERMIT_ARGS, PERMIT_TOOL, get_permit
from tests.paths import ROOT

BUNDLE = ROOT / "examples/realistic"
GENUINE = tagged_sha256(render_initdata(BUNDLE, audience=AUDIENCE))  # what the route's target pins
POLICY = AttestPolicy(appraisal=dev_appraisal(), expected=Expected(audience=AUDIENCE))


def pinned_to(enclave: EnclaveProcess) -> AttestPolicy:
    """What a guard configured with ``--expected-bundle-hash`` for this enclave appraises with."""
    return AttestPolicy(appraisal=dev_appraisal(),
                        expected=Expected(bundle_hashes=frozenset({enclave.bundle_hash}), audience=AUDIENCE))


def policy_for(audience: str) -> AttestPolicy:
    return AttestPolicy(appraisal=dev_appraisal(), expected=Expected(audience=audience))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRoute:
    """What the McpRoute status says right now: attested pod addresses and the target's initdata
    digest (default: the genuine initdata of these tests' enclaves); ``fail`` makes the read raise."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.targets: list[str] = [GENUINE]
        self.gpu: dict[str, object] | None = None
        self.fail = False
        self.reads = 0

    async def __call__(self) -> RouteStatus:
        self.reads += 1
        if self.fail:
            raise ConnectionError("api server unreachable")
        pods = tuple(PodStatus(pod=f"p{i}", uid="u", node="n", address=a, attested=True)
                     for i, a in enumerate(self.addresses))
        revisions = [RouteTarget("sha256:" + "ab" * 32, digest) for digest in self.targets]
        return RouteStatus(pods=pods, target=revisions[0] if revisions else None,
                           previous=revisions[1] if len(revisions) > 1 else None, gpu=self.gpu)


def store(route: FakeRoute, clock: FakeClock, grace: float = 65.0) -> TrustStore:
    return TrustStore([], POLICY, source=route, grace_seconds=grace, clock=clock, min_refresh_seconds=0.0)


async def test_listed_address_is_attested_then_trusted(enclave: EnclaveProcess) -> None:
    route, clock = FakeRoute(), FakeClock()
    trust = store(route, clock)
    await trust.refresh()
    assert dict(trust.keys()) == {}
    route.addresses = [enclave.address]
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}
    assert trust.enclaves[enclave.address].kid == enclave.kid


async def test_failed_evidence_is_not_trusted(enclave: EnclaveProcess, tmp_path: Path) -> None:
    """Listed is not trusted: another audience's enclave, a dead port and garbage all stay out,
    without costing the good enclave listed next to them its trust."""
    route, clock = FakeRoute(), FakeClock()
    trust = store(route, clock)
    with start_enclave(BUNDLE, tmp_path / "other", audience="urn:cmcp:other-upstream") as other:
        route.addresses = [other.address, f"127.0.0.1:{free_port()}", "not an address", enclave.address]
        await trust.refresh()
        assert set(trust.keys()) == {enclave.kid}
        assert other.kid not in set(trust.keys())
        assert trust.failures[other.address].code.value == "REFERENCE_VALUE_MISMATCH"
        assert trust.failures["not an address:50051"].code.value == "TEE_UNAVAILABLE"  # status default port
    # simulated evidence without --allow-simulated: nothing the route lists is trusted
    strict_appraisal = replace(dev_appraisal(), allow_simulated=False)
    strict = TrustStore([], AttestPolicy(appraisal=strict_appraisal, expected=Expected(audience=AUDIENCE)),
                        source=route, clock=clock)
    route.addresses = [enclave.address]
    await strict.refresh()
    assert dict(strict.keys()) == {}
    assert enclave.address in strict.failures


async def test_unlisted_address_is_dropped_after_grace(enclave: EnclaveProcess) -> None:
    route, clock = FakeRoute(), FakeClock()
    trust = store(route, clock, grace=65.0)
    route.addresses = [enclave.address]
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}
    route.addresses = []
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}, "in-flight permits of a departed pod still verify"
    assert enclave.address in trust.departed
    clock.now += 64.0
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}, "a refresh does not restart the grace period"
    clock.now += 1.0
    assert dict(trust.keys()) == {}, "the key expires at the deadline, not at the next refresh"
    await trust.refresh()
    assert dict(trust.keys()) == {} and trust.departed == {}


async def test_relisted_address_is_re_attested_not_grandfathered(enclave: EnclaveProcess) -> None:
    """A departed pod that reappears gets fresh evidence; failing it ends its grace at once."""
    route, clock = FakeRoute(), FakeClock()
    trust = store(route, clock)
    route.addresses = [enclave.address]
    await trust.refresh()
    route.addresses = []
    await trust.refresh()
    trust.policy = policy_for("urn:cmcp:someone-else")
    route.addresses = [enclave.address]
    await trust.refresh()
    assert dict(trust.keys()) == {} and trust.departed == {}


async def test_source_failure_keeps_listing_and_adds_nothing(enclave: EnclaveProcess) -> None:
    route, clock = FakeRoute(), FakeClock()
    trust = store(route, clock)
    route.addresses = [enclave.address]
    await trust.refresh()
    route.fail = True
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}, "an API outage must not become an enclave outage"
    assert trust.source_addresses == [enclave.address]
    # the kept listing is still re-attested every round: fixed trust, not a cached key
    trust.policy = policy_for("urn:cmcp:someone-else")
    await trust.refresh()
    assert dict(trust.keys()) == {}


async def test_static_endpoint_removed_is_dropped_at_once(enclave: EnclaveProcess) -> None:
    clock = FakeClock()
    trust = TrustStore([enclave.address], pinned_to(enclave), source=FakeRoute(), clock=clock)
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}
    trust.endpoints = []
    await trust.refresh()
    assert dict(trust.keys()) == {} and trust.departed == {}


async def test_guard_admits_a_replacement_pod_it_learns_from_the_route(
    enclave: EnclaveProcess, tmp_path: Path
) -> None:
    """The outage this fixes: a pod the guard never heard of at start-up signs a permit."""
    route = FakeRoute()
    route.addresses = [enclave.address]
    guard = build_guard(AUDIENCE, [], appraisal=dev_appraisal(), expected=Expected(), source=route,
                        refresh_seconds=3600.0)
    async with run_upstream(guard) as up:
        assert guard.trust is not None
        guard.trust.min_refresh_seconds = 0.0
        with start_enclave(BUNDLE, tmp_path / "new", audience=AUDIENCE) as new:
            route.addresses = [new.address]  # the operator replaced the pod
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": PERMIT_TOOL, "arguments": PERMIT_ARGS, "_meta": MODERN_META},
                }
            ).encode()
            headers = {
                "accept": "application/json, text/event-stream",
                "content-type": "application/json",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": PERMIT_TOOL,
                PERMIT_HEADER: await get_permit(new.address),
            }
            async with httpx.AsyncClient() as client:
                resp = await client.post(up.url, content=body, headers=headers)
            assert resp.status_code == 200, resp.text
            assert new.kid in set(guard.trust.keys())
            assert enclave.address in guard.trust.departed  # the old pod: grace, then gone
        assert up.counter.total() == 1


def test_cli_needs_an_address_source() -> None:
    with pytest.raises(SystemExit):
        main(["--upstream", "http://127.0.0.1:1", "--audience", AUDIENCE])
    with pytest.raises(SystemExit):
        main(["--upstream", "http://127.0.0.1:1", "--audience", AUDIENCE, "--route", "no-slash"])


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["--upstream", "http://127.0.0.1:1", "--audience", AUDIENCE, "--enclave", "127.0.0.1:1", *argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_an_unpinned_guard_refuses_to_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No "accept any attested enclave": a bundle to expect or a route to follow, and a signed
    release to judge the guest by, or the guard does not start."""
    release = write_dev_release(tmp_path / "ours")
    assert "pinning is mandatory" in _cli_error(release.argv(), capsys)
    pinned = ["--expected-bundle-hash", "sha256:" + "ab" * 32]
    assert "REFERENCE_VALUES_MISSING" in _cli_error(pinned, capsys)
    theirs = write_dev_release(tmp_path / "theirs")
    forged = ["--release-manifest", str(theirs.manifest), "--release-key", str(release.key)]
    assert "RELEASE_MANIFEST_INVALID" in _cli_error([*pinned, *forged], capsys)
    with pytest.raises(ValueError, match="pinning is mandatory"):
        build_guard(AUDIENCE, ["127.0.0.1:1"], appraisal=dev_appraisal(), expected=Expected())


async def test_a_followed_route_pins_its_initdata(enclave: EnclaveProcess) -> None:
    """A pod whose measured initdata is not the route's target or previous is not trusted, and a
    route with nothing rendered yet trusts no pod at all."""
    route, clock = FakeRoute(), FakeClock()
    trust = store(route, clock)
    route.addresses, route.targets = [enclave.address], ["sha256:" + "0" * 64]
    await trust.refresh()
    assert dict(trust.keys()) == {}
    assert trust.failures[enclave.address].code.value == "INITDATA_UNEXPECTED"
    route.targets = ["sha256:" + "0" * 64, GENUINE]  # mid-rollout, ours is the previous revision
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}
    route.targets = []
    await trust.refresh()
    assert enclave.address in trust.failures and enclave.kid not in {
        e.kid for e in trust.enclaves.values()}


async def test_fixed_endpoints_keep_their_own_pins_beside_a_followed_route(enclave: EnclaveProcess) -> None:
    """A guard in front of two routes' enclaves (one followed, one fixed): the route's initdata
    pins only the pods it lists; the fixed endpoint is held to the bundle configured for it."""
    route, clock = FakeRoute(), FakeClock()
    route.targets = ["sha256:" + "0" * 64]  # the followed route serves some other revision
    following = pinned_to(enclave)  # --route cmcp/followed: its name is the route pods' business
    following = replace(following, expected=replace(following.expected, route="cmcp/followed"))
    trust = TrustStore([enclave.address], following, source=route, clock=clock, min_refresh_seconds=0.0)
    await trust.refresh()
    assert set(trust.keys()) == {enclave.kid}  # fixed: its bundle is the configured one
    route.addresses = [enclave.address]  # now the route lists it too: the route's pins apply
    await trust.refresh()
    assert dict(trust.keys()) == {} and trust.failures[enclave.address].code.value == "INITDATA_UNEXPECTED"


async def test_a_route_requiring_a_gpu_trusts_only_pods_that_prove_one(
        enclave: EnclaveProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The route's status.gpu holds for the guard too: a listed pod without GPU evidence never
    gets its permits honoured; one with a (simulated) GPU does; an unreadable requirement trusts none."""
    route, clock = FakeRoute(), FakeClock()
    trust = store(route, clock)
    route.gpu = {"vendor": "nvidia", "count": 1, "revocation": "not-checked"}
    with start_enclave(BUNDLE, tmp_path / "gpu", audience=AUDIENCE, env={"CMCP_GPU": "simulated"}) as gpu:
        route.addresses = [enclave.address, gpu.address]
        await trust.refresh()
        assert set(trust.keys()) == {gpu.kid}
        assert trust.failures[enclave.address].code.value == "GPU_EVIDENCE_MISSING"
        route.gpu = {"count": 0}
        await trust.refresh()
        assert gpu.address not in trust.enclaves and enclave.address not in trust.enclaves
        # weakened: a guard that ignores the route's GPU requirement honours the pod without a GPU
        route.gpu = {"count": 1}
        monkeypatch.setattr(trust_module.GpuRequirement, "from_spec", staticmethod(lambda _spec: None))
        await trust.refresh()
        assert enclave.address in trust.enclaves
