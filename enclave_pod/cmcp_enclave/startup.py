"""The enclave's start-up checks, in the order docs/enclave.md ("Start-up") gives them.

Each check runs before the next so a refusal names the first thing wrong; the signing key is
generated last (by :class:`~cmcp_enclave.enclave.Enclave`), after every check passed, so no key
ever exists for a bundle or initdata the enclave would refuse.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core import initdata as initdata_mod
from cmcp_core.bundle import BundleError, load_bundle, verify_signature
from cmcp_core.errors import CmcpError, Code
from cmcp_core.validation import validate_bundle
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.sessions import EnclaveLimits
from cmcp_enclave.tee import TeeProvider


class StartupError(CmcpError):
    """A refusal to start; the process exits 3 with this code."""


def read_initdata(path: str | Path, *, annotation: bool = False) -> bytes:
    """The initdata TOML bytes: the file itself, or (``annotation``) decoded from a file holding
    the pod's ``cc_init_data`` annotation value, as a downward-API volume presents it in a Kata
    pod (its agent does not place the decoded document in the container). Bounded reads; the
    bytes are then re-hashed against a fresh report, so nothing here is trusted."""
    limit = (initdata_mod.MAX_ANNOTATION_CHARS if annotation else initdata_mod.MAX_INITDATA_BYTES) + 1
    with Path(path).open("rb") as fh:
        data = fh.read(limit)
    if len(data) >= limit:
        raise initdata_mod.InitdataError(f"{path} is over {limit - 1} bytes")
    return initdata_mod.decode_annotation(data.strip()) if annotation else data


def start(*, bundle_dir: str | Path, initdata_path: str | Path, provider: TeeProvider,
          limits: EnclaveLimits | None = None, operator_keys: list[Ed25519PublicKey] | None = None,
          bundle_signers: list[Ed25519PublicKey] | None = None,
          on_audit: Callable[[dict[str, Any]], None] | None = None,
          initdata_annotation: bool = False) -> Enclave:
    """Initdata vs a fresh report, bundle re-hash, signature, validation, then the key.

    ``bundle_signers``: when given, the manifest must carry a signature by one of them (the
    keys come from the pod command line, which the initdata agent policy pins).
    ``initdata_annotation``: ``initdata_path`` holds the annotation value (:func:`read_initdata`).
    """
    try:
        raw = read_initdata(initdata_path, annotation=initdata_annotation)
        parsed = initdata_mod.parse(raw)
        entry = parsed.cmcp
    except (OSError, initdata_mod.InitdataError) as exc:
        raise StartupError(Code.INITDATA_MISMATCH, f"initdata unusable: {exc}") from exc
    probe = hashlib.sha512(b"cmcp-startup-probe\x00" + secrets.token_bytes(32)).digest()
    try:
        report = provider.report(probe)
    except CmcpError as exc:
        raise StartupError(Code.TEE_PROVIDER_FAILED, exc.detail) from exc
    if report.report_data != probe:
        raise StartupError(Code.TEE_PROVIDER_FAILED, "the report does not carry the REPORT_DATA asked for")
    try:
        expected = initdata_mod.expected_measurement(raw, report.measurement_platform)
    except initdata_mod.InitdataError as exc:
        raise StartupError(Code.INITDATA_MISMATCH, str(exc)) from exc
    if not secrets.compare_digest(report.measured_config, expected):
        raise StartupError(Code.INITDATA_MISMATCH,
                           "initdata digest does not equal the measured config field of a fresh report")
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as exc:
        raise StartupError(Code.BUNDLE_INVALID, str(exc)) from exc
    for name, have, want in (("bundle_hash", bundle.bundle_hash, entry.bundle_hash),
                             ("catalog_hash", bundle.catalog_hash, entry.catalog_hash),
                             ("enforcement_mode", bundle.enforcement_mode, entry.enforcement_mode)):
        if have != want:
            raise StartupError(Code.BUNDLE_HASH_MISMATCH, f"{name} is {have}, initdata measured {want}")
    if bundle_signers and not verify_signature(bundle, bundle_signers):
        raise StartupError(Code.BUNDLE_INVALID, "bundle signature does not verify with a trusted signer")
    issues = validate_bundle(bundle)
    if issues:
        raise StartupError(Code.BUNDLE_INVALID, "; ".join(str(i) for i in issues[:5]))
    try:
        return Enclave(bundle=bundle, initdata_bytes=raw, provider=provider, startup_report=report,
                       limits=limits, operator_keys=operator_keys, on_audit=on_audit)
    except CmcpError as exc:
        raise StartupError(exc.code, exc.detail) from exc
