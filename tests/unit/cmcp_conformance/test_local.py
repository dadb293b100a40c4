"""The ``local`` conformance target: its initdata, the suite's description of it, and its powers.

The whole two-route deployment is started by ``tests/integration`` (``test_conformance_*``); here
the description and the initdata are checked without processes, and the one power that needs a
real process (a throw-away enclave launch, honest or with the measurement swapped) runs a real
``cmcp-enclave`` on the simulated TEE.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cmcp_conformance import local
from cmcp_conformance.bundle import write as write_bundle
from cmcp_conformance.local import LocalDeployment, LocalPowers, render_initdata
from cmcp_conformance.target import Profile
from cmcp_core import initdata
from cmcp_core.bundle import load_bundle
from cmcp_devkit.stack import EnclaveHandle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {mode: write_bundle(root / mode, mode=mode) for mode in ("enforce", "advisory")}


def test_initdata_measures_the_bundle_route_and_audience(bundles: dict[str, Path]) -> None:
    for mode, bundle_dir in bundles.items():
        bundle = load_bundle(bundle_dir)
        entry = initdata.parse(render_initdata(bundle_dir, route=f"conformance/{mode}")).cmcp
        assert (entry.bundle_hash, entry.catalog_hash) == (bundle.bundle_hash, bundle.catalog_hash)
        assert (entry.enforcement_mode, entry.route, entry.audience) == (mode, f"conformance/{mode}",
                                                                         local.AUDIENCE)
    other = initdata.parse(render_initdata(bundles["enforce"], route="r", audience="elsewhere")).cmcp
    assert other.audience == "elsewhere"


def test_initdata_names_the_conformance_image(bundles: dict[str, Path]) -> None:
    toml = render_initdata(bundles["enforce"], route="conformance/enforce")
    assert local.ENCLAVE_IMAGE.encode() in toml
    assert toml == render_initdata(bundles["enforce"], route="conformance/enforce"), "deterministic"
    assert toml != render_initdata(bundles["enforce"], route="conformance/advisory")


def test_deployment_defaults_are_the_suites() -> None:
    deployment = LocalDeployment(workdir=Path("unused"))
    assert (deployment.audience, deployment.agent, deployment.upstream_profile) == (
        local.AUDIENCE, local.AGENT, "conformance")
    assert deployment.permit_ttl == local.PERMIT_TTL <= 10, "short, so the suite can watch a permit expire"
    assert deployment.profile == Profile() and len(deployment.token) >= 16


def _handle(address: str, bundle_dir: Path, bundle_hash: str) -> EnclaveHandle:
    # target() reads the address, the bundle folder and the ready file's hash; no process needed
    return EnclaveHandle(proc=None, address=address, bundle_dir=bundle_dir,  # type: ignore[arg-type]
                         initdata_path=bundle_dir / "initdata.toml", ready={"bundle_hash": bundle_hash})


def test_target_describes_both_routes_and_grants_local_powers(
        tmp_path: Path, bundles: dict[str, Path]) -> None:
    deployment = LocalDeployment(workdir=tmp_path)
    deployment.enclaves["enforce"] = _handle("127.0.0.1:5001", bundles["enforce"], "sha256:" + "e" * 64)
    deployment.enclaves["advisory"] = _handle("127.0.0.1:5002", bundles["advisory"], "sha256:" + "a" * 64)
    deployment.gateway_url, deployment.upstream_url = "http://127.0.0.1:6000", "http://127.0.0.1:6001/mcp"
    deployment.raw_upstream_base = "http://127.0.0.1:6002"
    target = deployment.target()
    assert (target.name, target.mcp_url, target.advisory_mcp_url) == (
        "local", "http://127.0.0.1:6000/mcp/enforce", "http://127.0.0.1:6000/mcp/advisory")
    assert (target.enclave_address, target.advisory_enclave_address) == ("127.0.0.1:5001", "127.0.0.1:5002")
    assert target.upstream_url == "http://127.0.0.1:6001/mcp", "the guarded upstream, not the raw one"
    assert target.upstream_counter_url == "http://127.0.0.1:6002/calls"
    assert (target.token, target.upstream_audience) == (deployment.token, local.AUDIENCE)
    assert target.expected_bundle_hash == "sha256:" + "e" * 64 and target.bundle_dir == bundles["enforce"]
    assert target.allow_simulated is True
    assert isinstance(target.powers, LocalPowers) and target.powers.deployment is deployment


def test_target_without_an_advisory_route(tmp_path: Path, bundles: dict[str, Path]) -> None:
    deployment = LocalDeployment(workdir=tmp_path)
    deployment.enclaves["enforce"] = _handle("127.0.0.1:5001", bundles["enforce"], "sha256:" + "e" * 64)
    target = deployment.target()
    assert target.advisory_mcp_url is None and target.advisory_enclave_address is None
    assert target.replica_mcp_url is None and target.replica_token is None  # no second replica


def test_target_names_the_second_replica_and_its_own_agent(tmp_path: Path, bundles: dict[str, Path]) -> None:
    """REPLICA-001 taints the replica agent's principal, so it must not be the suite's main agent."""
    deployment = LocalDeployment(workdir=tmp_path)
    deployment.enclaves["enforce"] = _handle("127.0.0.1:5001", bundles["enforce"], "sha256:" + "e" * 64)
    deployment.gateway_urls[local.REPLICA] = "http://127.0.0.1:6003"
    target = deployment.target()
    assert target.replica_mcp_url == "http://127.0.0.1:6003/mcp/enforce"
    assert target.replica_token == local.REPLICA_TOKEN and target.replica_token != target.token
    assert deployment.tokens == {local.REPLICA_TOKEN: local.REPLICA_AGENT}
    assert deployment.agent != local.REPLICA_AGENT


def test_throw_away_launches_serve_only_under_the_measured_initdata(
        tmp_path: Path, bundles: dict[str, Path]) -> None:
    """Real ``cmcp-enclave`` processes: an honest launch serves; swapped initdata never does."""
    deployment = LocalDeployment(workdir=tmp_path)
    powers = LocalPowers(deployment)
    honest = render_initdata(bundles["enforce"], route="conformance/enforce")
    try:
        served = powers.launch_enclave(bundles["enforce"], honest, timeout=20.0)
        assert served.served is True, served.output
        swapped = render_initdata(bundles["advisory"], route="conformance/advisory")
        refused = powers.launch_enclave(bundles["enforce"], honest, measured=swapped, timeout=20.0)
        assert refused.served is False and refused.returncode not in (None, 0), refused.output
    finally:
        deployment.close()
    assert deployment.procs == [], "each throw-away enclave is stopped and forgotten"
