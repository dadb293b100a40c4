"""What the suite tests: a *target* is a set of endpoints plus the powers the tester has over them.

The suite never assumes it started the deployment. It talks to the gateway route as an agent
would, and uses further access only when the target offers it:

* ``enclave_address`` — gRPC access to the enclave (Attest, CloseSession), the
  access an auditor or the operator has; without it, evidence/record tests skip;
* ``upstream_url`` / ``upstream_counter_url`` — the guarded upstream, reachable directly (the
  position of a compromised host) and its tool-execution counter; without them, "never
  forwarded" and bypass tests skip;
* ``powers`` — local-only abilities (stop the enclave, launch an enclave on a chosen bundle);
  a remote target has none, and the tests that need them skip with a reason;
* ``appraisal`` — how the tester appraises the target's evidence: the signed releases it trusts
  (``--release-manifest``/``--release-key``) and TDX collateral; like every relying party the
  suite refuses a guest matching no release;
* ``outage`` — only the power to stop the enforce route's enclave and start it again; a
  cluster target run with ``--allow-disruption`` has it (it scales the McpRoute to 0 and back);
* ``replica_mcp_url`` / ``replica_token`` — the enforce route on a second gateway replica, and a
  second agent whose policy state the replica check may taint (the main agent stays clean for
  the other checks); without them, REPLICA-001 skips.
* ``identity`` — a route whose agents present OAuth access tokens, and a way to get a valid token
  for a subject (:class:`IdentityAccess`); without it, the IDENT checks skip.

Test code builds alternative targets (for example a weakened gateway in front of the real
enclave) simply by constructing a :class:`TargetDeployment` with other endpoints, or by
subclassing it to change how the audit export reaches the tester (a host that edits it in transit).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_conformance.cluster import ClusterAccess
from cmcp_core import gateway_identity
from cmcp_core.audit_store import chain_entries, open_audit_store, rows_of, trail_for
from cmcp_core.crypto import key_from_jwk, thumbprint
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify.gpu_requirement import GpuRequirement

GRPC_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LaunchResult:
    """What came of trying to start an enclave: ``served`` is True if it ever answered Attest."""

    served: bool
    returncode: int | None
    output: str


class Outage(Protocol):
    """The power to take the enforce route's enclave away and bring it back."""

    def stop_enclave(self) -> None:
        """Stop the enforce route's enclave (the gateway stays up)."""

    def start_enclave(self) -> None:
        """Start it again with its original bundle and initdata, and wait until it serves."""


class Powers(Outage, Protocol):
    """Abilities only a local (or specially equipped) target grants the tester."""

    def launch_enclave(
        self, bundle_dir: Path, initdata: bytes, *, measured: bytes | None = None, timeout: float = 20.0
    ) -> LaunchResult:
        """Start a throw-away enclave on ``bundle_dir`` under ``initdata`` and report whether it served;
        ``measured`` (default ``initdata``) is what the hardware recorded for the launch."""

    def forged_enclave(self) -> AbstractContextManager[str]:
        """While open, an enclave on the enforce route's genuine bundle and initdata, booted by a
        host with another guest (other launch measurements); yields its gRPC address."""


@dataclass(frozen=True)
class IdentityAccess:
    """A route whose bundle trusts a token issuer, and the tester's access to that issuer."""

    mcp_url: str  # the route's MCP endpoint on the gateway
    resource: str  # its resource URI (RFC 8707), the audience its tokens carry
    enclave_address: str  # an enclave of that route (reached as the gateway, with gateway_key)
    token: Callable[[str], str]  # subject -> a valid access token for ``resource``


@dataclass(frozen=True)
class Profile:
    """The tool names the suite relies on; the conformance bundle defines them (see ``bundle``)."""

    allowed_tool: str = "echo"
    denied_tool: str = "delete_records"
    uncatalogued_tool: str = "shadow_tool"  # implemented by the upstream, absent from the catalog
    phi_tool: str = "read_patient_record"
    external_tool: str = "send_external_email"
    non_ascii_tool: str = "données_lire"
    resource: str = "conformance://notes/public"  # catalogued: readable
    uncatalogued_resource: str = "conformance://notes/secret"  # served, absent from the catalog
    prompt: str = "greeting"  # catalogued


@dataclass
class TargetDeployment:
    """Endpoints of one deployment under test. Optional fields switch groups of tests on."""

    name: str
    mcp_url: str
    token: str | None = None
    advisory_mcp_url: str | None = None
    replica_mcp_url: str | None = None  # the enforce route on another gateway replica
    replica_token: str | None = None  # a second agent, for the replica check only
    enclave_address: str | None = None
    # The gateway's identity key, when the tester may play the gateway (or a compromised one):
    # enclaves take state-changing calls only with its proof (cmcp_core.gateway_identity).
    gateway_key: Ed25519PrivateKey | None = None
    audit_store: str | None = None  # the gateway's audit store (sqlite:PATH | postgresql://...)
    advisory_enclave_address: str | None = None
    upstream_url: str | None = None
    upstream_audience: str | None = None
    upstream_counter_url: str | None = None
    allow_simulated: bool = False
    # The GPUs the enforce route's enclave must prove (ATTEST-007): an McpRoute's status.gpu, or
    # --require-gpu; None skips the GPU checks.
    gpu: GpuRequirement | None = None
    appraisal: AppraisalPolicy = field(default_factory=AppraisalPolicy)  # releases the tester trusts
    expected_bundle_hash: str | None = None
    bundle_dir: Path | None = None
    powers: Powers | None = None
    identity: IdentityAccess | None = None
    outage: Outage | None = None  # stop/start the enclave without the other powers (cluster)
    route_status: dict[str, Any] | None = None
    cluster: ClusterAccess | None = None
    profile: Profile = field(default_factory=Profile)
    notes: list[str] = field(default_factory=list)

    # --- agent-side HTTP ---------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # --- upstream counter ----------------------------------------------------------------
    def upstream_calls(self) -> int | None:
        """Tool executions the upstream has performed so far, or None when unobservable."""
        if not self.upstream_counter_url:
            return None
        resp = httpx.get(self.upstream_counter_url, timeout=10.0)
        resp.raise_for_status()
        return int(resp.json()["total"])

    # --- enclave access (auditor / operator position) ------------------------------------
    def enclave_channel(self, address: str | None = None) -> grpc.Channel:
        """A channel to the enclave; with :attr:`gateway_key`, every call carries the gateway's
        proof for that enclave (its key id from a fresh ``Attest``)."""
        addr = address or self.enclave_address
        if not addr:
            raise RuntimeError("target offers no enclave access")
        channel = grpc.insecure_channel(addr)
        if self.gateway_key is None:
            return channel
        attested = enclave_pb2_grpc.EnclaveStub(channel).Attest(
            enclave_pb2.AttestRequest(nonce=os.urandom(32)), timeout=GRPC_TIMEOUT_SECONDS)
        kid = thumbprint(key_from_jwk(json.loads(attested.public_key_jwk)))
        return gateway_identity.proving_channel(channel, self.gateway_key, lambda: kid)

    def _stub(self, address: str | None = None) -> tuple[grpc.Channel, enclave_pb2_grpc.EnclaveStub]:
        channel = self.enclave_channel(address)
        return channel, enclave_pb2_grpc.EnclaveStub(channel)

    def attest(self, nonce: bytes, *, address: str | None = None) -> Any:
        """``AttestResponse`` for ``nonce`` straight from the enclave."""
        channel, stub = self._stub(address)
        with channel:
            return stub.Attest(enclave_pb2.AttestRequest(nonce=nonce), timeout=GRPC_TIMEOUT_SECONDS)

    def export_audit(self, session_id: str, *, address: str | None = None) -> list[dict[str, Any]]:
        """The session's audit entries as the deployment's audit store hands them to an auditor
        (untrusted storage). ``address`` names the enclave (its ledger), kept for the callers'
        symmetry: the store is one for all of them."""
        if not self.audit_store:
            raise RuntimeError("target offers no audit store")
        store = open_audit_store(self.audit_store)
        try:
            return [json.loads(raw) for raw in chain_entries(store, session_id)]
        finally:
            store.close()

    def close_session(self, session_id: str, *, address: str | None = None) -> dict[str, Any]:
        """Close a session at the enclave and return its Trust Record (JSON object)."""
        record: dict[str, Any] = json.loads(self.close_session_response(session_id, address=address)
                                            .trust_record_json)
        return record

    def close_session_response(self, session_id: str, *, address: str | None = None) -> Any:
        """Close a session at the enclave: the whole ``CloseSessionResponse`` (record, GPU evidence)."""
        channel, stub = self._stub(address)
        with channel:
            resp = stub.CloseSession(
                enclave_pb2.CloseSessionRequest(session_id=session_id, reason="conformance"),
                timeout=GRPC_TIMEOUT_SECONDS,
            )
        self.keep_trail(resp.audit_entries)
        return resp

    def principal_trail(self, principal: str) -> enclave_pb2.PrincipalTrail:
        """What a gateway hands an enclave with the first session of ``principal`` there: its trail
        from the deployment's audit store (empty without one)."""
        if not self.audit_store or not self.expected_bundle_hash:
            return enclave_pb2.PrincipalTrail()
        store = open_audit_store(self.audit_store)
        try:
            return trail_for(store, principal, owner="", bundle_hash=self.expected_bundle_hash,
                             now=time.time())
        finally:
            store.close()

    def keep_trail(self, entries: Sequence[bytes]) -> None:
        """Store the audit entries an enclave answer handed to the suite, as a gateway must: where
        the suite plays the gateway (or the host), the trail stays whole for the auditor's checks."""
        if not self.audit_store or not entries:
            return
        store = open_audit_store(self.audit_store)
        try:
            store.append(rows_of(list(entries)))
        finally:
            store.close()

    def describe(self) -> str:
        parts = [f"gateway={self.mcp_url}"]
        if self.enclave_address:
            parts.append(f"enclave={self.enclave_address}")
        if self.upstream_url:
            parts.append(f"upstream={self.upstream_url}")
        return f"{self.name}: " + ", ".join(parts)
