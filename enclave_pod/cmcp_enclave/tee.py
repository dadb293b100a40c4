"""TEE providers behind one interface: produce evidence for 64 bytes of REPORT_DATA.

Every provider returns the platform name, the evidence bytes, provider-specific aux bytes and
the *measured config field* decoded from that very report (TDX ``MRCONFIGID`` / SNP
``HOST_DATA``), so the start-up check always compares initdata against a fresh report rather
than against anything the host could have cached.

* ``simulated``: TDX v4 quote signed by an in-memory simulator key; the measured registers come
  from the launcher (``CMCP_SIM_MRCONFIGID``, ``CMCP_SIM_MRTD``, ``CMCP_SIM_RTMR0-2``), see
  :mod:`cmcp_enclave.simulated`.
* ``tdx`` / ``snp``: Linux configfs-tsm at a configurable root (tests point it at a directory
  served by an emulator). A quote carrying the simulator's markers (the dev kit's confidential-node
  stand-in serves them at the same path) is labelled ``simulated`` rather than ``tdx``, and a
  simulated SNP report ``simulated-snp`` rather than ``snp``, so a verifier appraises it as
  software-only evidence, never as hardware.
* ``coco-aa``: the CoCo attestation agent's HTTP evidence endpoint (TDX evidence form).

A GPU beside the enclave answers through :mod:`cmcp_enclave.gpu`, which wraps a provider here so
that each :class:`Report` also carries ``gpu_evidence`` (one envelope per GPU).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from cmcp_core.digest import b64url
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence import EvidenceError
from cmcp_core.evidence.simulated import SimulatedQuoteSigner, is_simulated
from cmcp_core.evidence.simulated_snp import SIMULATED_SNP_PLATFORM, is_simulated_report
from cmcp_core.evidence.snp import parse_report
from cmcp_core.evidence.tdx import parse_quote
from cmcp_enclave.simulated import ENV_MRCONFIGID, SimulatedGuest, guest_from_env, register

REPORT_DATA_LEN = 64
DEFAULT_TSM_ROOT = "/sys/kernel/config/tsm/report"
DEFAULT_AA_URL = "http://127.0.0.1:8006"
TSM_PROVIDERS = {"tdx": "tdx_guest", "snp": "sev_guest"}
MAX_EVIDENCE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Report:
    platform: str  # tdx | snp | simulated | simulated-snp | coco-aa
    evidence: bytes
    aux: bytes
    measured_config: bytes  # MRCONFIGID (48) or HOST_DATA (32) read back from this report
    report_data: bytes  # REPORT_DATA read back from this report
    gpu_evidence: tuple[bytes, ...] = ()  # cmcp-gpu-evidence-v1 envelopes, nonce gpu_nonce(report_data)

    @property
    def measurement_platform(self) -> str:
        """The platform whose initdata rule applies (``coco-aa`` here carries TDX evidence)."""
        return "tdx" if self.platform == "coco-aa" else self.platform


class TeeProvider(Protocol):
    name: str

    def report(self, report_data: bytes) -> Report: ...


def _fail(detail: str) -> CmcpError:
    return CmcpError(Code.TEE_PROVIDER_FAILED, detail)


def _check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_LEN:
        raise _fail(f"report data must be {REPORT_DATA_LEN} bytes")


class SimulatedProvider:
    """Software TEE: real TDX v4 layout, simulator-signed; ``runtime.platform`` software-only."""

    name = "simulated"

    def __init__(self, mrconfigid_hex: str | None = None, guest: SimulatedGuest | None = None):
        """Registers from the launcher's environment, or (in-process callers) given directly."""
        env = dict(os.environ)
        if mrconfigid_hex is not None:
            env[ENV_MRCONFIGID] = mrconfigid_hex
        try:
            self._mrconfigid = register(env, ENV_MRCONFIGID)
            self._guest = guest or (SimulatedGuest() if mrconfigid_hex is not None else guest_from_env(env))
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        self._signer = SimulatedQuoteSigner()

    def report(self, report_data: bytes) -> Report:
        _check_report_data(report_data)
        raw = self._signer.quote(report_data, self._mrconfigid, mrtd=self._guest.mrtd,
                                 rtmrs=(*self._guest.rtmrs, bytes(48)))
        return _tdx_report("simulated", raw, b"")


def _tdx_report(platform: str, raw: bytes, aux: bytes) -> Report:
    try:
        quote = parse_quote(raw)
    except EvidenceError as exc:
        raise _fail(f"{platform} quote does not parse: {exc.detail}") from exc
    if platform == "tdx" and is_simulated(quote):
        platform = "simulated"  # the quote says what signed it; the label follows the quote
    return Report(platform=platform, evidence=raw, aux=aux, measured_config=quote.body.mrconfigid,
                  report_data=quote.body.report_data)


class ConfigfsTsmProvider:
    """configfs-tsm: make an entry, write ``inblob``, read ``outblob`` (+ ``auxblob`` on SNP)."""

    def __init__(self, platform: str, root: str | None = None, timeout_s: float = 10.0):
        if platform not in TSM_PROVIDERS:
            raise _fail(f"configfs-tsm has no platform {platform!r}")
        self.name = platform
        self._root = Path(root or os.environ.get("CMCP_TSM_ROOT", DEFAULT_TSM_ROOT))
        self._timeout = timeout_s
        if not self._root.is_dir():
            raise _fail(f"configfs-tsm root {self._root} does not exist")

    def report(self, report_data: bytes) -> Report:
        _check_report_data(report_data)
        entry = self._root / f"cmcp-{secrets.token_hex(8)}"
        try:
            entry.mkdir()
            (entry / "inblob").write_bytes(report_data)
            provider = self._read(entry / "provider").decode("ascii", "replace").strip()
            if provider != TSM_PROVIDERS[self.name]:
                raise _fail(f"configfs-tsm provider is {provider!r}, expected {TSM_PROVIDERS[self.name]!r}")
            outblob = self._read(entry / "outblob")
            aux = b""
            if self.name == "snp" and (entry / "auxblob").exists():
                aux = self._read(entry / "auxblob")
        except OSError as exc:
            raise _fail(f"configfs-tsm: {exc}") from exc
        finally:
            # a real configfs removes the entry's files with it; a leftover entry is harmless
            with contextlib.suppress(OSError):
                entry.rmdir()
        if self.name == "tdx":
            return _tdx_report("tdx", outblob, aux)

        try:
            snp = parse_report(outblob)
        except EvidenceError as exc:
            raise _fail(f"SNP report does not parse: {exc.detail}") from exc
        # the report says what signed it; the label follows the report (as for a TDX quote)
        platform = SIMULATED_SNP_PLATFORM if is_simulated_report(snp) else "snp"
        return Report(platform=platform, evidence=outblob, aux=aux, measured_config=snp.host_data,
                      report_data=snp.report_data)

    def _read(self, path: Path) -> bytes:
        """Read an attribute; configfs produces ``outblob`` synchronously, an emulator may lag."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b""
            if data:
                if len(data) > MAX_EVIDENCE_BYTES:
                    raise _fail(f"{path.name} exceeds {MAX_EVIDENCE_BYTES} bytes")
                return data
            if time.monotonic() > deadline:
                raise _fail(f"configfs-tsm gave no {path.name}")
            time.sleep(0.01)


def aa_runtime_data(report_data: bytes) -> str:
    """What we hand the attestation agent: base64url of SHA-256 of our 64-byte binding.

    The AA places the ``runtime_data`` string's bytes (at most 64) zero-padded into the hardware
    REPORT_DATA, so the full binding does not fit; its digest does (43 ASCII bytes).
    """

    return b64url(hashlib.sha256(report_data).digest())


def aa_report_data(report_data: bytes) -> bytes:
    """The hardware REPORT_DATA an AA-produced report carries for our ``report_data``."""
    return aa_runtime_data(report_data).encode("ascii").ljust(REPORT_DATA_LEN, b"\x00")


class CocoAaProvider:
    """CoCo attestation agent: ``GET /aa/evidence?runtime_data=<aa_runtime_data(REPORT_DATA)>``.

    The quote's REPORT_DATA is then :func:`aa_report_data` of our binding, checked here; the
    returned :class:`Report` carries our binding as ``report_data`` once that check passed. A
    verifier must apply the same rule (experimental: the cMCP verifier does not yet).
    Only the TDX evidence form (``{"quote": base64}``) is decoded; anything else fails closed.
    """

    name = "coco-aa"

    def __init__(self, url: str | None = None, timeout_s: float = 10.0):
        self._url = (url or os.environ.get("CMCP_AA_URL", DEFAULT_AA_URL)).rstrip("/")
        self._timeout = timeout_s

    def report(self, report_data: bytes) -> Report:
        _check_report_data(report_data)
        try:
            resp = httpx.get(f"{self._url}/aa/evidence",
                             params={"runtime_data": aa_runtime_data(report_data)}, timeout=self._timeout)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise _fail(f"attestation agent: {exc}") from exc
        body = resp.content
        if len(body) > MAX_EVIDENCE_BYTES:
            raise _fail("attestation agent evidence too large")
        try:
            doc = json.loads(body)
            quote = base64.b64decode(doc["quote"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise _fail(f"attestation agent evidence is not TDX JSON evidence: {exc}") from exc
        parsed = _tdx_report("coco-aa", quote, b"")
        if parsed.report_data != aa_report_data(report_data):
            raise _fail("attestation agent evidence does not carry our runtime data")
        return Report(platform="coco-aa", evidence=body, aux=b"", measured_config=parsed.measured_config,
                      report_data=report_data)


def make_provider(tee: str, *, tsm_root: str | None = None, aa_url: str | None = None) -> TeeProvider:
    """Build the provider for ``--tee``; ``CmcpError(TEE_PROVIDER_FAILED)`` when unusable."""
    if tee == "simulated":
        return SimulatedProvider()
    if tee in TSM_PROVIDERS:
        return ConfigfsTsmProvider(tee, tsm_root)
    if tee == "coco-aa":
        return CocoAaProvider(aa_url)
    raise _fail(f"unknown TEE provider {tee!r}")
