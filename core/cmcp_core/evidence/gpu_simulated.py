"""A simulated confidential GPU: the real SPDM 1.1 transcript layout and real signed RIMs, own roots.

It exists so that tests and development clusters run the *same* parser, nonce binding, RIM
signature and measurement checks as a Hopper GPU (:mod:`cmcp_core.verify.gpu` treats both alike
after the root). What makes it unmistakable for NVIDIA evidence:

* every certificate it issues (device and RIM chains) names the organisation ``SIMULATOR_ORG``,
  and its roots are generated in memory, so its chains never reach NVIDIA's pinned roots;
* the envelope says ``"simulated": true``; a verifier refuses it unless simulated evidence is
  allowed, and then reports ``software-only`` assurance.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import CanonicalizationMethod, DigestAlgorithm, SignatureMethod, XMLSigner

from cmcp_core.evidence.gpu import (
    ALL_MEASUREMENTS,
    DMTF_SPEC,
    GET_MEASUREMENTS,
    MEASUREMENTS,
    NONCE_LEN,
    NVDEC0_DISABLED,
    OPAQUE_CHIP_SKU,
    OPAQUE_DRIVER_VERSION,
    OPAQUE_NVDEC0_STATUS,
    OPAQUE_PROJECT,
    OPAQUE_PROJECT_SKU,
    OPAQUE_VBIOS_VERSION,
    SIGNATURE_REQUESTED,
    SPDM_VERSION_11,
    GpuEvidence,
)

SIMULATOR_ORG = "cMCP GPU simulator (not NVIDIA)"
SIMULATED_DRIVER_VERSION = "550.90.07"
SIMULATED_VBIOS = bytes([0x00, 0x9F, 0x00, 0x96, 0x01, 0x00, 0x00, 0x00])  # 96.00.9f.00.01
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
MEASUREMENT_COUNT = 64
DRIVER_INDICES = range(0, 32)  # 0-based indices the driver RIM covers; the VBIOS RIM has the rest
VALID_FROM = datetime(2024, 1, 1, tzinfo=UTC)
VALID_FOR = timedelta(days=3650)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATOR_ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID_FROM)
        .not_valid_after(VALID_FROM + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA384())


def simulated_measurements(seed: bytes = b"cmcp-simulated-gpu-v1") -> dict[int, bytes]:
    """The genuine simulated GPU's 64 measurements (SPDM block index, 1-based -> SHA-384 value)."""
    return {i: hashlib.sha384(seed + bytes([i])).digest() for i in range(1, MEASUREMENT_COUNT + 1)}


def _opaque(fields: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in fields)


class SimulatedGpu:
    """A software GPU: one P-384 attestation key under an in-memory root, and a RIM signer."""

    def __init__(self, measurements: dict[int, bytes] | None = None):
        self.measurements = dict(measurements or simulated_measurements())
        self._root_key = root_key = ec.generate_private_key(ec.SECP384R1())
        self._key = ec.generate_private_key(ec.SECP384R1())
        self.root = _cert("simulated GPU device root", root_key, None, root_key, ca=True)
        self.leaf = _cert("simulated GPU attestation key", self._key, self.root, root_key, ca=False)
        self._rim_root_key = rim_root_key = ec.generate_private_key(ec.SECP384R1())
        self._rim_key = ec.generate_private_key(ec.SECP384R1())
        self.rim_root = _cert("simulated RIM root", rim_root_key, None, rim_root_key, ca=True)
        self.rim_signer = _cert("simulated RIM signer", self._rim_key, self.rim_root, rim_root_key, ca=False)

    def report(self, nonce: bytes, *, measurements: dict[int, bytes] | None = None) -> bytes:
        """Request || signed response, as a Hopper GPU answers GET_MEASUREMENTS for ``nonce``."""
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"SPDM nonce must be {NONCE_LEN} bytes")
        values = self.measurements if measurements is None else measurements
        header = [SPDM_VERSION_11, GET_MEASUREMENTS, SIGNATURE_REQUESTED, ALL_MEASUREMENTS]
        request = bytes(header) + nonce + b"\x00"
        record = b"".join(
            struct.pack("<BBH", index, DMTF_SPEC, 3 + len(value)) + struct.pack("<BH", 1, len(value)) + value
            for index, value in sorted(values.items())
        )
        opaque = _opaque([
            (OPAQUE_DRIVER_VERSION, SIMULATED_DRIVER_VERSION.encode() + b"\x00"),
            (OPAQUE_VBIOS_VERSION, SIMULATED_VBIOS),
            (OPAQUE_CHIP_SKU, b"882\x00"),
            (OPAQUE_PROJECT, b"1010\x00"),
            (OPAQUE_PROJECT_SKU, b"0200\x00"),
            (OPAQUE_NVDEC0_STATUS, bytes([NVDEC0_DISABLED])),
        ])
        response = (
            bytes([SPDM_VERSION_11, MEASUREMENTS, 0, 0, len(values)])
            + len(record).to_bytes(3, "little") + record
            + hashlib.sha256(b"responder" + nonce).digest()
            + struct.pack("<H", len(opaque)) + opaque
        )
        signed = request + response
        r, s = decode_dss_signature(self._key.sign(signed, ec.ECDSA(hashes.SHA384())))
        return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")

    def evidence(
        self, nonce: bytes, *, measurements: dict[int, bytes] | None = None, ocsp: tuple[bytes, ...] = (),
        rims: tuple[bytes, ...] = (),
    ) -> bytes:
        """The envelope the enclave would send: report, chain (leaf first), stapled OCSP and RIMs,
        marked simulated."""
        return GpuEvidence(
            report=self.report(nonce, measurements=measurements),
            certs=(self.leaf.public_bytes(Encoding.DER), self.root.public_bytes(Encoding.DER)),
            ocsp=ocsp,
            simulated=True,
            rims=rims,
        ).encode()

    def rim(self, kind: str) -> bytes:
        """A signed RIM for the simulated driver (``driver``) or VBIOS (``vbios``), in NVIDIA's form."""
        if kind == "driver":
            version, indices = SIMULATED_DRIVER_VERSION, DRIVER_INDICES
        elif kind == "vbios":
            version, indices = "96.00.9F.00.01", range(DRIVER_INDICES.stop, MEASUREMENT_COUNT)
        else:
            raise ValueError("kind is driver or vbios")
        root = etree.Element(f"{{{SWID_NS}}}SoftwareIdentity", nsmap={None: SWID_NS, "ns2": SHA384_NS},
                             name="GH100", tagId=f"cmcp-simulated-{kind}", version="1.0")
        etree.SubElement(root, f"{{{SWID_NS}}}Meta", colloquialVersion=version, product="GH100")
        payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
        for index in indices:
            value = self.measurements.get(index + 1)
            etree.SubElement(payload, f"{{{SWID_NS}}}Resource", {
                "type": "Measurement", "index": str(index), "active": "True" if value else "False",
                "alternatives": "1", "size": "48", f"{{{SHA384_NS}}}Hash0": (value or bytes(48)).hex(),
            })
        signer = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA384,
            digest_algorithm=DigestAlgorithm.SHA384,
            c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
        )
        chain = [c.public_bytes(Encoding.PEM).decode() for c in (self.rim_signer, self.rim_root)]
        signed = signer.sign(root, key=self._rim_key, cert=chain)
        return bytes(etree.tostring(signed))

    def ocsp_responses(
        self, *, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD, produced: datetime = VALID_FROM,
        valid_for: timedelta = timedelta(days=7),
    ) -> tuple[bytes, ...]:
        """Stapled OCSP responses for the attestation key and the RIM signer, signed by their roots."""
        out = []
        for cert, issuer, key in ((self.leaf, self.root, self._root_key),
                                  (self.rim_signer, self.rim_root, self._rim_root_key)):
            builder = ocsp.OCSPResponseBuilder().add_response(
                cert=cert, issuer=issuer, algorithm=hashes.SHA384(), cert_status=status,
                this_update=produced, next_update=produced + valid_for,
                revocation_time=produced if status == ocsp.OCSPCertStatus.REVOKED else None,
                revocation_reason=None,
            ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
            out.append(builder.sign(key, hashes.SHA384()).public_bytes(Encoding.DER))
        return tuple(out)
