"""Binding checks: the evidence's measured config field and REPORT_DATA against what was claimed.

A hash cannot say *which* input was wrong, so the claimed values are compared field by field
against independent expectations first (the measured initdata names bundle, catalog and
mode; the caller may pin the bundle hash and the key); only then is REPORT_DATA compared
with ``binding.Binding(...).report_data()``. Once bundle, catalog, mode and key are all
pinned, a REPORT_DATA mismatch can only be the nonce; with the key unpinned it is
"nonce or key" and reported as ``BINDING_REPORT_DATA_MISMATCH``.
"""

from __future__ import annotations

import hmac

from cmcp_core import initdata as initdata_mod
from cmcp_core.binding import Binding
from cmcp_core.errors import Code
from cmcp_core.verify.verdict import VerifyFailure


def check_initdata(initdata: bytes, platform: str, measured: bytes) -> initdata_mod.Initdata:
    """MRCONFIGID / HOST_DATA must equal the digest of these exact initdata bytes; the parsed
    document (its cMCP entry already checked) for the checks that follow."""
    try:
        expected = initdata_mod.expected_measurement(initdata, platform)
        doc = initdata_mod.parse(initdata)
        doc.cmcp  # noqa: B018 - raises InitdataError for an unusable cMCP entry
    except initdata_mod.InitdataError as exc:
        raise VerifyFailure(Code.INITDATA_MISMATCH, f"initdata is unusable: {exc}") from exc
    if not hmac.compare_digest(expected, measured):
        field = "HOST_DATA" if platform in ("snp", "simulated-snp") else "MRCONFIGID"
        raise VerifyFailure(
            Code.INITDATA_MISMATCH,
            f"{field} {measured.hex()} is not the {platform} digest of the initdata ({expected.hex()})",
        )
    return doc


def check_claims(
    entry: initdata_mod.CmcpEntry,
    *,
    bundle_hash: str,
    catalog_hash: str,
    mode: str,
    expected_bundle_hash: str | None,
) -> None:
    """The enclave's claimed values must be the ones its measured initdata names."""
    if bundle_hash != entry.bundle_hash:
        raise VerifyFailure(
            Code.BINDING_BUNDLE_MISMATCH,
            f"claimed bundle {bundle_hash} but initdata names {entry.bundle_hash}",
        )
    if catalog_hash != entry.catalog_hash:
        raise VerifyFailure(
            Code.BINDING_CATALOG_MISMATCH,
            f"claimed catalog {catalog_hash} but initdata names {entry.catalog_hash}",
        )
    if mode != entry.enforcement_mode:
        raise VerifyFailure(
            Code.BINDING_MODE_MISMATCH, f"claimed mode {mode!r} but initdata names {entry.enforcement_mode!r}"
        )
    if expected_bundle_hash is not None and entry.bundle_hash != expected_bundle_hash:
        raise VerifyFailure(
            Code.ATTESTED_BUNDLE_UNEXPECTED,
            f"attested bundle {entry.bundle_hash}, expected {expected_bundle_hash}",
        )


def check_report_data(
    report_data: bytes,
    *,
    public_key: bytes,
    bundle_hash: str,
    catalog_hash: str,
    mode: str,
    nonce: bytes,
    claimed_report_data: bytes | None,
    expected_public_key: bytes | None,
) -> None:
    """REPORT_DATA must be the binding of (key, bundle, catalog, mode, nonce)."""
    if expected_public_key is not None and not hmac.compare_digest(public_key, expected_public_key):
        raise VerifyFailure(Code.BINDING_KEY_MISMATCH, "claimed enclave key is not the pinned key")
    if claimed_report_data is not None and not hmac.compare_digest(claimed_report_data, report_data):
        raise VerifyFailure(
            Code.BINDING_REPORT_DATA_MISMATCH,
            "the report data the enclave claims is not the one in the evidence",
        )
    want = Binding(
        public_key=public_key,
        bundle_hash=bundle_hash,
        catalog_hash=catalog_hash,
        enforcement_mode=mode,
        nonce=nonce,
    ).report_data()
    if hmac.compare_digest(want, report_data):
        return
    if expected_public_key is not None:
        raise VerifyFailure(
            Code.BINDING_NONCE_MISMATCH, "REPORT_DATA binds another nonce (stale or replayed evidence)"
        )
    raise VerifyFailure(
        Code.BINDING_REPORT_DATA_MISMATCH,
        "REPORT_DATA does not bind the claimed key with this nonce (replayed evidence or a substituted key)",
    )
