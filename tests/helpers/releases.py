"""Release references for the real TEE fixtures: what a vendor's manifest for that guest would say.

The fixtures are genuine Intel and AMD evidence from guests we did not build, so their reference
values are read off the evidence itself; a test that changes one value shows the check bites.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_core import launch_policy, release
from cmcp_core.evidence.snp import TcbVersion, parse_report
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.verify.reference import SNP_TCB_FIELDS, ReleaseReference, SnpReference, TdxReference
from cmcp_core.verify.snp import decode_snp_evidence
from cmcp_devkit.initdata import TEST_IMAGE


def tdx_reference_of(evidence: bytes) -> TdxReference:
    body = parse_quote(evidence).body
    return TdxReference(mrtd=body.mrtd, rtmrs=(body.rtmrs[0], body.rtmrs[1], body.rtmrs[2]),
                        min_tee_tcb_svn=body.tee_tcb_svn, td_attributes=body.td_attributes)


def snp_reference_of(evidence: bytes, *, turin: bool = False) -> SnpReference:
    report = parse_report(decode_snp_evidence(evidence).report)
    tcb = TcbVersion.decode(report.reported_tcb, turin=turin)
    return SnpReference(measurement=report.measurement, policy=report.policy, vmpl=report.vmpl,
                        min_tcb={name: int(getattr(tcb, name)) for name in SNP_TCB_FIELDS})


def release_of(platform: str, evidence: bytes, image: str = TEST_IMAGE) -> ReleaseReference:
    """A release whose ``platform`` values are exactly this evidence's launch values."""
    rules = launch_policy.rules_digest()
    if platform == "snp":
        return ReleaseReference("fixture", image, rules, snp=snp_reference_of(evidence))
    if platform == "tdx":
        return ReleaseReference("fixture", image, rules, tdx=tdx_reference_of(evidence))
    return ReleaseReference("fixture", image, rules, simulated=tdx_reference_of(evidence))


def release_argv(directory: Path, *releases: ReleaseReference) -> list[str]:
    """Sign each release with one fresh key, write them under ``directory``; the relying-party flags."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pub = directory / "release-key.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    argv = ["--release-key", str(pub)]
    for index, ref in enumerate(releases):
        manifest = directory / f"release-{index}.json"
        manifest.write_bytes(release.sign(ref, key))
        argv += ["--release-manifest", str(manifest)]
    return argv
