"""A peer enclave: another key an enclave trusts because its evidence shows the very guest it is.

An enclave that takes a principal over from the durable trail must check entries other enclaves
of its route signed. It holds no signed release manifests and trusts nothing outside itself, so
a peer's key is trusted when the peer's evidence verifies on the enclave's own platform and shows
the enclave's own launch measurements and, byte for byte, its own initdata: the same release,
bundle, gateway keys and configuration, at a TCB at least its own. Simulated evidence
(software-only: every simulated enclave has a simulator key of its own) is accepted from an
enclave on the same simulated platform only. TDX needs collateral for the PCK chain and TCB
status (``collateral_dir``); an SNP peer's VCEK chain comes with its evidence. Without those,
and on platforms this module does not compare (CoCo attestation-agent evidence), the peer is
refused, so the principal waits rather than starts clean.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core import initdata as initdata_mod
from cmcp_core import launch_policy
from cmcp_core.crypto import key_from_jwk
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.simulated import verify_simulated_quote
from cmcp_core.evidence.simulated_snp import SIMULATED_SNP_PLATFORM
from cmcp_core.evidence.snp import TcbVersion, parse_report
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.initdata import POLICY_KEY
from cmcp_core.verify.appraise import SIMULATED_PLATFORMS, appraise_response
from cmcp_core.verify.reference import SNP_TCB_FIELDS, ReleaseReference, SnpReference, TdxReference
from cmcp_core.verify.snp import decode_snp_evidence
from cmcp_core.verify.verdict import AppraisalPolicy

COMPARED_PLATFORMS = ("simulated", "tdx", "snp", SIMULATED_SNP_PLATFORM)


def _refused(message: str) -> CmcpError:
    return CmcpError(Code.PRINCIPAL_TRAIL_INVALID, f"peer enclave refused: {message}")


def _own_launch(platform: str, evidence: bytes) -> TdxReference | SnpReference:
    """This enclave's own launch values (its own report, which it trusts), as a peer's minimum."""
    if platform in ("simulated", "tdx"):
        body = (verify_simulated_quote(evidence) if platform == "simulated" else parse_quote(evidence)).body
        return TdxReference(mrtd=body.mrtd, rtmrs=(body.rtmrs[0], body.rtmrs[1], body.rtmrs[2]),
                            min_tee_tcb_svn=body.tee_tcb_svn, td_attributes=body.td_attributes)
    report = parse_report(decode_snp_evidence(evidence).report)
    tcb = TcbVersion.decode(report.reported_tcb, turin=report.product == "turin")
    return SnpReference(measurement=report.measurement, policy=report.policy, vmpl=report.vmpl,
                        min_tcb={name: int(getattr(tcb, name)) for name in SNP_TCB_FIELDS})


def _own_policy(platform: str, evidence: bytes, initdata: bytes) -> AppraisalPolicy:
    """This enclave as the one release a peer must match, in a policy to appraise the peer with."""
    if platform not in COMPARED_PLATFORMS:
        raise _refused(f"comparing {platform} evidence with a peer's is not supported")
    doc = initdata_mod.parse(initdata)
    rules, _ = launch_policy.split(doc.data.get(POLICY_KEY, ""))
    launch = _own_launch(platform, evidence)
    tdx = launch if isinstance(launch, TdxReference) else None
    snp = launch if isinstance(launch, SnpReference) else None
    simulated = platform in SIMULATED_PLATFORMS
    release = ReleaseReference(version="this enclave", image=doc.cmcp.image,
                               launch_policy_rules=launch_policy.digest(rules),
                               tdx=None if simulated else tdx, simulated=tdx if simulated else None,
                               snp=None if simulated else snp, simulated_snp=snp if simulated else None)
    return AppraisalPolicy(allow_simulated=simulated, accepted_platforms=frozenset({platform}),
                           releases=(release,))


def appraise_peer(own_platform: str, own_evidence: bytes, own_initdata: bytes, peer: Any,
                  nonce: bytes, *, collateral_dir: str | None = None) -> Ed25519PublicKey:
    """The key of ``peer`` (an ``AttestResponse`` to ``nonce``) if it is this very guest, else a
    coded ``PRINCIPAL_TRAIL_INVALID`` naming why."""
    try:
        policy = _own_policy(own_platform, own_evidence, own_initdata)
    except CmcpError as exc:
        if exc.code is Code.PRINCIPAL_TRAIL_INVALID:
            raise
        raise _refused(f"this enclave's own evidence: {exc.detail}") from exc
    if collateral_dir is not None:
        policy = replace(policy, collateral_dir=collateral_dir)
    verdict = appraise_response(peer, nonce, policy, expected_initdata=own_initdata)
    if not verdict.passed or verdict.public_key_jwk is None:
        raise _refused(f"{verdict.code}: {verdict.message}")
    return key_from_jwk(verdict.public_key_jwk)
