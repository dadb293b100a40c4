"""The official MCP conformance suite through the gateway, compared with the same upstream directly.

Direct: the suite against the everything upstream (:mod:`cmcp_devkit.everything`). Through the
gateway: the suite -> ``cmcp-gateway`` (an open route) -> a real enclave process on a bundle that
catalogues everything the upstream offers -> the guard -> the same upstream. No scenario may
differ; a second run with a bundle that forbids reading resources shows the resource scenarios
refused and the upstream reading nothing (the only differences a policy may make).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_devkit.everything import RESOURCE_TEMPLATES, RESOURCES
from cmcp_devkit.mcp_conformance import SPEC_VERSIONS, Install, differences, ensure_installed
from tests.helpers.everything_stack import (
    ALLOW,
    FORBID_PHI,
    FORBID_RESOURCES,
    everything_bundle,
    gateway_in_front,
)
from tests.helpers.gateway_stack import AUDIENCE, make_guard
from tests.integration.test_mcp_conformance_suite import Target, run_against

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

@pytest.fixture(scope="module")
def install() -> Install:
    return ensure_installed()


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    bundle = everything_bundle(tmp_path_factory.mktemp("b") / "everything", ALLOW, FORBID_PHI)
    with start_enclave(bundle, tmp_path_factory.mktemp("enc"), audience=AUDIENCE) as proc:
        yield proc


@pytest.fixture(scope="module")
def no_resources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    bundle = everything_bundle(tmp_path_factory.mktemp("b") / "no-resources", ALLOW, FORBID_RESOURCES)
    with start_enclave(bundle, tmp_path_factory.mktemp("enc"), audience=AUDIENCE) as proc:
        yield proc


def through_gateway(enclave: EnclaveProcess) -> Target:
    """The gateway in front of the upstream the suite runs against."""
    return lambda up: gateway_in_front(enclave, up)


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_the_suite_passes_through_the_gateway_as_it_does_directly(
    install: Install, enclave: EnclaveProcess, spec_version: str
) -> None:
    reference, _ = await run_against(install, spec_version)
    other, up = await run_against(install, spec_version, through_gateway(enclave),
                                  guard=make_guard([enclave], AUDIENCE))
    print(other.table())
    assert differences(reference, other, {}) == {}, other.table()
    assert up.counter.total() > 0  # the suite reached the upstream through the gateway


RESOURCE_SCENARIOS = frozenset({"resources-read-text", "resources-read-binary", "resources-templates-read"})


async def test_a_bundle_that_forbids_resources_gets_them_refused_and_never_read(
    install: Install, no_resources: EnclaveProcess
) -> None:
    spec_version = "2025-11-25"
    other, up = await run_against(install, spec_version, through_gateway(no_resources),
                                  guard=make_guard([no_resources], AUDIENCE))
    print(other.table())
    failed = {name: result for name, result in other.results.items() if not result.passed}
    assert set(failed) >= RESOURCE_SCENARIOS, other.table()
    for name in RESOURCE_SCENARIOS:  # refused by the enclave's policy, not broken on the way
        assert any("POLICY_DENY" in c.message for c in failed[name].failures), failed[name].failures
    assert all(up.counter[uri] == 0 for uri in (*RESOURCES, *RESOURCE_TEMPLATES)), dict(up.counter)
