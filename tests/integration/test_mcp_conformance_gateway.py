"""The official MCP conformance suite through the gateway, compared with the same upstream directly.

Direct: the suite against the everything upstream (:mod:`cmcp_devkit.everything`). Through the
gateway: the suite -> ``cmcp-gateway`` (an open route) -> a real enclave process on a bundle that
catalogues everything the upstream offers -> the guard -> the same upstream. The only allowed
differences are listed, each with its reason; a second run with a bundle that forbids reading
resources shows the resource scenarios refused and the upstream reading nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cmcp_core.native_schema import native_schema
from cmcp_devkit.enclave import EnclaveProcess, start_enclave
from cmcp_devkit.everything import (
    PROMPTS,
    RESOURCE_TEMPLATES,
    RESOURCES,
    SENSITIVE_RESOURCES,
    TOOLS,
    RunningEverything,
)
from cmcp_devkit.mcp_conformance import SPEC_VERSIONS, Install, differences, ensure_installed
from cmcp_gateway.config import GatewayLimits, RouteConfig
from tests.helpers.gateway_stack import AUDIENCE, gateway_config, make_guard, run_gateway
from tests.integration.test_mcp_conformance_suite import Target, run_against

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

ALLOW = '@id("allow-catalogued")\npermit (principal, action, resource);\n'
FORBID_PHI = ('@id("no-patient-records")\nforbid (principal, action, resource is cMCP::Resource)\n'
              'when { resource.compliance_domain == "phi" };\n')
FORBID_RESOURCES = ('@id("no-resources")\nforbid (principal, action == cMCP::Action::"read_resource", '
                    "resource);\n")

# Scenarios that may differ through the gateway, and why: none. (Policy-denied scenarios are the
# second test's, with a bundle that denies them.)
NOT_RELAYED_YET: dict[str, dict[str, str]] = {version: {} for version in SPEC_VERSIONS}


def everything_bundle(root: Path, *policies: str) -> Path:
    """A native bundle cataloguing every tool, resource, template and prompt of the everything
    upstream (its patient records as PHI), with ``policies``."""
    catalog: list[dict[str, Any]] = [{"tool_name": t, "server": "everything"} for t in TOOLS]
    for uri in (*RESOURCES, *RESOURCE_TEMPLATES):
        key = "resource_template" if "{" in uri else "resource_uri"
        entry: dict[str, Any] = {key: uri, "server": "everything"}
        if uri in SENSITIVE_RESOURCES:
            entry.update(sensitivity_level="restricted", compliance_domain="phi")
        catalog.append(entry)
    catalog += [{"prompt_name": p, "server": "everything"} for p in PROMPTS]
    manifest = {"version": "1.0.0", "authored_at": "2026-12-05T00:00:00Z", "author_identity": "tests",
                "commit_sha": "everything", "enforcement_mode": "enforce", "request_model": "native"}
    (root / "policies").mkdir(parents=True)
    for index, text in enumerate(policies):
        (root / "policies" / f"p{index}.cedar").write_text(text)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "schema.cedarschema").write_text(native_schema({}))
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root


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
    """The gateway (one open route, pinned to ``enclave``'s bundle) in front of the upstream."""

    @contextlib.asynccontextmanager
    async def target(up: RunningEverything) -> AsyncIterator[str]:
        pinned = frozenset({enclave.bundle_hash})
        route = RouteConfig(name="everything", upstream=up.url, audience=AUDIENCE,
                            enclaves=(enclave.address,), expected_bundle_hashes=pinned, open=True)
        config = gateway_config(route, limits=GatewayLimits(decide_timeout_seconds=15.0))
        async with run_gateway(config, None) as gw:
            yield gw.url

    return target


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_the_suite_passes_through_the_gateway_as_it_does_directly(
    install: Install, enclave: EnclaveProcess, spec_version: str
) -> None:
    reference, _ = await run_against(install, spec_version)
    other, up = await run_against(install, spec_version, through_gateway(enclave),
                                  guard=make_guard([enclave], AUDIENCE))
    print(other.table())
    assert differences(reference, other, NOT_RELAYED_YET[spec_version]) == {}, other.table()
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
