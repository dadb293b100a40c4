"""POLICY-TEE-006's requests, checked against the policies a target can carry: the operator's
(cluster targets, runtime-supplied env by pattern) and the local launchers' (no env), with regorus.

The honest requests must be admitted and every injection refused; the permissive policy initdata
carried before issue 15 (the weakened component) admits the injections, so the probes bite.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cmcp_conformance.launch_inputs import HONEST, INJECTIONS, AgentPolicy, LaunchInputError, honest_requests
from cmcp_core import initdata, launch_policy
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_operator.workloads import launch_spec
from tests.paths import DATA

IMAGE = "ghcr.io/cmcp-k8s/cmcp-enclave@sha256:" + "5e" * 32
ARGV = ["cmcp-enclave", "--bundle", "/etc/cmcp/bundle", "--tee", "tdx"]
POLICIES = {
    "operator": launch_policy.render(launch_spec("team", IMAGE, ARGV)),
    "local launcher": initdata.agent_policy(TEST_IMAGE, ["cmcp-enclave"]),
}


@pytest.fixture(params=sorted(POLICIES))
def measured(request: pytest.FixtureRequest) -> Iterator[tuple[AgentPolicy, dict[str, object]]]:
    policy = POLICIES[request.param]
    agent = AgentPolicy(policy)
    try:
        yield agent, honest_requests(launch_policy.split(policy)[1])
    finally:
        agent.close()


def test_honest_requests_are_admitted(measured: tuple[AgentPolicy, dict[str, object]]) -> None:
    agent, requests = measured
    assert [p.name for p in HONEST if not agent.answer(p, requests)] == []


def test_every_injection_is_refused(measured: tuple[AgentPolicy, dict[str, object]]) -> None:
    agent, requests = measured
    assert [p.name for p in INJECTIONS if agent.answer(p, requests)] == []


def test_the_old_permissive_policy_admits_the_injections() -> None:
    """Weakened component: the policy initdata carried before (CopyFile, env and mounts unchecked)."""
    template = (DATA / "launch_policy" / "legacy_agent_policy.rego.in").read_text()
    legacy = template.replace("__IMAGE__", IMAGE).replace("__ARGS__", json.dumps(ARGV))
    agent = AgentPolicy(legacy)
    try:
        requests = honest_requests(launch_policy.split(POLICIES["operator"])[1])
        admitted = {p.name for p in INJECTIONS if agent.answer(p, requests)}
    finally:
        agent.close()
    assert {"env LD_PRELOAD", "env PYTHONPATH", "extra host mount", "CopyFile traversal"} <= admitted


def test_a_pattern_no_runtime_sample_fits_is_reported() -> None:
    expected = launch_policy.split(POLICIES["local launcher"])[1]
    expected["env"] = [{"name": "ODD", "pattern": "^ODD=zz[0-9]{3}$"}]
    with pytest.raises(LaunchInputError, match="ODD"):
        honest_requests(expected)
