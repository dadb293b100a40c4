"""A peer enclave: another key an enclave trusts because its evidence shows the very guest it is.

An enclave that takes a principal over from the durable trail must check entries other enclaves
of its route signed. It holds no signed release manifests and trusts nothing outside itself, so
a peer's key is trusted when the peer's evidence verifies on the enclave's own platform and shows
the enclave's own launch measurements and, byte for byte, its own initdata: the same release,
bundle, gateway keys and configuration. Simulated evidence (software-only: every simulated
enclave has a simulator key of its own) is accepted from a simulated enclave only. TDX needs
collateral for the PCK chain and TCB status (``collateral_dir``); without it, and on platforms
this module does not compare yet (SNP, CoCo attestation-agent evidence), the peer is refused, so
the principal waits rather than starts clean.
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
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.initdata import POLICY_KEY
from cmcp_core.verify.appraise import appraise_response
from cmcp_core.verify.reference import ReleaseReference, TdxReference
from cmcp_core.verify.verdict import AppraisalPolicy

COMPARED_PLATFORMS = ("simulated", "tdx")


def _refused(message: str) -> CmcpError:
    return CmcpError(Code.PRINCIPAL_TRAIL_INVALID, f"peer enclave refused: {message}")


def _own_policy(platform: str, evidence: bytes, initdata: bytes) -> AppraisalPolicy:
    """This enclave as the one release a peer must match, in a policy to appraise the peer with."""
    if platform not in COMPARED_PLATFORMS:
        raise _refused(f"comparing {platform} evidence with a peer's is not supported")
    quote = verify_simulated_quote(evidence) if platform == "simulated" else parse_quote(evidence)
    body = quote.body
    launch = TdxReference(mrtd=body.mrtd, rtmrs=(body.rtmrs[0], body.rtmrs[1], body.rtmrs[2]),
                          min_tee_tcb_svn=body.tee_tcb_svn, td_attributes=body.td_attributes)
    doc = initdata_mod.parse(initdata)
    rules, _ = launch_policy.split(doc.data.get(POLICY_KEY, ""))
    simulated = platform == "simulated"
    release = ReleaseReference(version="this enclave", image=doc.cmcp.image,
                               launch_policy_rules=launch_policy.digest(rules),
                               simulated=launch if simulated else None, tdx=None if simulated else launch)
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
