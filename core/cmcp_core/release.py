"""Enclave release manifests: one signed statement per enclave version of what its guest measures.

A manifest is a DSSE envelope (the in-toto / Sigstore signing envelope, via
``securesystemslib``) around a JSON payload: per platform the launch measurements of the
exact Kata guest, minimum TCB, required attributes and VMPL, plus the enclave image digest and
the digest of the launch-policy rules the operator renders for it. Relying parties load
manifests only through :func:`load_releases`, which refuses any that no configured release
key signed; what they get back is plain :class:`~cmcp_core.verify.reference.ReleaseReference`
values for :class:`~cmcp_core.verify.verdict.AppraisalPolicy`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from cmcp_core.errors import CmcpError, Code
from cmcp_core.launch_policy import IMAGE_DIGEST_RE
from cmcp_core.verify.reference import SNP_TCB_FIELDS, ReleaseReference, SnpReference, TdxReference

PAYLOAD_TYPE = "application/vnd.cmcp.enclave-release+json"
API_VERSION = "cmcp.dev/v1alpha1"
KIND = "EnclaveRelease"
MAX_MANIFEST_BYTES = 64 * 1024
# A manifest's platform keys are evidence platforms; ``simulated-snp`` was added after the others,
# so a manifest without it (every older one) reads as before.
PLATFORMS = ("tdx", "snp", "simulated", "simulated-snp")


def _invalid(message: str) -> CmcpError:
    return CmcpError(Code.RELEASE_MANIFEST_INVALID, message)


def _hex(doc: Mapping[str, Any], key: str, size: int, where: str) -> bytes:
    value = doc.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise _invalid(f"{where}.{key} must be {size} bytes of hex")
    return raw


def _tdx_from(doc: Mapping[str, Any], where: str) -> TdxReference:
    return TdxReference(
        mrtd=_hex(doc, "mrtd", 48, where),
        rtmrs=(_hex(doc, "rtmr0", 48, where), _hex(doc, "rtmr1", 48, where), _hex(doc, "rtmr2", 48, where)),
        min_tee_tcb_svn=_hex(doc, "minTeeTcbSvn", 16, where),
        td_attributes=_hex(doc, "tdAttributes", 8, where),
    )


def _tdx_to(ref: TdxReference) -> dict[str, str]:
    out = {"mrtd": ref.mrtd.hex(), "minTeeTcbSvn": ref.min_tee_tcb_svn.hex(),
           "tdAttributes": ref.td_attributes.hex()}
    out.update({f"rtmr{i}": r.hex() for i, r in enumerate(ref.rtmrs)})
    return out


def _int(doc: Mapping[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid(f"{where}.{key} must be a non-negative integer")
    return value


def _snp_from(doc: Mapping[str, Any], where: str) -> SnpReference:
    min_tcb = doc.get("minTcb", {})
    if not isinstance(min_tcb, dict) or set(min_tcb) - set(SNP_TCB_FIELDS):
        raise _invalid(f"{where}.minTcb may name only {', '.join(SNP_TCB_FIELDS)}")
    return SnpReference(
        measurement=_hex(doc, "measurement", 48, where),
        policy=_int(doc, "policy", where),
        min_tcb={name: _int(min_tcb, name, f"{where}.minTcb") for name in min_tcb},
        vmpl=_int(doc, "vmpl", where),
    )


def _snp_to(ref: SnpReference) -> dict[str, Any]:
    return {"measurement": ref.measurement.hex(), "policy": ref.policy, "minTcb": dict(ref.min_tcb),
            "vmpl": ref.vmpl}


def to_payload(release: ReleaseReference) -> dict[str, Any]:
    """The JSON payload a manifest signs (``signer`` is not part of it: the envelope says who)."""
    platforms: dict[str, Any] = {}
    if release.tdx is not None:
        platforms["tdx"] = _tdx_to(release.tdx)
    if release.snp is not None:
        platforms["snp"] = _snp_to(release.snp)
    if release.simulated is not None:
        platforms["simulated"] = _tdx_to(release.simulated)
    if release.simulated_snp is not None:
        platforms["simulated-snp"] = _snp_to(release.simulated_snp)
    return {"apiVersion": API_VERSION, "kind": KIND, "version": release.version, "image": release.image,
            "launchPolicyRules": release.launch_policy_rules, "platforms": platforms}


def from_payload(doc: Any, signer: str = "") -> ReleaseReference:
    """Parse and check a payload; a coded error names the first bad field."""
    if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise _invalid(f"payload is not an {API_VERSION} {KIND}")
    version, image, rules = doc.get("version"), doc.get("image"), doc.get("launchPolicyRules")
    if not isinstance(version, str) or not version:
        raise _invalid("version must be a non-empty string")
    if not isinstance(image, str) or not IMAGE_DIGEST_RE.fullmatch(image):
        raise _invalid("image must be <name>@sha256:<64 lowercase hex>")
    if not isinstance(rules, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", rules):
        raise _invalid("launchPolicyRules must be sha256:<64 hex>")
    platforms = doc.get("platforms")
    if not isinstance(platforms, dict) or not platforms or set(platforms) - set(PLATFORMS):
        raise _invalid(f"platforms must name at least one of {', '.join(PLATFORMS)} and nothing else")
    for name, entry in platforms.items():
        if not isinstance(entry, dict):
            raise _invalid(f"platforms.{name} must be an object")
    return ReleaseReference(
        version=version, image=image, launch_policy_rules=rules, signer=signer,
        tdx=_tdx_from(platforms["tdx"], "platforms.tdx") if "tdx" in platforms else None,
        snp=_snp_from(platforms["snp"], "platforms.snp") if "snp" in platforms else None,
        simulated=(_tdx_from(platforms["simulated"], "platforms.simulated")
                   if "simulated" in platforms else None),
        simulated_snp=(_snp_from(platforms["simulated-snp"], "platforms.simulated-snp")
                       if "simulated-snp" in platforms else None),
    )


def release_key(public_key: PublicKeyTypes) -> Key:
    """The verifying key for a public key (Ed25519, ECDSA or RSA), with its DSSE key id."""
    try:
        return SSlibKey.from_crypto(public_key)
    except ValueError as exc:
        raise _invalid(f"unsupported release key: {exc}") from exc


def load_release_key(pem: bytes) -> Key:
    try:
        return release_key(load_pem_public_key(pem))
    except ValueError as exc:
        raise _invalid(f"release key is not a PEM public key: {exc}") from exc


def sign(release: ReleaseReference, private_key: PrivateKeyTypes) -> bytes:
    """A DSSE envelope (JSON bytes) over the release's payload, signed with ``private_key``."""
    payload = json.dumps(to_payload(release), sort_keys=True, separators=(",", ":")).encode("utf-8")
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(CryptoSigner(private_key))
    return json.dumps(envelope.to_dict(), indent=2, sort_keys=True).encode("utf-8") + b"\n"


def load_private_key(pem: bytes) -> PrivateKeyTypes:
    try:
        return load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise _invalid(f"signing key is not an unencrypted PEM private key: {exc}") from exc


def verify(manifest: bytes, keys: Iterable[Key]) -> ReleaseReference:
    """The release a manifest states, once a signature by one of ``keys`` verifies; else a coded error."""
    trusted = list(keys)
    if not trusted:
        raise _invalid("no release key is configured to verify manifests with")
    if len(manifest) > MAX_MANIFEST_BYTES:
        raise _invalid(f"manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        envelope = Envelope.from_dict(json.loads(manifest))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _invalid(f"manifest is not a DSSE envelope: {exc}") from exc
    if envelope.payload_type != PAYLOAD_TYPE:
        raise _invalid(f"payload type {envelope.payload_type!r} is not {PAYLOAD_TYPE!r}")
    try:
        accepted = envelope.verify(trusted, 1)
    except (VerificationError, ValueError) as exc:
        raise _invalid(f"no configured release key signed this manifest: {exc}") from exc
    try:
        doc = json.loads(envelope.payload)
    except ValueError as exc:
        raise _invalid(f"payload is not JSON: {exc}") from exc
    return from_payload(doc, signer=sorted(accepted)[0])


def load_releases(
    manifests: Iterable[str | Path], keys: Iterable[str | Path]
) -> tuple[ReleaseReference, ...]:
    """Every manifest, verified with the key files; start-up fails on the first bad one."""
    trusted = []
    for path in keys:
        try:
            trusted.append(load_release_key(Path(path).read_bytes()))
        except OSError as exc:
            raise _invalid(f"release key {path}: {exc.strerror}") from exc
    releases = []
    for path in manifests:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise _invalid(f"release manifest {path}: {exc.strerror}") from exc
        try:
            releases.append(verify(raw, trusted))
        except CmcpError as exc:
            raise _invalid(f"release manifest {path}: {exc.detail}") from exc
    return tuple(releases)
