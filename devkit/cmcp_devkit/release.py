"""A signed development release: the simulated guests' reference values under a throw-away key.

Every relying party refuses guests without a signed release manifest, in development too, so the
dev kit signs one for the genuine simulated guests (the TDX one,
:class:`~cmcp_enclave.simulated.SimulatedGuest`, and the SNP one the confidential-node stand-in
boots, :data:`~cmcp_core.evidence.simulated_snp.SIMULATED_SNP_MEASUREMENT`) and the dev image,
with a key generated per stack. A launcher that boots another guest (other
MRTD/RTMRs) is then refused by the same checks as a forged guest on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_core import launch_policy, release
from cmcp_core.evidence.simulated_snp import (
    SIMULATED_SNP_MEASUREMENT,
    SIMULATED_SNP_PLATFORM,
    SIMULATED_SNP_POLICY,
)
from cmcp_core.evidence.snp import TcbVersion, parse_report
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify.reference import SNP_TCB_FIELDS, ReleaseReference, SnpReference, TdxReference
from cmcp_core.verify.snp import decode_snp_evidence
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_enclave.simulated import SimulatedGuest

DEV_VERSION = "0.0.0-dev"


def simulated_reference(guest: SimulatedGuest | None = None) -> TdxReference:
    guest = guest or SimulatedGuest()
    return TdxReference(mrtd=guest.mrtd, rtmrs=guest.rtmrs)


def simulated_snp_reference() -> SnpReference:
    """The genuine simulated SNP guest: its launch digest and Kata's default guest policy, VMPL 0."""
    return SnpReference(measurement=SIMULATED_SNP_MEASUREMENT, policy=SIMULATED_SNP_POLICY)


def dev_release(image: str = TEST_IMAGE, guest: SimulatedGuest | None = None) -> ReleaseReference:
    """The release the dev kit's launchers start: the simulated guests, ``image``, today's rules."""
    return ReleaseReference(version=DEV_VERSION, image=image,
                            launch_policy_rules=launch_policy.rules_digest(),
                            simulated=simulated_reference(guest), simulated_snp=simulated_snp_reference())


def dev_appraisal(image: str = TEST_IMAGE) -> AppraisalPolicy:
    """In-process appraisal of the dev kit's enclaves, as a relying party configured with the dev
    release would make it (simulated evidence allowed)."""
    return AppraisalPolicy(allow_simulated=True, releases=(dev_release(image),))


@dataclass(frozen=True)
class DevRelease:
    """A manifest and the public key that signed it, on disk for processes to be pointed at."""

    manifest: Path
    key: Path
    release: ReleaseReference

    def argv(self) -> list[str]:
        """The relying-party flags (guard, operator, ``cmcpctl verify``)."""
        return ["--release-manifest", str(self.manifest), "--release-key", str(self.key)]

    def config(self) -> dict[str, list[str]]:
        """The gateway config's ``release`` section."""
        return {"manifests": [str(self.manifest)], "keys": [str(self.key)]}


def write_dev_release(directory: Path, image: str = TEST_IMAGE, name: str = "dev-release") -> DevRelease:
    """Sign :func:`dev_release` with a fresh Ed25519 key; write ``NAME.json`` and ``NAME.pub.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    ref = dev_release(image)
    manifest = directory / f"{name}.json"
    manifest.write_bytes(release.sign(ref, key))
    public = directory / f"{name}.pub.pem"
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    signed = release.verify(manifest.read_bytes(), [release.load_release_key(public.read_bytes())])
    return DevRelease(manifest=manifest, key=public, release=replace(ref, signer=signed.signer))


def release_of(platform: str, evidence: bytes, image: str = TEST_IMAGE) -> ReleaseReference:
    """A release whose ``platform`` values are read off this evidence: what a vendor's manifest
    for that guest would say. For the real TEE fixtures (guests we did not build) in tests and
    benchmarks; a deployment takes its values from the guest's build, never from its evidence."""
    rules = launch_policy.rules_digest()
    if platform in ("snp", SIMULATED_SNP_PLATFORM):
        report = parse_report(decode_snp_evidence(evidence).report)
        tcb = TcbVersion.decode(report.reported_tcb)
        snp = SnpReference(measurement=report.measurement, policy=report.policy, vmpl=report.vmpl,
                           min_tcb={name: int(getattr(tcb, name)) for name in SNP_TCB_FIELDS})
        if platform == "snp":
            return ReleaseReference("fixture", image, rules, snp=snp)
        return ReleaseReference("fixture", image, rules, simulated_snp=snp)
    body = parse_quote(evidence).body
    tdx = TdxReference(mrtd=body.mrtd, rtmrs=(body.rtmrs[0], body.rtmrs[1], body.rtmrs[2]),
                       min_tee_tcb_svn=body.tee_tcb_svn, td_attributes=body.td_attributes)
    if platform == "tdx":
        return ReleaseReference("fixture", image, rules, tdx=tdx)
    return ReleaseReference("fixture", image, rules, simulated=tdx)


def release_argv(directory: Path, *releases: ReleaseReference) -> list[str]:
    """Sign each release with one fresh key under ``directory``; the relying-party flags."""
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
