"""A configfs-tsm directory with the kernel played by a thread: every entry that receives a
64-byte ``inblob`` gets ``provider``, ``auxblob`` and ``outblob``, so the enclave's real
``ConfigfsTsmProvider`` runs unchanged above it (the TEE device is what cannot run here)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cmcp_core.evidence.simulated import SimulatedQuoteSigner
from cmcp_core.evidence.simulated_snp import SIMULATED_SNP_MEASUREMENT, SimulatedReportSigner
from tests.paths import DATA

# A real SNP report (Azure, Milan) from ../shared/fixtures; the emulator patches REPORT_DATA and
# HOST_DATA into it. Its signature then no longer verifies, which the enclave never checks on
# its own report (the verifier does).
SNP_REPORT = (DATA / "snp" / "azure_snp_report.bin").read_bytes()
# A real Intel TDX quote; the emulator patches MRCONFIGID and REPORT_DATA into its body the same way.
TDX_QUOTE = (DATA / "tdx" / "tdx_quote").read_bytes()
TDX_MRCONFIGID_AT, TDX_REPORT_DATA_AT = 48 + 184, 48 + 520  # header, then the TD report body


@dataclass
class TsmEmulator:
    """Plays the kernel: answers every configfs-tsm entry that received an inblob."""

    root: Path
    platform: str  # tdx | snp
    measured: bytes  # MRCONFIGID (48) or HOST_DATA (32)
    provider_name: str | None = None
    simulator: bool = False  # sign with the simulator (its markers) instead of patching the vendor's evidence
    snp_measurement: bytes = SIMULATED_SNP_MEASUREMENT  # the simulated SNP guest's launch measurement

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.signer = SimulatedQuoteSigner()
        self.snp_signer = SimulatedReportSigner()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _answer(self, entry: Path) -> None:
        inblob = (entry / "inblob").read_bytes()
        if self.platform == "tdx" and self.simulator:
            out, aux = self.signer.quote(inblob, self.measured), b""
        elif self.platform == "tdx":
            quote = bytearray(TDX_QUOTE)
            quote[TDX_MRCONFIGID_AT:TDX_MRCONFIGID_AT + 48] = self.measured
            quote[TDX_REPORT_DATA_AT:TDX_REPORT_DATA_AT + 64] = inblob
            out, aux = bytes(quote), b""
        elif self.simulator:
            out = self.snp_signer.report(inblob, self.measured, measurement=self.snp_measurement)
            aux = self.snp_signer.cert_table
        else:
            out = bytearray(SNP_REPORT)
            out[0x50:0x90] = inblob
            out[0xC0:0xE0] = self.measured
            out, aux = bytes(out), b"certificate-table"
        name = self.provider_name or {"tdx": "tdx_guest", "snp": "sev_guest"}[self.platform]
        for fname, data in (("provider", name.encode() + b"\n"), ("auxblob", aux), ("outblob", out)):
            tmp = entry / f".{fname}.tmp"
            tmp.write_bytes(data)
            tmp.rename(entry / fname)

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            for entry in self.root.iterdir():
                inblob = entry / "inblob"
                # the enclave's write may still be in flight: answer only a complete 64-byte inblob
                if inblob.exists() and inblob.stat().st_size == 64 and not (entry / "outblob").exists():
                    self._answer(entry)


@contextmanager
def emulated_tsm(root: Path, platform: str, measured: bytes, **options: object) -> Iterator[TsmEmulator]:
    """A running :class:`TsmEmulator` on ``root`` (made if missing), stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    emu = TsmEmulator(root, platform, measured, **options)  # type: ignore[arg-type]
    emu.thread.start()
    try:
        yield emu
    finally:
        emu.stop.set()
        emu.thread.join()
