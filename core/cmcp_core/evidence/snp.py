"""AMD SEV-SNP attestation reports (ABI spec 56860, ``ATTESTATION_REPORT``): a strict decoder.

The report is exactly 1184 (0x4A0) bytes, little-endian. The VCEK/VLEK signs bytes
0x000-0x29F (:attr:`SnpReport.signed_bytes`) with ECDSA P-384/SHA-384; the signature at
0x2A0 holds R and S as 72-byte little-endian integers. Versions 2 to 5 share this layout
(v3 adds the CPUID family/model/stepping used to tell the product apart).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError

REPORT_LEN = 0x4A0
SIGNED_LEN = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION u64 split into SPLs; the byte positions differ between product generations."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, *, turin: bool = False) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:  # Turin: FMC, bootloader, TEE, SNP, reserved x3, microcode
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        # Milan/Genoa: bootloader, TEE, reserved x4, SNP, microcode
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])


@dataclass(frozen=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: int
    launch_tcb: int
    signature_r: int
    signature_s: int
    signed_bytes: bytes
    raw: bytes

    @property
    def policy_debug(self) -> bool:
        """Guest policy DEBUG: the host may debug (read) the guest, so nothing it says counts."""
        return bool(self.policy & POLICY_DEBUG)

    @property
    def signing_key(self) -> int:
        """0 = VCEK, 1 = VLEK, 7 = none (bits 4:2 of the flags word)."""
        return (self.flags >> 2) & 0x7

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.flags & 0x2)

    @property
    def product(self) -> str | None:
        """Product line from CPUID (report v3+); ``None`` when the report does not say."""
        fam, mod = self.cpuid_fam_id, self.cpuid_mod_id
        if fam is None or mod is None:
            return None
        if fam == 0x19 and mod <= 0x0F:
            return "milan"
        if fam == 0x19 and (0x10 <= mod <= 0x1F or 0xA0 <= mod <= 0xAF):
            return "genoa"
        if fam == 0x1A and mod <= 0x11:
            return "turin"
        return None


def parse_report(raw: bytes) -> SnpReport:
    """Decode the 1184-byte report; raise :class:`EvidenceError` on anything else."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "SNP report must be bytes")
    raw = bytes(raw)
    if len(raw) != REPORT_LEN:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, f"SNP report is {len(raw)} bytes, expected {REPORT_LEN}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, f"SNP report version {version} is not supported")
    vmpl, sig_algo, current_tcb, platform_info, flags = struct.unpack_from("<IIQQI", raw, 0x30)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise EvidenceError(Code.EVIDENCE_UNSUPPORTED, f"SNP signature algorithm {sig_algo} is not P-384")
    if not policy & POLICY_RESERVED_ONE:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "SNP guest policy bit 17 (must be one) is clear")
    if vmpl > 3:
        raise EvidenceError(Code.EVIDENCE_MALFORMED, f"VMPL {vmpl} is out of range")
    (reported_tcb,) = struct.unpack_from("<Q", raw, 0x180)
    fam = mod = step = None
    if version >= 3:
        fam, mod, step = raw[0x188], raw[0x189], raw[0x18A]
    (committed_tcb,) = struct.unpack_from("<Q", raw, 0x1E0)
    (launch_tcb,) = struct.unpack_from("<Q", raw, 0x1F0)
    r_le, s_le = raw[0x2A0:0x2E8], raw[0x2E8:0x330]
    if any(raw[0x330:REPORT_LEN]):
        raise EvidenceError(Code.EVIDENCE_MALFORMED, "SNP signature reserved bytes are not zero")
    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        flags=flags,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=reported_tcb,
        cpuid_fam_id=fam,
        cpuid_mod_id=mod,
        cpuid_step=step,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=committed_tcb,
        launch_tcb=launch_tcb,
        signature_r=int.from_bytes(r_le, "little"),
        signature_s=int.from_bytes(s_le, "little"),
        signed_bytes=raw[:SIGNED_LEN],
        raw=raw,
    )
