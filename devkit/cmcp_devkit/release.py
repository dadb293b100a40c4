"""A signed development release: the simulated guest's reference values under a throw-away key.

Every relying party refuses guests without a signed release manifest, in development too, so the
dev kit signs one for the genuine simulated guest (:class:`~cmcp_enclave.simulated.SimulatedGuest`)
and the dev image, with a key generated per stack. A launcher that boots another guest (other
MRTD/RTMRs) is then refused by the same checks as a forged guest on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmcp_core import launch_policy, release
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify.reference import ReleaseReference, TdxReference
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_enclave.simulated import SimulatedGuest

DEV_VERSION = "0.0.0-dev"


def simulated_reference(guest: SimulatedGuest | None = None) -> TdxReference:
    guest = guest or SimulatedGuest()
    return TdxReference(mrtd=guest.mrtd, rtmrs=guest.rtmrs)


def dev_release(image: str = TEST_IMAGE, guest: SimulatedGuest | None = None) -> ReleaseReference:
    """The release the dev kit's launchers start: the simulated guest, ``image``, today's rules."""
    return ReleaseReference(version=DEV_VERSION, image=image,
                            launch_policy_rules=launch_policy.rules_digest(),
                            simulated=simulated_reference(guest))


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
