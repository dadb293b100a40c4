"""TDX DCAP collateral in the serving path: a cache directory first, then an optional PCCS.

Hardware evidence is only as good as the collateral it is checked against (TCB info, QE
identity, CRLs), and the gateway, guard and operator appraise in the serving path, where a
fetch per attestation is neither fast nor available offline. Collateral is kept per FMSPC and
PCK CA in ``collateral_dir`` (``<fmspc>-<ca>.json``, the ``QuoteCollateralV3`` JSON dcap-qvl
reads); a deployment fills it ahead of time or lets the component fill it from ``pccs_url``.
Collateral that has expired is fetched again when a PCCS is configured; without one the
appraisal fails with ``COLLATERAL_EXPIRED`` rather than use stale TCB information.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.x509.oid import NameOID

from cmcp_core.errors import Code
from cmcp_core.evidence.tdx import TdxQuote
from cmcp_core.verify.verdict import AppraisalPolicy, VerifyFailure

log = logging.getLogger("cmcp.verify")

MAX_COLLATERAL_BYTES = 1024 * 1024
_CA_BY_ISSUER = {"Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}


def cache_key(quote: TdxQuote) -> str:
    """``<fmspc hex>-<platform|processor>``: collateral is per FMSPC and per issuing PCK CA."""
    pem = quote.signature_data.certification.pck_chain_pem
    if pem is None:
        raise VerifyFailure(Code.EVIDENCE_UNSUPPORTED, "quote carries no PCK certificate chain")
    text = pem.rstrip(b"\x00")
    try:
        fmspc = bytes(dcap_qvl.parse_pck_extension_from_pem(text).fmspc)
    except Exception as exc:  # dcap-qvl raises ValueError for a PCK leaf without SGX extensions
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID,
                            f"PCK certificate has no SGX extensions: {exc}") from exc
    try:
        leaf = x509.load_pem_x509_certificates(text)[0]
        issuer = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    except (ValueError, IndexError) as exc:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, f"PCK chain does not parse: {exc}") from exc
    ca = _CA_BY_ISSUER.get(str(issuer))
    if ca is None:
        raise VerifyFailure(Code.EVIDENCE_CHAIN_INVALID, "PCK certificate is not issued by an Intel PCK CA")
    return f"{fmspc.hex()}-{ca}"


def cached_collateral(quote: TdxQuote, directory: str) -> bytes | None:
    path = Path(directory) / f"{cache_key(quote)}.json"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_COLLATERAL_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VerifyFailure(Code.COLLATERAL_INVALID, f"collateral cache {path}: {exc.strerror}") from exc
    if len(raw) > MAX_COLLATERAL_BYTES:
        raise VerifyFailure(Code.COLLATERAL_INVALID, f"collateral cache {path} is too large")
    return raw


def store_collateral(quote: TdxQuote, directory: str, collateral: Any) -> None:
    """Write atomically, so a concurrent reader sees the old file or the new one, never half."""
    target = Path(directory) / f"{cache_key(quote)}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".collateral-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(collateral.to_json())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(pccs_url: str, raw_quote: bytes) -> Any:
    """Collateral from a PCCS (network). dcap-qvl's client is async; it runs on a thread of its own
    so this works both from plain code and from inside the gateway's or guard's event loop."""
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, dcap_qvl.get_collateral(pccs_url, raw_quote)).result()
    except Exception as exc:
        raise VerifyFailure(Code.COLLATERAL_INVALID, f"PCCS fetch from {pccs_url} failed: {exc}") from exc


def serving_collateral(quote: TdxQuote, policy: AppraisalPolicy, *, refetch: bool = False) -> Any:
    """The collateral to appraise ``quote`` with when the caller brought none.

    The cache wins unless ``refetch`` (the cached copy expired); a fetched copy is cached."""
    if policy.collateral_dir and not refetch:
        cached = cached_collateral(quote, policy.collateral_dir)
        if cached is not None:
            return cached
    if not policy.pccs_url:
        where = f"in {policy.collateral_dir} " if policy.collateral_dir else ""
        raise VerifyFailure(Code.COLLATERAL_INVALID if not refetch else Code.COLLATERAL_EXPIRED,
                            f"no {'fresh ' if refetch else ''}collateral {where}for {cache_key(quote)} "
                            "and no PCCS URL configured")
    fetched = fetch(policy.pccs_url, quote.raw)
    if policy.collateral_dir:
        try:
            store_collateral(quote, policy.collateral_dir, fetched)
        except OSError as exc:  # a read-only cache still serves this appraisal; the next one fetches again
            log.warning("cannot cache TDX collateral",
                        extra={"detail": f"{policy.collateral_dir}: {exc.strerror}"})
    return fetched
