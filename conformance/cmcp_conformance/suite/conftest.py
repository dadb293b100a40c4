"""Shared fixtures: fresh attestation of the target's enclave, and the "needs X" skips.

Every fixture that talks to the deployment appraises what it gets with the product verifier
*and* re-derives the security-relevant values itself, so a verifier bug cannot hide a
deployment bug (and vice versa).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_conformance.target import Outage, TargetDeployment
from cmcp_core.crypto import key_from_jwk, thumbprint
from cmcp_core.verify import AppraisalPolicy, Verdict, appraise_response


@dataclass(frozen=True)
class Attested:
    """One enclave, attested by the suite with its own nonce."""

    address: str
    nonce: bytes
    response: Any  # enclave_pb2.AttestResponse
    verdict: Verdict
    key: Ed25519PublicKey

    @property
    def kid(self) -> str:
        return thumbprint(self.key)


def need_enclave(target: TargetDeployment) -> str:
    if not target.enclave_address:
        pytest.skip("target offers no enclave gRPC access (pass --enclave or --route with reachable pods)")
    return target.enclave_address


def need_counter(target: TargetDeployment) -> None:
    if not target.upstream_counter_url:
        pytest.skip("target exposes no upstream call counter (pass --upstream-counter)")


def need_upstream(target: TargetDeployment) -> tuple[str, str]:
    if not target.upstream_url or not target.upstream_audience:
        pytest.skip("target offers no direct access to the guarded upstream (pass --upstream, --audience)")
    return target.upstream_url, target.upstream_audience


def need_advisory(target: TargetDeployment) -> str:
    if not target.advisory_mcp_url:
        pytest.skip("target has no advisory route (pass --advisory-url)")
    return target.advisory_mcp_url


def need_replica(target: TargetDeployment) -> tuple[str, str]:
    """The enforce route on a second gateway replica, and the agent whose state the check may taint."""
    if not target.replica_mcp_url or not target.replica_token:
        pytest.skip("target names no second gateway replica and agent for it (the local target has both)")
    return target.replica_mcp_url, target.replica_token


def need_store(target: TargetDeployment) -> str:
    """The deployment's audit store, as the auditor reads it (``sqlite:PATH`` or ``postgresql://...``)."""
    if not target.audit_store:
        pytest.skip("target names no audit store (pass --audit-store)")
    return target.audit_store


def need_powers(target: TargetDeployment, what: str) -> Any:
    if target.powers is None:
        pytest.skip(f"needs local powers ({what}); not available on a remote target")
    return target.powers


DISRUPTION_SKIP = (
    "needs the power to stop the enclave, which disrupts the route: on a cluster target pass "
    "--allow-disruption (with --kubeconfig and --route) to let the suite scale the McpRoute to 0 and back"
)


def need_outage(target: TargetDeployment) -> Outage:
    """Stop/start the enforce route's enclave: the local powers, or a cluster target's opt-in outage."""
    if target.powers is not None:
        return target.powers
    if target.outage is None:
        pytest.skip(DISRUPTION_SKIP)
    return target.outage


def appraisal_policy(target: TargetDeployment) -> AppraisalPolicy:
    """The target's appraisal (its signed releases) with simulated evidence as the target declares."""
    return replace(target.appraisal, allow_simulated=target.allow_simulated)


def attest(
    target: TargetDeployment, address: str | None = None, *, expected_bundle_hash: str | None = None
) -> Attested:
    """Attest with a fresh nonce and require the product verifier to pass it.

    The enforce route's enclave (no ``address``) must attest ``target.expected_bundle_hash``;
    another enclave (e.g. the advisory route's) is pinned only to ``expected_bundle_hash``."""
    addr = address or need_enclave(target)
    pinned = expected_bundle_hash if address is not None else target.expected_bundle_hash
    nonce = secrets.token_bytes(32)
    response = target.attest(nonce, address=addr)
    verdict = appraise_response(response, nonce, appraisal_policy(target), expected_bundle_hash=pinned)
    assert verdict.passed, f"fresh evidence from {addr} does not appraise: {verdict.code} {verdict.message}"
    key = key_from_jwk(json.loads(response.public_key_jwk))
    return Attested(addr, nonce, response, verdict, key)


@pytest.fixture
def attested(target: TargetDeployment) -> Attested:
    """The enforce route's enclave, freshly attested (per test: a restarted enclave has a new key)."""
    return attest(target)


@pytest.fixture
def counter(target: TargetDeployment) -> Any:
    """``counter()`` returns the upstream's tool-execution count; skips when unobservable."""
    need_counter(target)

    def read() -> int:
        value = target.upstream_calls()
        assert value is not None
        return value

    return read
