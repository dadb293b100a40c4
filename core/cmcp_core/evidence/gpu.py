"""NVIDIA GPU evidence: the SPDM 1.1 GET_MEASUREMENTS transcript a Hopper GPU signs, and the envelope.

A confidential GPU attests with one SPDM exchange (DMTF DSP0274 1.1): the verifier's
GET_MEASUREMENTS request (with a 32-byte nonce, all measurements, signature requested) and the
GPU's MEASUREMENTS response (measurement blocks, the nonce the GPU chose, NVIDIA's opaque data
and an ECDSA P-384 signature). The *report* is request || response, exactly as NVIDIA's driver
returns it; the signature covers every byte before it, so :attr:`GpuReport.signed_bytes` is the
report without its last 96 bytes.

Layouts (little-endian):

* request (37 bytes): version 0x11, code 0xE0, param1 (bit 0: signature requested), param2
  (0xFF: all measurements), nonce (32), slot id (1);
* response: version, code 0x60, param1, param2, NumberOfBlocks (1), MeasurementRecordLength (3),
  the record, nonce (32), OpaqueDataLength (2), opaque data, signature (96: r || s);
* a measurement block: index (1), MeasurementSpecification (1, bit 0 = DMTF), size (2), then
  DMTF value type (1), value size (2), value;
* NVIDIA's opaque data: fields of type (2), length (2), value; the verifier needs the driver
  version (3), VBIOS version (6), project (17), project SKU (18), chip SKU (15), NVDEC0 status (11)
  and the FWID (20) that the leaf certificate also carries.

The *envelope* is what the enclave sends: ``{"format": "cmcp-gpu-evidence-v1", "arch", "report",
"certs" (DER, leaf first), "ocsp" (stapled DER OCSP responses), "rims" (stapled signed RIMs, the
XML bytes: they carry their own signature to the pinned RIM root, so a record verifies offline),
"simulated"}`` with base64 bytes.
A *GPU evidence file* holds envelopes as ``{"gpuEvidence": [base64, ...]}``: the shape of the
field in an ``AttestResponse``'s (and ``CloseSessionResponse``'s) protobuf JSON, so one reader
(:func:`read_gpu_evidence_file`) serves an Attest response and a record's side file.
Parsers only decode and bound-check; trust decisions live in :mod:`cmcp_core.verify.gpu`.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

from cmcp_core.errors import Code
from cmcp_core.evidence import EvidenceError

SPDM_VERSION_11 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
ALL_MEASUREMENTS = 0xFF
SIGNATURE_REQUESTED = 0x01
NONCE_LEN = 32
REQUEST_LEN = 4 + NONCE_LEN + 1
SIGNATURE_LEN = 96  # ECDSA P-384 r || s
DMTF_SPEC = 0x01
MIN_REPORT_BYTES = REQUEST_LEN + 8 + NONCE_LEN + 2 + SIGNATURE_LEN
MAX_REPORT_BYTES = 64 * 1024
MAX_ENVELOPE_BYTES = 256 * 1024
MAX_CERTS = 8
MAX_OCSP = 16
MAX_RIMS = 4
ENVELOPE_FORMAT = "cmcp-gpu-evidence-v1"
ARCHES = ("hopper",)

OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_NVDEC0_STATUS = 11
OPAQUE_CHIP_SKU = 15
OPAQUE_PROJECT = 17
OPAQUE_PROJECT_SKU = 18
OPAQUE_FWID = 20
NVDEC0_DISABLED = 0x55


def _malformed(detail: str) -> EvidenceError:
    return EvidenceError(Code.GPU_EVIDENCE_MALFORMED, detail)


@dataclass(frozen=True)
class SpdmRequest:
    version: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int


@dataclass(frozen=True)
class GpuReport:
    """A decoded SPDM transcript. ``measurements`` maps the SPDM block index (1-based) to its value."""

    request: SpdmRequest
    measurements: dict[int, bytes]
    response_nonce: bytes
    opaque: dict[int, bytes]
    signature: bytes
    signed_bytes: bytes
    raw: bytes

    def _text(self, field_id: int) -> str:
        value = self.opaque.get(field_id)
        if value is None:
            raise _malformed(f"opaque data lacks field {field_id}")
        return value.split(b"\x00", 1)[0].decode("ascii", "replace")

    @property
    def driver_version(self) -> str:
        return self._text(OPAQUE_DRIVER_VERSION)

    @property
    def vbios_version(self) -> str:
        """``96.00.5e.00.01``: the 8-byte field read as NVIDIA's tools print it."""
        raw = self.opaque.get(OPAQUE_VBIOS_VERSION)
        if raw is None or len(raw) != 8:
            raise _malformed("opaque data lacks an 8-byte VBIOS version")
        b = raw
        return f"{b[3]:02x}.{b[2]:02x}.{b[1]:02x}.{b[0]:02x}.{b[4]:02x}"

    @property
    def project(self) -> str:
        return self._text(OPAQUE_PROJECT)

    @property
    def project_sku(self) -> str:
        return self._text(OPAQUE_PROJECT_SKU)

    @property
    def chip_sku(self) -> str:
        return self._text(OPAQUE_CHIP_SKU)

    def rim_ids(self) -> tuple[str, str]:
        """NVIDIA's ids of the driver and VBIOS RIMs this report needs (its RIM service's names),
        e.g. ``NV_GPU_DRIVER_GH100_545.00`` and ``NV_GPU_VBIOS_1010_0200_882_96005E0001``."""
        vbios = self.vbios_version.replace(".", "").upper()
        board = f"{self.project}_{self.project_sku.upper()}_{self.chip_sku.upper()}"
        return f"NV_GPU_DRIVER_GH100_{self.driver_version}", f"NV_GPU_VBIOS_{board}_{vbios}"

    @property
    def fwid(self) -> bytes | None:
        return self.opaque.get(OPAQUE_FWID)

    @property
    def nvdec0_disabled(self) -> bool:
        return self.opaque.get(OPAQUE_NVDEC0_STATUS) == bytes([NVDEC0_DISABLED])


def _opaque_fields(data: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise _malformed("opaque data ends inside a field header")
        kind, size = struct.unpack_from("<HH", data, pos)
        pos += 4
        if pos + size > len(data):
            raise _malformed(f"opaque field {kind} overruns the opaque data")
        if kind in fields:
            raise _malformed(f"opaque field {kind} appears twice")
        fields[kind] = data[pos : pos + size]
        pos += size
    return fields


def _measurement_record(record: bytes, count: int) -> dict[int, bytes]:
    blocks: dict[int, bytes] = {}
    pos = 0
    for _ in range(count):
        if pos + 4 > len(record):
            raise _malformed("measurement record ends inside a block header")
        index, spec, size = struct.unpack_from("<BBH", record, pos)
        pos += 4
        if spec != DMTF_SPEC or size < 3 or pos + size > len(record):
            raise _malformed(f"measurement block {index} is not a DMTF block within the record")
        value_size = struct.unpack_from("<H", record, pos + 1)[0]
        if value_size != size - 3:
            raise _malformed(f"measurement block {index} value size disagrees with its block size")
        if index in blocks or index == 0:
            raise _malformed(f"measurement block index {index} is repeated or zero")
        blocks[index] = record[pos + 3 : pos + size]
        pos += size
    if pos != len(record):
        raise _malformed("measurement record holds bytes after its last block")
    return blocks


def parse_gpu_report(raw: bytes) -> GpuReport:
    """Decode request || response; raise :class:`EvidenceError` (GPU_EVIDENCE_MALFORMED) otherwise."""
    if not isinstance(raw, bytes | bytearray) or not MIN_REPORT_BYTES <= len(raw) <= MAX_REPORT_BYTES:
        raise _malformed("GPU report has an impossible size")
    raw = bytes(raw)
    version, code, param1, param2 = raw[0], raw[1], raw[2], raw[3]
    if version != SPDM_VERSION_11 or code != GET_MEASUREMENTS:
        raise _malformed(f"request is not an SPDM 1.1 GET_MEASUREMENTS ({version:#x}, {code:#x})")
    if not param1 & SIGNATURE_REQUESTED or param2 != ALL_MEASUREMENTS:
        raise _malformed("request does not ask for all measurements, signed")
    request = SpdmRequest(version, param1, param2, raw[4 : 4 + NONCE_LEN], raw[4 + NONCE_LEN])
    resp = raw[REQUEST_LEN:]
    if resp[0] != version or resp[1] != MEASUREMENTS:
        raise _malformed("response is not an SPDM 1.1 MEASUREMENTS message")
    count = resp[4]
    record_len = int.from_bytes(resp[5:8], "little")
    pos = 8 + record_len
    if count == 0 or pos + NONCE_LEN + 2 > len(resp):
        raise _malformed("measurement record is empty or overruns the response")
    measurements = _measurement_record(resp[8:pos], count)
    response_nonce = resp[pos : pos + NONCE_LEN]
    pos += NONCE_LEN
    (opaque_len,) = struct.unpack_from("<H", resp, pos)
    pos += 2
    if pos + opaque_len + SIGNATURE_LEN != len(resp):
        raise _malformed("opaque data and signature do not end the response exactly")
    opaque = _opaque_fields(resp[pos : pos + opaque_len])
    return GpuReport(
        request=request,
        measurements=measurements,
        response_nonce=response_nonce,
        opaque=opaque,
        signature=raw[-SIGNATURE_LEN:],
        signed_bytes=raw[:-SIGNATURE_LEN],
        raw=raw,
    )


@dataclass(frozen=True)
class GpuEvidence:
    """What the enclave sends for one GPU: the report, its chain (DER, leaf first), stapled OCSP."""

    report: bytes
    certs: tuple[bytes, ...]
    ocsp: tuple[bytes, ...] = ()
    arch: str = "hopper"
    simulated: bool = False
    rims: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode("ascii")

        return json.dumps({
            "format": ENVELOPE_FORMAT,
            "arch": self.arch,
            "report": b64(self.report),
            "certs": [b64(c) for c in self.certs],
            "ocsp": [b64(o) for o in self.ocsp],
            "rims": [b64(r) for r in self.rims],
            "simulated": self.simulated,
        }, sort_keys=True).encode()


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _malformed(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"{what} is not base64: {exc}") from exc


def decode_gpu_evidence(blob: bytes) -> GpuEvidence:
    """Decode and bound-check the envelope; nothing in it is trusted yet."""
    if not isinstance(blob, bytes | bytearray) or len(blob) > MAX_ENVELOPE_BYTES:
        raise _malformed("GPU evidence is not bytes or is too large")
    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _malformed(f"GPU evidence is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != ENVELOPE_FORMAT:
        raise _malformed(f"GPU evidence is not {ENVELOPE_FORMAT}")
    arch, simulated = doc.get("arch"), doc.get("simulated", False)
    certs, ocsp, rims = doc.get("certs"), doc.get("ocsp", []), doc.get("rims", [])
    if arch not in ARCHES or not isinstance(simulated, bool):
        raise _malformed(f"GPU architecture {arch!r} or the simulated flag is not supported")
    if not isinstance(certs, list) or not 1 <= len(certs) <= MAX_CERTS:
        raise _malformed("GPU evidence needs 1..8 certificates")
    if not isinstance(ocsp, list) or len(ocsp) > MAX_OCSP:
        raise _malformed("GPU evidence carries too many OCSP responses")
    if not isinstance(rims, list) or len(rims) > MAX_RIMS:
        raise _malformed("GPU evidence carries too many RIMs")
    return GpuEvidence(
        report=_b64(doc.get("report"), "report"),
        certs=tuple(_b64(c, "certificate") for c in certs),
        ocsp=tuple(_b64(o, "OCSP response") for o in ocsp),
        rims=tuple(_b64(r, "RIM") for r in rims),
        arch=arch,
        simulated=simulated,
    )


def report_from_hex(text: str) -> bytes:
    """NVIDIA's tools write the report as one hex line (the samples, ``nvidia-smi conf-compute``)."""
    try:
        return bytes.fromhex(text.strip())
    except ValueError as exc:
        raise _malformed(f"GPU report is not hex: {exc}") from exc


GPU_EVIDENCE_FIELD = "gpuEvidence"  # protobuf's JSON name of gpu_evidence
GPU_EVIDENCE_SUFFIX = ".gpu-evidence.json"  # <session id><suffix>, beside <session id>.json
MAX_GPU_EVIDENCE_FILE_BYTES = 16 * MAX_ENVELOPE_BYTES


def gpu_evidence_items(envelopes: Any) -> list[str]:
    """The envelopes as ``gpuEvidence`` holds them (base64), in a file or in a ``DELETE`` answer."""
    return [base64.b64encode(bytes(e)).decode("ascii") for e in envelopes]


def gpu_evidence_file(envelopes: Any) -> bytes:
    """The side file the gateway writes beside a record: ``{"gpuEvidence": [base64, ...]}``."""
    return json.dumps({GPU_EVIDENCE_FIELD: gpu_evidence_items(envelopes)}, indent=2).encode() + b"\n"


def read_gpu_evidence_file(raw: bytes) -> tuple[bytes, ...]:
    """The envelopes of a GPU evidence file or of an ``AttestResponse`` JSON (``gpuEvidence``;
    base64 or base64url, as protobuf's JSON mapping accepts). Envelopes are not decoded here."""
    if len(raw) > MAX_GPU_EVIDENCE_FILE_BYTES:
        raise _malformed("GPU evidence file is too large")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _malformed(f"GPU evidence file is not JSON: {exc}") from exc
    items = doc.get(GPU_EVIDENCE_FIELD, []) if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise _malformed(f"GPU evidence file needs {GPU_EVIDENCE_FIELD!r}: a list of base64 strings")
    out = []
    for index, item in enumerate(items):
        text = item.replace("-", "+").replace("_", "/")
        out.append(_b64(text + "=" * (-len(text) % 4), f"GPU evidence {index}"))
    return tuple(out)
