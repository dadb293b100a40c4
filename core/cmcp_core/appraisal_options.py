"""The appraisal settings every relying party takes, spelt once for flags and config files.

The operator, the guard and ``cmcpctl verify`` take them as flags, the gateway as keys of its
config file; all of them end in :func:`appraisal_policy`, which loads the release manifests
with the keys that must have signed them and refuses to go on without at least one. There is no
setting that accepts a guest on its configuration alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from cmcp_core.errors import CmcpError, Code
from cmcp_core.release import load_releases
from cmcp_core.verify.verdict import DEFAULT_TCB_STATUSES, AppraisalPolicy


def appraisal_policy(
    *,
    release_manifests: Iterable[str],
    release_keys: Iterable[str],
    allow_simulated: bool = False,
    collateral_dir: str | None = None,
    pccs_url: str | None = None,
    accepted_tcb_statuses: Iterable[str] = DEFAULT_TCB_STATUSES,
) -> AppraisalPolicy:
    """A policy with verified releases; ``CmcpError`` (``RELEASE_MANIFEST_INVALID`` or
    ``REFERENCE_VALUES_MISSING``) when a manifest is bad or none is given."""
    releases = load_releases(list(release_manifests), list(release_keys))
    if not releases:
        raise CmcpError(Code.REFERENCE_VALUES_MISSING,
                        "give at least one --release-manifest and the --release-key that signed it")
    return AppraisalPolicy(
        accepted_tcb_statuses=frozenset(accepted_tcb_statuses),
        allow_simulated=allow_simulated,
        releases=releases,
        collateral_dir=collateral_dir,
        pccs_url=pccs_url,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("appraisal")
    group.add_argument("--release-manifest", action="append", default=[], metavar="PATH",
                       help="signed enclave release manifest (repeatable; at least one)")
    group.add_argument("--release-key", action="append", default=[], metavar="PATH",
                       help="PEM public key that signs release manifests (repeatable; at least one)")
    group.add_argument("--allow-simulated", action="store_true",
                       help="accept software-only (simulated TEE) evidence: development only")
    group.add_argument("--tdx-collateral-dir", metavar="DIR",
                       help="TDX DCAP collateral cache: read first, filled from --pccs-url")
    group.add_argument("--pccs-url", metavar="URL",
                       help="PCCS to fetch TDX collateral from when the cache has none (network)")


def from_args(args: argparse.Namespace, parser: argparse.ArgumentParser, *,
              accepted_tcb_statuses: Iterable[str] = DEFAULT_TCB_STATUSES) -> AppraisalPolicy:
    """The policy :func:`add_arguments`'s flags describe; a bad setting is a usage error (exit 2)."""
    try:
        return appraisal_policy(
            release_manifests=args.release_manifest, release_keys=args.release_key,
            allow_simulated=args.allow_simulated, collateral_dir=args.tdx_collateral_dir,
            pccs_url=args.pccs_url, accepted_tcb_statuses=accepted_tcb_statuses,
        )
    except CmcpError as exc:
        parser.error(f"{exc.code.value}: {exc.detail}")


def from_mapping(doc: Mapping[str, Any]) -> AppraisalPolicy:
    """The same settings as config-file keys (``release: {manifests: [...], keys: [...]}``,
    ``allow_simulated``, ``tdx_collateral_dir``, ``pccs_url``)."""
    release = doc.get("release") or {}
    return appraisal_policy(
        release_manifests=[str(p) for p in release.get("manifests", ())],
        release_keys=[str(p) for p in release.get("keys", ())],
        allow_simulated=bool(doc.get("allow_simulated", False)),
        collateral_dir=doc.get("tdx_collateral_dir"),
        pccs_url=doc.get("pccs_url"),
    )
