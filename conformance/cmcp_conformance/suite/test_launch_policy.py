"""POLICY-TEE-006: the measured launch policy refuses what a host would inject into the pod.

The policy under test is the one in the attested enclave's initdata (the appraisal pins its rules
to the signed release), evaluated with regorus, the Rego engine the Kata agent embeds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cmcp_conformance.launch_inputs import HONEST, INJECTIONS, AgentPolicy, honest_requests
from cmcp_conformance.suite.conftest import Attested
from cmcp_core import initdata, launch_policy


@pytest.fixture
def measured_policy(attested: Attested) -> Iterator[tuple[AgentPolicy, dict[str, object]]]:
    """The attested enclave's launch policy and the honest requests for the pod it pins."""
    doc = initdata.parse(bytes(attested.response.initdata))
    policy = doc.data.get("policy.rego", "")
    assert launch_policy.digest(policy) == doc.cmcp.launch_policy_digest, (
        "the initdata's cMCP entry names another launch policy than it carries"
    )
    _, expected = launch_policy.split(policy)
    agent = AgentPolicy(policy)
    try:
        yield agent, honest_requests(expected)
    finally:
        agent.close()


@pytest.mark.conformance("POLICY-TEE-006")
def test_launch_policy_admits_the_pinned_pod(measured_policy: tuple[AgentPolicy, dict[str, object]]) -> None:
    agent, requests = measured_policy
    refused = [p.name for p in HONEST if not agent.answer(p, requests)]
    assert not refused, f"the measured launch policy refuses the pod it pins: {refused}"


@pytest.mark.conformance("POLICY-TEE-006")
def test_launch_policy_refuses_injection(measured_policy: tuple[AgentPolicy, dict[str, object]]) -> None:
    agent, requests = measured_policy
    admitted = [p.name for p in INJECTIONS if agent.answer(p, requests)]
    assert not admitted, f"the measured launch policy admits host injections: {admitted}"
