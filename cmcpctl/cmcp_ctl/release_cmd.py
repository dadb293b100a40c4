"""``cmcpctl release keygen|manifest|verify``: sign and check enclave release manifests.

A manifest states what one enclave release's guest measures (per platform), the enclave image
by digest and the launch-policy rules the operator renders for it (:mod:`cmcp_core.release`).
The operator, gateway, guard and ``cmcpctl verify`` refuse every guest that matches no manifest
signed by a key they were configured with. Exit codes: 0 ok, 1 the manifest does not verify,
2 usage (bad flags, unreadable files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from cmcp_core import launch_policy, release
from cmcp_core.errors import CmcpError
from cmcp_core.evidence.simulated import SIMULATED_MRTD, SIMULATED_RTMRS
from cmcp_core.evidence.simulated_snp import SIMULATED_SNP_MEASUREMENT, SIMULATED_SNP_POLICY
from cmcp_core.verify.reference import SNP_TCB_FIELDS, ReleaseReference, SnpReference, TdxReference
from cmcp_ctl.usage import UsageError, exit_2_on_usage_error


def _hex(value: str, name: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError as exc:
        raise UsageError(f"{name} must be hex") from exc
    if len(raw) != size:
        raise UsageError(f"{name} must be {size} bytes ({size * 2} hex digits), got {len(raw)}")
    return raw


def _tdx(args: argparse.Namespace) -> TdxReference | None:
    given = [args.tdx_mrtd, args.tdx_rtmr0, args.tdx_rtmr1, args.tdx_rtmr2]
    if not any(given):
        return None
    if not all(given):
        raise UsageError("TDX reference values need --tdx-mrtd and --tdx-rtmr0/1/2 together")
    return TdxReference(
        mrtd=_hex(args.tdx_mrtd, "--tdx-mrtd", 48),
        rtmrs=(_hex(args.tdx_rtmr0, "--tdx-rtmr0", 48), _hex(args.tdx_rtmr1, "--tdx-rtmr1", 48),
               _hex(args.tdx_rtmr2, "--tdx-rtmr2", 48)),
        min_tee_tcb_svn=_hex(args.tdx_min_tee_tcb_svn, "--tdx-min-tee-tcb-svn", 16),
        td_attributes=_hex(args.tdx_attributes, "--tdx-attributes", 8),
    )


def _min_tcb(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in SNP_TCB_FIELDS or not value.isdigit():
            raise UsageError(f"--snp-min-tcb takes NAME=SVN,... with NAME in {', '.join(SNP_TCB_FIELDS)}")
        out[name] = int(value)
    return out


def _snp(args: argparse.Namespace) -> SnpReference | None:
    if args.snp_measurement is None:
        if args.snp_policy is not None or args.snp_min_tcb:
            raise UsageError("SNP reference values need --snp-measurement")
        return None
    if args.snp_policy is None:
        raise UsageError("--snp-measurement needs --snp-policy (the guest policy, e.g. 0x30000)")
    try:
        policy = int(args.snp_policy, 0)
    except ValueError as exc:
        raise UsageError("--snp-policy must be an integer (0x... allowed)") from exc
    return SnpReference(measurement=_hex(args.snp_measurement, "--snp-measurement", 48), policy=policy,
                        min_tcb=_min_tcb(args.snp_min_tcb or ""), vmpl=args.snp_vmpl)


def _read_key(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _keygen(args: argparse.Namespace) -> int:
    """An Ed25519 signing key (PKCS#8 PEM, mode 0600) and its public key (SPKI PEM)."""
    key = Ed25519PrivateKey.generate()
    out_key, out_pub = Path(args.out_key), Path(args.out_pub)
    for path in (out_key, out_pub):
        if path.exists() and not args.force:
            raise UsageError(f"{path} exists (use --force to overwrite)")
    descriptor = os.open(out_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    out_pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    print(f"signing key {out_key} (keep it offline); public key {out_pub} (give it to relying parties)")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    simulated = TdxReference(mrtd=SIMULATED_MRTD, rtmrs=SIMULATED_RTMRS) if args.simulated else None
    simulated_snp = (SnpReference(measurement=SIMULATED_SNP_MEASUREMENT, policy=SIMULATED_SNP_POLICY)
                     if args.simulated else None)
    ref = ReleaseReference(version=args.version, image=args.image,
                           launch_policy_rules=args.launch_policy_rules or launch_policy.rules_digest(),
                           tdx=_tdx(args), snp=_snp(args), simulated=simulated, simulated_snp=simulated_snp)
    try:
        release.from_payload(release.to_payload(ref))  # the checks verify() applies, before signing
        signed = release.sign(ref, release.load_private_key(_read_key(args.signing_key)))
    except CmcpError as exc:
        raise UsageError(exc.detail) from exc
    if args.output == "-":
        sys.stdout.buffer.write(signed)
    else:
        Path(args.output).write_bytes(signed)
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        keys = [release.load_release_key(_read_key(path)) for path in args.key]
        manifest = Path(args.manifest).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.manifest}: {exc.strerror or exc}") from exc
    except CmcpError as exc:
        raise UsageError(exc.detail) from exc
    try:
        ref = release.verify(manifest, keys)
    except CmcpError as exc:
        print(f"FAIL {exc.code.value} {exc.detail}", file=sys.stdout if args.json else sys.stderr)
        return 1
    payload = release.to_payload(ref)
    if args.json:
        print(json.dumps({"signer": ref.signer, **payload}, sort_keys=True))
    else:
        platforms = ", ".join(sorted(payload["platforms"]))
        print(f"OK release {ref.version} image {ref.image} platforms {platforms} signed by {ref.signer}")
    return 0


def _run(func: Any) -> Any:
    return exit_2_on_usage_error("release", func)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("release", help="Sign and verify enclave release manifests")
    sub = parser.add_subparsers(dest="release_command", metavar="<subcommand>")

    key = sub.add_parser("keygen", help="Create an Ed25519 release signing key and its public key")
    key.add_argument("--out-key", required=True, metavar="PATH", help="signing key (PKCS#8 PEM, 0600)")
    key.add_argument("--out-pub", required=True, metavar="PATH", help="public key for relying parties")
    key.add_argument("--force", action="store_true", help="overwrite existing files")
    key.set_defaults(func=_run(_keygen))

    man = sub.add_parser(
        "manifest", help="Create and sign a release manifest",
        description="Create and sign an enclave release manifest from reference values. Give the "
                    "values of every platform the release runs on (docs/operations.md says where "
                    "they come from for a Kata guest).")
    man.add_argument("--version", required=True, help="the enclave release, e.g. 0.4.0")
    man.add_argument("--image", required=True, help="enclave image, <name>@sha256:<digest>")
    man.add_argument("--launch-policy-rules", metavar="SHA256",
                     help="digest of the launch-policy rules (default: this cmcpctl's rules)")
    man.add_argument("--tdx-mrtd", metavar="HEX", help="TD firmware measurement (48 bytes)")
    man.add_argument("--tdx-rtmr0", metavar="HEX", help="RTMR0: firmware configuration (48 bytes)")
    man.add_argument("--tdx-rtmr1", metavar="HEX", help="RTMR1: kernel and command line (48 bytes)")
    man.add_argument("--tdx-rtmr2", metavar="HEX", help="RTMR2: initrd / guest OS (48 bytes)")
    man.add_argument("--tdx-min-tee-tcb-svn", metavar="HEX", default="00" * 16,
                     help="minimum TEE_TCB_SVN, compared per byte (16 bytes; default all zero)")
    man.add_argument("--tdx-attributes", metavar="HEX", default="00" * 8,
                     help="exact TD attributes (8 bytes; default 0: no DEBUG, nothing else)")
    man.add_argument("--snp-measurement", metavar="HEX", help="SNP launch MEASUREMENT (48 bytes)")
    man.add_argument("--snp-policy", metavar="INT", help="exact SNP guest policy, e.g. 0x30000")
    man.add_argument("--snp-min-tcb", metavar="NAME=SVN,...",
                     help="minimum reported TCB: bootloader, tee, snp, microcode")
    man.add_argument("--snp-vmpl", type=int, default=0, help="the VMPL the report must come from (default 0)")
    man.add_argument("--simulated", action="store_true",
                     help="also admit the genuine simulated TDX and SNP guests (development releases only)")
    man.add_argument("--signing-key", required=True, metavar="PATH", help="PEM private key to sign with")
    man.add_argument("-o", "--output", default="-", metavar="PATH", help="where to write (default stdout)")
    man.set_defaults(func=_run(_manifest))

    ver = sub.add_parser("verify", help="Check a manifest's signature and contents")
    ver.add_argument("manifest", help="release manifest (DSSE JSON)")
    ver.add_argument("--key", action="append", required=True, metavar="PATH",
                     help="trusted release public key (PEM; repeatable)")
    ver.add_argument("--json", action="store_true", help="print the verified release as JSON")
    ver.set_defaults(func=_run(_verify))

    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), 2)[1])
