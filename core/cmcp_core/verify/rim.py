"""NVIDIA reference integrity manifests (RIMs): signed SWID tags holding a GPU's golden measurements.

A RIM (ISO 19770-2 SWID tag, TCG RIM information model) names a product and a version (driver
``550.90.07`` or VBIOS ``96.00.5e.00.01``) in ``Meta/@colloquialVersion`` and lists measurement
resources: ``index`` (0-based, the SPDM block index minus one), ``active``, ``size`` and the
alternatives ``Hash0..HashN`` (SHA-384 hex). An enveloped XML-DSig (ECDSA P-384 / SHA-384, C14N
1.1) signs the whole tag; its KeyInfo carries the signing chain.

Order of checks: the chain in KeyInfo to the pinned NVIDIA RIM root at the verification time (our
own code: :mod:`cmcp_core.verify.certchain`), then the XML signature with that leaf (``signxml``,
which refuses XML it cannot canonicalize, references other than the whole document and other
algorithms), then the golden values are read from the *signed* tree signxml returns, never from
the input, so nothing outside the signature can feed them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod, XMLVerifier
from signxml.exceptions import SignXMLException

from cmcp_core.errors import Code
from cmcp_core.verify.certchain import ChainCodes, pinned_root, verify_chain
from cmcp_core.verify.verdict import VerifyFailure

MAX_RIM_BYTES = 512 * 1024
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
MAX_ALTERNATIVES = 16
MAX_CHAIN = 8
# SHA-256 of the DER of cmcp_core/data/nvidia/rim_root.pem ("NVIDIA CoRIM signing Root CA"):
# the package data must still be the root NVIDIA publishes.
RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
RIM_CHAIN = ChainCodes(invalid=Code.GPU_RIM_CHAIN_INVALID, expired=Code.GPU_CERT_EXPIRED)


@cache
def pinned_rim_root() -> x509.Certificate:
    return pinned_root("cmcp_core.data.nvidia", "rim_root.pem", RIM_ROOT_SHA256, "NVIDIA RIM root")


@dataclass(frozen=True)
class GoldenMeasurement:
    index: int  # 0-based: the SPDM block index minus one
    size: int
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True)
class Rim:
    """A RIM whose signature and chain verified: what it is for and its active golden values."""

    product: str
    version: str
    measurements: dict[int, GoldenMeasurement]
    chain: tuple[x509.Certificate, ...]  # leaf first, ending at the root it verified to


def _parse(blob: bytes) -> etree._Element:
    if not isinstance(blob, bytes | bytearray) or len(blob) > MAX_RIM_BYTES:
        raise VerifyFailure(Code.GPU_RIM_INVALID, "RIM is not bytes or is too large")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        root = etree.fromstring(bytes(blob), parser=parser)
    except etree.XMLSyntaxError as exc:
        raise VerifyFailure(Code.GPU_RIM_INVALID, f"RIM is not XML: {exc}") from exc
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise VerifyFailure(Code.GPU_RIM_INVALID, f"RIM root element is {root.tag}, not a SWID tag")
    return root


def _key_info_chain(root: etree._Element) -> list[x509.Certificate]:
    nodes = root.findall(f"{{{DSIG_NS}}}Signature/{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/"
                         f"{{{DSIG_NS}}}X509Certificate")
    if not 0 < len(nodes) <= MAX_CHAIN:
        raise VerifyFailure(Code.GPU_RIM_INVALID, f"RIM signature carries {len(nodes)} certificates")
    try:
        ders = [base64.b64decode("".join((n.text or "").split()), validate=True) for n in nodes]
        return [x509.load_der_x509_certificate(der) for der in ders]
    except Exception as exc:  # binascii.Error, ValueError, InvalidVersion, ...
        raise VerifyFailure(Code.GPU_RIM_INVALID, f"RIM certificate does not parse: {exc}") from exc


def signing_chain(blob: bytes) -> list[x509.Certificate]:
    """The certificates a RIM's signature carries, leaf first; nothing about them verified yet."""
    return _key_info_chain(_parse(blob))


def _golden(signed: etree._Element) -> tuple[str, str, dict[int, GoldenMeasurement]]:
    meta = signed.find(f"{{{SWID_NS}}}Meta")
    if meta is None or not meta.get("colloquialVersion") or not meta.get("product"):
        raise VerifyFailure(Code.GPU_RIM_INVALID, "RIM Meta lacks product or colloquialVersion")
    out: dict[int, GoldenMeasurement] = {}
    for res in signed.iterfind(f"{{{SWID_NS}}}Payload/{{{SWID_NS}}}Resource"):
        if res.get("type") != "Measurement" or res.get("active") != "True":
            continue
        try:
            index, size = int(res.get("index", "")), int(res.get("size", ""))
            count = int(res.get("alternatives", ""))
            if not (0 <= index < 255 and 0 < size <= 64 and 0 < count <= MAX_ALTERNATIVES):
                raise ValueError("index, size or alternatives out of range")
            alts = tuple(bytes.fromhex(res.get(f"{{{SHA384_NS}}}Hash{i}", "")) for i in range(count))
        except ValueError as exc:
            raise VerifyFailure(Code.GPU_RIM_INVALID, f"RIM measurement is malformed: {exc}") from exc
        if index in out or any(len(a) != size for a in alts):
            raise VerifyFailure(Code.GPU_RIM_INVALID, f"RIM measurement {index} is repeated or mis-sized")
        out[index] = GoldenMeasurement(index, size, alts)
    if not out:
        raise VerifyFailure(Code.GPU_RIM_INVALID, "RIM has no active measurements")
    return str(meta.get("product")), str(meta.get("colloquialVersion")).lower(), out


def verify_rim(blob: bytes, now: int, *, root: x509.Certificate | None = None) -> Rim:
    """Verify a RIM's chain (to ``root``, by default the pinned NVIDIA RIM root) and signature."""
    doc = _parse(blob)
    chain = verify_chain(_key_info_chain(doc), root or pinned_rim_root(), now, RIM_CHAIN, "RIM signing chain")
    config = SignatureConfiguration(
        location="./",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=datetime.fromtimestamp(now, UTC),
    )
    try:
        result = XMLVerifier().verify(doc, x509_cert=chain[0].public_bytes(Encoding.PEM).decode(),
                                      expect_config=config)
    except (SignXMLException, ValueError, etree.Error) as exc:
        raise VerifyFailure(Code.GPU_RIM_BAD_SIGNATURE, f"RIM signature does not verify: {exc}") from exc
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None or signed.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise VerifyFailure(Code.GPU_RIM_BAD_SIGNATURE, "RIM signature does not cover the SWID tag")
    product, version, golden = _golden(signed)
    return Rim(product=product, version=version, measurements=golden, chain=tuple(chain))
