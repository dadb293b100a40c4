"""Reference values: what one enclave release's guest must measure, and the check against them.

The measured initdata proves *which configuration* a guest was given; only the launch
measurements prove *which software* reads it. A host that boots its own firmware, kernel or
Kata agent with the genuine initdata passes every initdata check, so relying parties accept a
guest only when its launch measurements, TCB, attributes and the image and launch policy its
initdata pins all equal one release's reference values. The values come from a signed
release manifest (:mod:`cmcp_core.release`); this module is the proto- and signature-free
comparison, so the enclave image never needs the signing library.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cmcp_core import launch_policy
from cmcp_core.errors import CmcpError, Code
from cmcp_core.initdata import POLICY_KEY, Initdata

TDX_RTMRS = 3  # RTMR0-2: firmware, kernel + command line, initrd; RTMR3 is extended at run time
SNP_TCB_FIELDS = ("bootloader", "tee", "snp", "microcode")


@dataclass(frozen=True)
class TdxReference:
    """A Kata TDX guest (and the simulated TEE, which speaks the same quote layout)."""

    mrtd: bytes
    rtmrs: tuple[bytes, bytes, bytes]
    min_tee_tcb_svn: bytes = bytes(16)  # each SVN byte must be at least this
    td_attributes: bytes = bytes(8)  # exact: DEBUG and every other attribute bit as released


@dataclass(frozen=True)
class SnpReference:
    """A Kata SEV-SNP guest (and the simulated SNP guest, which speaks the same report layout)."""

    measurement: bytes
    policy: int  # exact guest policy (debug, SMT, migration agent, ABI) as released
    min_tcb: Mapping[str, int] = field(default_factory=dict)  # SNP_TCB_FIELDS -> minimum SVN
    vmpl: int = 0


@dataclass(frozen=True)
class ReleaseReference:
    """One verified enclave release: per platform its launch values, and what its initdata pins."""

    version: str
    image: str  # the enclave image, name@sha256:...
    launch_policy_rules: str  # sha256:... of the launch policy's fixed rules (data differs per pod)
    tdx: TdxReference | None = None
    snp: SnpReference | None = None
    simulated: TdxReference | None = None  # the simulated TDX guest (evidence platform ``simulated``)
    signer: str = ""  # the key id that signed the manifest
    simulated_snp: SnpReference | None = None  # the simulated SNP guest (``simulated-snp``)

    def for_platform(self, platform: str) -> TdxReference | SnpReference | None:
        return {"tdx": self.tdx, "snp": self.snp, "simulated": self.simulated,
                "simulated-snp": self.simulated_snp}.get(platform)


@dataclass(frozen=True)
class TdxLaunch:
    """The launch-time fields of a verified TDX (or simulated) quote."""

    mrtd: bytes
    rtmrs: Sequence[bytes]
    tee_tcb_svn: bytes
    td_attributes: bytes


@dataclass(frozen=True)
class SnpLaunch:
    measurement: bytes
    policy: int
    tcb: Mapping[str, int]
    vmpl: int


def _mismatch(what: str) -> CmcpError:
    return CmcpError(Code.REFERENCE_VALUE_MISMATCH, what)


def _check_tdx(ref: TdxReference, got: TdxLaunch) -> None:
    if not hmac.compare_digest(ref.mrtd, got.mrtd):
        raise _mismatch("MRTD differs from the release's (another TD firmware)")
    for index, want in enumerate(ref.rtmrs):
        if not hmac.compare_digest(want, got.rtmrs[index]):
            raise _mismatch(f"RTMR{index} differs from the release's (another guest boot chain)")
    if any(have < need for have, need in zip(got.tee_tcb_svn, ref.min_tee_tcb_svn, strict=True)):
        raise CmcpError(Code.TCB_MISMATCH, "TEE_TCB_SVN is below the release's minimum")
    if got.td_attributes != ref.td_attributes:
        raise _mismatch(f"TD attributes {got.td_attributes.hex()} are not the release's "
                        f"{ref.td_attributes.hex()}")


def _check_snp(ref: SnpReference, got: SnpLaunch) -> None:
    if not hmac.compare_digest(ref.measurement, got.measurement):
        raise _mismatch("MEASUREMENT differs from the release's (another guest firmware or kernel)")
    if got.policy != ref.policy:
        raise _mismatch(f"guest policy {got.policy:#x} is not the release's {ref.policy:#x}")
    if got.vmpl != ref.vmpl:
        raise _mismatch(f"report is from VMPL {got.vmpl}, the release requires VMPL {ref.vmpl}")
    for name, minimum in ref.min_tcb.items():
        if got.tcb.get(name, -1) < minimum:
            raise CmcpError(Code.TCB_MISMATCH, f"reported TCB {name} is below the release's minimum "
                                               f"{minimum}")


def _check_launch(platform: str, ref: TdxReference | SnpReference, got: TdxLaunch | SnpLaunch) -> None:
    if isinstance(ref, SnpReference) and isinstance(got, SnpLaunch):
        _check_snp(ref, got)
    elif isinstance(ref, TdxReference) and isinstance(got, TdxLaunch):
        _check_tdx(ref, got)
    else:
        raise _mismatch(f"the release's {platform} values do not fit this evidence")


def _check_pins(release: ReleaseReference, doc: Initdata) -> None:
    """The initdata must pin the release's image, under the release's launch-policy rules."""
    entry = doc.cmcp
    if entry.image != release.image:
        raise _mismatch(f"initdata pins image {entry.image!r}, "
                        f"release {release.version} is {release.image!r}")
    policy = doc.data.get(POLICY_KEY, "")
    try:
        rules, expected = launch_policy.split(policy)
    except launch_policy.LaunchPolicyError as exc:
        raise _mismatch(f"launch policy is not one cMCP renders: {exc}") from exc
    if launch_policy.digest(rules) != release.launch_policy_rules:
        raise _mismatch(f"launch policy rules are not release {release.version}'s")
    if launch_policy.digest(policy) != entry.launch_policy_digest:
        raise _mismatch("the cMCP entry names another launch policy than the initdata carries")
    if expected.get("image") != release.image:
        raise _mismatch("the launch policy admits another image than the release's")


def match_release(
    platform: str,
    launch: TdxLaunch | SnpLaunch,
    doc: Initdata | None,
    releases: Sequence[ReleaseReference],
) -> ReleaseReference:
    """The release this guest is, or a coded failure naming why the closest one was refused.

    ``doc`` is the measured initdata; ``None`` for bare evidence, when only the launch
    values can be compared (an auditor's "genuine TEE running release X", never "running bundle Y").
    """
    if not releases:
        raise CmcpError(Code.REFERENCE_VALUES_MISSING,
                            "no signed release manifest is configured: every guest is refused")
    candidates = [(r, ref) for r in releases if (ref := r.for_platform(platform)) is not None]
    if not candidates:
        raise _mismatch(f"no configured release has {platform} reference values")
    first: CmcpError | None = None
    for release, ref in candidates:
        try:
            _check_launch(platform, ref, launch)
            if doc is not None:
                _check_pins(release, doc)
        except CmcpError as exc:
            first = first or exc
            continue
        return release
    assert first is not None  # candidates is not empty
    raise first
