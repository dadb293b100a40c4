"""The attestation contract shared by operator, gateway and guard, and the attest call.

:class:`Evidence` is an enclave's answer to ``Attest`` (proto-free); :class:`Appraisal` is what
an appraiser concluded about it, the one result type all three components use. Per platform,
evidence, verification and provider stay side by side in :mod:`cmcp_core.evidence` and
:mod:`cmcp_core.verify`; this module only carries their result.

Both the guard and the gateway trust an enclave key only through :func:`attest`, never through
a key list handed over by someone else: fresh evidence bound to a nonce we chose, appraised
against our own policy (a signed release's reference values, simulated TEEs only when explicitly
allowed) and then compared with what *we* expect the measured initdata to name
(:class:`Expected`). Pinning is not optional: an :class:`Expected` that pins no bundle and no
initdata refuses every enclave.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core import initdata as initdata_mod
from cmcp_core.crypto import key_from_jwk, thumbprint
from cmcp_core.digest import tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_core.initdata import CmcpEntry
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.verify import AppraisalPolicy, appraise_response
from cmcp_core.verify.gpu_requirement import GpuRequirement

ENFORCE_ONLY = frozenset({"enforce"})


@dataclass(frozen=True)
class Evidence:
    """The fields of an ``AttestResponse``, proto-free so appraisal logic is testable.

    Field names match the proto's, so :func:`cmcp_core.verify.appraise_response` takes either.
    """

    platform: str
    evidence: bytes
    aux: bytes
    initdata: bytes
    public_key_jwk: str
    bundle_hash: str
    catalog_hash: str
    enforcement_mode: str
    report_data: bytes
    gpu_evidence: tuple[bytes, ...] = ()  # one cmcp-gpu-evidence-v1 envelope per GPU

    @classmethod
    def from_response(cls, resp: Any) -> Evidence:
        return cls(platform=resp.platform, evidence=resp.evidence, aux=resp.aux, initdata=resp.initdata,
                   public_key_jwk=resp.public_key_jwk, bundle_hash=resp.bundle_hash,
                   catalog_hash=resp.catalog_hash, enforcement_mode=resp.enforcement_mode,
                   report_data=resp.report_data,
                   gpu_evidence=tuple(bytes(e) for e in getattr(resp, "gpu_evidence", ())))

    @property
    def initdata_digest(self) -> str:
        """The measured configuration, as the operator pins it in route status."""
        return tagged_sha256(self.initdata)

    @property
    def evidence_digest(self) -> str:
        return tagged_sha256(self.evidence)


@dataclass(frozen=True)
class Appraisal:
    """One enclave's appraised attestation: the verdict and, when it passed, the key it vouches for.

    ``reason`` is CamelCase (``Attested``, ``BundleHashMismatch``, ...): it becomes pod condition
    reasons and ``status.pods[].reason``. Fields other than the verdict are what the evidence
    claimed, filled in as far as appraisal got.
    """

    attested: bool
    reason: str
    message: str
    platform: str = ""
    bundle_hash: str = ""
    initdata_digest: str = ""  # the measured configuration
    thumbprint: str = ""  # RFC 7638 thumbprint of the enclave key, when attested
    public_jwk: dict[str, str] = field(default_factory=dict)
    assurance: str = ""  # hardware / software-only / none (cmcp_core.verify.verdict)
    catalog_hash: str = ""
    enforcement_mode: str = ""
    evidence_digest: str = ""
    appraised_at: float = 0.0  # wall clock, seconds
    # status.pods[].gpu when the route requires GPUs and appraisal reached them:
    # {attested, code, count, revocation, driverVersion, vbiosVersion}
    gpu: dict[str, Any] | None = None


@dataclass(frozen=True)
class Expected:
    """What a relying party expects an enclave's measured initdata to name.

    ``bundle_hashes`` (and ``catalog_hashes``: the bundle hash leaves the catalog out, as the
    origin's does) come from configuration; ``initdata_digests`` from the route a component
    follows (the operator's ``status.target``/``previous``, so every measured byte is compared,
    launch policy and catalog included). Bundle hashes or initdata digests must pin something.
    ``route`` and ``audience``, when set, must be named exactly; ``modes`` defaults to enforce
    only, so an advisory-mode enclave's permit never opens an enforce-mode upstream.
    """

    bundle_hashes: frozenset[str] = frozenset()
    catalog_hashes: frozenset[str] = frozenset()
    initdata_digests: frozenset[str] = frozenset()
    route: str | None = None
    audience: str | None = None
    modes: frozenset[str] = ENFORCE_ONLY

    @property
    def pinned(self) -> bool:
        return bool(self.bundle_hashes or self.initdata_digests)

    def check(self, address: str, entry: CmcpEntry, initdata_digest: str) -> None:
        """A coded error naming the first field that is not what we expect."""
        if not self.pinned:
            raise CmcpError(Code.ATTESTED_BUNDLE_UNEXPECTED,
                            f"{address}: nothing is pinned (no expected bundle hash, no route to follow)")
        if self.bundle_hashes and entry.bundle_hash not in self.bundle_hashes:
            raise CmcpError(Code.ATTESTED_BUNDLE_UNEXPECTED,
                            f"{address}: bundle {entry.bundle_hash} not expected")
        if self.catalog_hashes and entry.catalog_hash not in self.catalog_hashes:
            raise CmcpError(Code.INITDATA_UNEXPECTED,
                            f"{address}: catalog {entry.catalog_hash} not expected")
        if self.audience is not None and entry.audience != self.audience:
            raise CmcpError(Code.REFERENCE_VALUE_MISMATCH,
                            f"{address}: enclave is measured for another audience")
        if self.route is not None and entry.route != self.route:
            raise CmcpError(Code.INITDATA_UNEXPECTED,
                            f"{address}: enclave is measured for route {entry.route!r}")
        if entry.enforcement_mode not in self.modes:
            raise CmcpError(Code.INITDATA_UNEXPECTED,
                            f"{address}: enclave runs in {entry.enforcement_mode!r} mode, "
                            f"expected {' or '.join(sorted(self.modes))}")
        # last: the named checks above say what is wrong; this one catches every other byte
        if self.initdata_digests and initdata_digest not in self.initdata_digests:
            raise CmcpError(Code.INITDATA_UNEXPECTED,
                            f"{address}: initdata {initdata_digest} is not the route's target or previous")


@dataclass(frozen=True)
class AttestPolicy:
    appraisal: AppraisalPolicy
    expected: Expected
    timeout_seconds: float = 5.0
    gpu: GpuRequirement | None = None  # the route's GPU requirement (McpRoute status.gpu)


@dataclass(frozen=True)
class AttestedEnclave:
    """An endpoint whose key we verified ourselves: the live key beside its :class:`Appraisal`."""

    address: str
    key: Ed25519PublicKey
    appraisal: Appraisal
    nonce: bytes = b""  # ours, and the enclave's answer to it (a serialized AttestResponse): kept in
    response: bytes = b""  # the audit store, so a peer enclave can appraise this one's entries later

    @property
    def kid(self) -> str:
        return self.appraisal.thumbprint

    @property
    def bundle_hash(self) -> str:
        return self.appraisal.bundle_hash

    @property
    def catalog_hash(self) -> str:
        return self.appraisal.catalog_hash

    @property
    def enforcement_mode(self) -> str:
        return self.appraisal.enforcement_mode

    @property
    def platform(self) -> str:
        return self.appraisal.platform

    @property
    def assurance(self) -> str:
        return self.appraisal.assurance

    @property
    def attested_at(self) -> float:
        return self.appraisal.appraised_at


def _measured_entry(initdata: bytes) -> CmcpEntry:
    try:
        return initdata_mod.parse(initdata).cmcp
    except Exception as exc:  # the verifier already accepted it; anything odd here is still a refusal
        raise CmcpError(Code.EVIDENCE_MALFORMED, f"initdata has no readable cMCP entry: {exc}") from exc


async def attest(stub: enclave_pb2_grpc.EnclaveStub, address: str, policy: AttestPolicy) -> AttestedEnclave:
    """Attest one enclave; a coded ``CmcpError`` for anything short of a verified key."""
    nonce = secrets.token_bytes(32)
    try:
        resp = await stub.Attest(enclave_pb2.AttestRequest(nonce=nonce), timeout=policy.timeout_seconds)
    except grpc.aio.AioRpcError as exc:
        raise CmcpError(Code.TEE_UNAVAILABLE, f"{address}: Attest failed: {exc.code().name}") from exc
    verdict = appraise_response(resp, nonce, policy.appraisal, gpu=policy.gpu)
    if not verdict.passed:
        try:
            code = Code(verdict.code)
        except ValueError:
            code = Code.VERIFY_INTERNAL_ERROR
        raise CmcpError(code, f"{address}: evidence rejected: {verdict.message}")
    try:
        jwk = json.loads(resp.public_key_jwk)
        key = key_from_jwk(jwk)
    except ValueError as exc:
        raise CmcpError(Code.EVIDENCE_MALFORMED, f"{address}: bad public key JWK: {exc}") from exc
    kid = thumbprint(key)
    if verdict.key_thumbprint != kid:
        raise CmcpError(Code.BINDING_KEY_MISMATCH, f"{address}: appraised key differs from the JWK")
    evidence = Evidence.from_response(resp)
    policy.expected.check(address, _measured_entry(evidence.initdata), evidence.initdata_digest)
    return AttestedEnclave(address=address, key=key, appraisal=Appraisal(
        attested=True, reason="Attested", message=verdict.message, platform=evidence.platform,
        bundle_hash=evidence.bundle_hash, initdata_digest=evidence.initdata_digest, thumbprint=kid,
        public_jwk={k: str(v) for k, v in jwk.items()}, assurance=verdict.assurance,
        catalog_hash=evidence.catalog_hash, enforcement_mode=evidence.enforcement_mode,
        evidence_digest=evidence.evidence_digest, appraised_at=time.time()),
        nonce=nonce, response=resp.SerializeToString())
