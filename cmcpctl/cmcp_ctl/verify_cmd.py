"""``cmcpctl verify evidence|record|audit``: the library verifier, for auditors and scripts.

Exit codes: 0 the check passed, 1 it failed (the verdict's code says why), 2 usage (bad
flags, unreadable files). ``--json`` prints the verdict object; otherwise one summary line.

GPU evidence an ``AttestResponse`` carries is never ignored: with ``--response`` every envelope
in it is appraised (at least ``--require-gpu`` of them must be there), for the nonce derived from
the verified REPORT_DATA, against the pinned NVIDIA roots at ``--now``/``--evidence-now``, under
``--gpu-revocation``; the summary line names the GPU count and the revocation state.

``verify record --gpu-evidence FILE`` checks the record's own GPU evidence (the gateway's
``<session>.gpu-evidence.json``, ADR 0031): each envelope must be one the signed record names by
digest, and is appraised for the nonce derived from the record's verified ``runtime.nonce``, at
``--evidence-now`` (else ``--now``); ``--require-gpu N`` then also needs N of the record's GPUs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cmcp_core import appraisal_options
from cmcp_core.errors import CmcpError
from cmcp_core.evidence.gpu import read_gpu_evidence_file
from cmcp_core.verify.appraise import PLATFORMS, appraise_attestation, appraise_evidence, appraise_response
from cmcp_core.verify.gpu import REVOCATION_POLICIES
from cmcp_core.verify.gpu_requirement import MAX_GPUS, GpuRequirement
from cmcp_core.verify.record import load_audit_export, verify_audit_export, verify_trust_record
from cmcp_core.verify.verdict import DEFAULT_TCB_STATUSES, AppraisalPolicy, Verdict, VerifyFailure
from cmcp_ctl.usage import UsageError, exit_2_on_usage_error

MAX_INPUT_BYTES = 16 * 1024 * 1024



def _read(path: str) -> bytes:
    try:
        p = Path(path)
        if p.stat().st_size > MAX_INPUT_BYTES:
            raise UsageError(f"{path} is larger than {MAX_INPUT_BYTES} bytes")
        return p.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _json_arg(value: str) -> Any:
    """A JSON value given inline or as ``@file``."""
    text = _read(value[1:]).decode("utf-8", "replace") if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON: {exc.msg}") from exc


def _hex(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    try:
        return bytes.fromhex(value.strip())
    except ValueError as exc:
        raise UsageError(f"{name} must be hex") from exc


def _now(value: str | None) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise UsageError("--now must be Unix seconds or an ISO 8601 time") from exc


def _policy(args: argparse.Namespace) -> AppraisalPolicy:
    """The relying parties' appraisal: a signed release manifest is required here too."""
    try:
        policy = appraisal_options.appraisal_policy(
            release_manifests=args.release_manifest, release_keys=args.release_key,
            allow_simulated=args.allow_simulated, collateral_dir=args.tdx_collateral_dir,
            pccs_url=args.pccs_url, accepted_tcb_statuses=args.accept_tcb_status or DEFAULT_TCB_STATUSES,
        )
    except CmcpError as exc:
        raise UsageError(f"{exc.code.value}: {exc.detail}") from exc
    return replace(policy, allow_debug=args.allow_debug)


def _emit(verdict: Verdict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(verdict.to_json(), ensure_ascii=False, sort_keys=True))
    else:
        state = "PASS" if verdict.passed else "FAIL"
        extra = f" tcb={verdict.tcb_status}" if verdict.tcb_status else ""
        if verdict.gpus:
            revocation = ",".join(sorted({g.revocation or "not-reached" for g in verdict.gpus}))
            extra += f" gpus={len(verdict.gpus)} gpu-revocation={revocation}"
        print(f"{state} {verdict.code} [{verdict.platform}, {verdict.assurance}{extra}] {verdict.message}")
    return 0 if verdict.passed else 1


def _run(func: Any) -> Any:
    return exit_2_on_usage_error("verify", func)


def _load_response(path: str) -> Any:
    """An ``AttestResponse`` in protobuf's JSON mapping (bytes fields as base64)."""
    # protobuf and the generated messages load only for ``verify evidence``, not at start-up:
    # every cmcpctl command imports this module to register ``verify``.
    from google.protobuf import json_format

    from cmcp_core.proto import enclave_pb2

    try:
        return json_format.Parse(_read(path).decode("utf-8"), enclave_pb2.AttestResponse())
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise UsageError(f"--response is not an AttestResponse JSON: {exc}") from exc


def _gpu(args: argparse.Namespace, response: Any) -> GpuRequirement | None:
    """What the response's GPU envelopes are appraised under: all of them, at least ``--require-gpu``."""
    count = max(args.require_gpu, len(response.gpu_evidence))
    if count == 0:
        return None
    if count > MAX_GPUS:
        raise UsageError(f"at most {MAX_GPUS} GPUs")
    return GpuRequirement(count=count, revocation=args.gpu_revocation)


def _evidence(args: argparse.Namespace) -> int:
    policy = _policy(args)
    now = _now(args.now)
    collateral = _read(args.collateral) if args.collateral else None
    nonce = _hex(args.nonce, "--nonce")
    if args.response:
        if nonce is None:
            raise UsageError("--response needs --nonce (the nonce the verifier sent)")
        resp = _load_response(args.response)
        expected_initdata = _read(args.initdata) if args.initdata else None
        verdict = appraise_response(
            resp,
            nonce,
            policy,
            expected_bundle_hash=args.expected_bundle_hash,
            expected_initdata=expected_initdata,
            expected_public_key_jwk=_json_arg(args.expected_key) if args.expected_key else None,
            collateral=collateral,
            now=now,
            gpu=_gpu(args, resp),
        )
        return _emit(verdict, args.json)
    if not args.platform or not args.evidence:
        raise UsageError("give --platform and --evidence, or --response")
    evidence = _read(args.evidence)
    aux = _read(args.aux) if args.aux else b""
    if nonce is None:
        return _emit(
            appraise_evidence(
                args.platform, evidence, policy=policy, aux=aux, collateral=collateral, now=now
            ),
            args.json,
        )
    missing = [
        f
        for f in ("initdata", "public_key_jwk", "bundle_hash", "catalog_hash", "mode")
        if getattr(args, f) is None
    ]
    if missing:
        raise UsageError(
            "binding checks (--nonce) also need --" + ", --".join(m.replace("_", "-") for m in missing)
        )
    verdict = appraise_attestation(
        args.platform,
        evidence,
        aux=aux,
        initdata=_read(args.initdata),
        public_key_jwk=_json_arg(args.public_key_jwk),
        bundle_hash=args.bundle_hash,
        catalog_hash=args.catalog_hash,
        enforcement_mode=args.mode,
        nonce=nonce,
        policy=policy,
        claimed_report_data=_hex(args.report_data, "--report-data"),
        expected_bundle_hash=args.expected_bundle_hash,
        expected_public_key_jwk=_json_arg(args.expected_key) if args.expected_key else None,
        collateral=collateral,
        now=now,
    )
    return _emit(verdict, args.json)


def _record(args: argparse.Namespace) -> int:
    record = _json_arg("@" + args.record)
    key = _json_arg(args.key) if args.key else None
    verdict_in = None
    if args.response:  # appraise the enclave's evidence first; the record must speak for it
        nonce = _hex(args.nonce, "--nonce")
        if nonce is None:
            raise UsageError("--response needs --nonce (the nonce the verifier sent)")
        collateral = _read(args.collateral) if args.collateral else None
        resp = _load_response(args.response)
        verdict_in = appraise_response(
            resp,
            nonce,
            _policy(args),
            expected_bundle_hash=args.bundle_hash,
            collateral=collateral,
            now=_now(args.evidence_now),
            gpu=_gpu(args, resp),
        )
        if not verdict_in.passed:
            return _emit(verdict_in, args.json)
    elif key is None:
        raise UsageError("give --key (the pinned enclave key) or --response with --nonce")
    entries = None
    if args.audit:
        try:
            entries = load_audit_export(_read(args.audit))
        except VerifyFailure as exc:
            raise UsageError(exc.detail) from exc
    gpu_evidence, record_gpu = _record_gpu(args)
    verdict = verify_trust_record(
        record,
        key=key,
        verdict=verdict_in,
        pinned_bundle_hash=args.bundle_hash,
        audit_entries=entries,
        max_age_seconds=None if args.max_age <= 0 else args.max_age,
        now=_now(args.now),
        gpu_evidence=gpu_evidence,
        gpu=record_gpu,
        allow_simulated=args.allow_simulated,
        gpu_now=_now(args.evidence_now),
    )
    return _emit(verdict, args.json)


def _record_gpu(args: argparse.Namespace) -> tuple[tuple[bytes, ...] | None, GpuRequirement | None]:
    """The record's GPU evidence (``--gpu-evidence``) and what its GPUs must satisfy."""
    evidence = None
    if args.gpu_evidence:
        try:
            evidence = read_gpu_evidence_file(_read(args.gpu_evidence))
        except CmcpError as exc:
            raise UsageError(f"--gpu-evidence: {exc.code.value}: {exc.detail}") from exc
    if evidence is None and args.require_gpu <= 0:
        return None, None
    try:
        return evidence, GpuRequirement(count=max(1, args.require_gpu), revocation=args.gpu_revocation)
    except ValueError as exc:
        raise UsageError(f"--require-gpu: {exc}") from exc


def _audit(args: argparse.Namespace) -> int:
    try:
        entries = load_audit_export(_read(args.export))
    except VerifyFailure as exc:
        raise UsageError(exc.detail) from exc
    return _emit(verify_audit_export(entries, _json_arg(args.key), expected_tip=args.tip), args.json)


def _gpu_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--require-gpu", type=int, default=0, metavar="N",
                   help="the --response must carry GPU evidence for at least N GPUs (every envelope it "
                        "carries is appraised anyway); for verify record, N of the record's GPUs must "
                        "verify too (--gpu-evidence)")
    p.add_argument("--gpu-revocation", choices=REVOCATION_POLICIES, default="not-checked",
                   help="ocsp-stapled: every GPU and RIM certificate needs a stapled GOOD OCSP response; "
                        "not-checked: reported as such (default)")


def _policy_flags(p: argparse.ArgumentParser) -> None:
    appraisal_options.add_arguments(p)
    p.add_argument(
        "--accept-tcb-status",
        action="append",
        metavar="STATUS",
        help="TDX TCB status to accept (repeatable; default UpToDate)",
    )
    p.add_argument(
        "--allow-debug", action="store_true", help="accept debug-enabled TEEs (never in production)"
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify", help="Appraise attestation evidence, Trust Records and audit chains"
    )
    sub = parser.add_subparsers(dest="verify_command", metavar="<subcommand>")

    ev = sub.add_parser("evidence", help="Appraise TDX / SEV-SNP / simulated evidence (and its binding)")
    ev.add_argument("--platform", choices=PLATFORMS)
    ev.add_argument("--evidence", help="quote / SNP report / SNP evidence JSON file")
    ev.add_argument("--aux", help="SNP certificate table or PEM chain (VCEK, ASK[, ARK])")
    ev.add_argument("--collateral", help="TDX DCAP collateral JSON (QuoteCollateralV3 form)")
    ev.add_argument("--response", help="an AttestResponse as protobuf JSON (instead of the flags below)")
    ev.add_argument("--nonce", help="the verifier's nonce (hex); enables initdata and binding checks")
    ev.add_argument("--initdata", help="initdata TOML the measurement must match")
    ev.add_argument("--public-key-jwk", help="the enclave's claimed key (JSON or @file)")
    ev.add_argument("--bundle-hash")
    ev.add_argument("--catalog-hash")
    ev.add_argument("--mode", choices=("enforce", "advisory", "silent"))
    ev.add_argument("--report-data", help="the report data the enclave claims (hex)")
    ev.add_argument("--expected-bundle-hash", help="the bundle hash the PolicyBundle declares")
    ev.add_argument("--expected-key", help="pin the enclave key (JWK JSON or @file)")
    ev.add_argument("--now", help="verification time: Unix seconds or ISO 8601 (default: now)")
    ev.add_argument("--json", action="store_true")
    _policy_flags(ev)
    _gpu_flags(ev)
    ev.set_defaults(func=_run(_evidence))

    rec = sub.add_parser("record", help="Verify a TRACE Trust Record against a pinned enclave key")
    rec.add_argument("record", help="Trust Record JSON file")
    rec.add_argument("--key", help="pinned enclave key (JWK JSON or @file)")
    rec.add_argument(
        "--response", help="the enclave's AttestResponse (protobuf JSON): key and bundle from it"
    )
    rec.add_argument("--nonce", help="the nonce that AttestResponse answered (hex)")
    rec.add_argument("--collateral", help="TDX DCAP collateral JSON for --response")
    rec.add_argument("--evidence-now", help="verification time for --response evidence (default: now)")
    rec.add_argument("--bundle-hash", help="pinned bundle hash the record must name")
    rec.add_argument("--audit", help="audit export whose chain tip must equal tool_transcript.hash")
    rec.add_argument("--gpu-evidence", metavar="FILE",
                     help="the record's GPU evidence ({\"gpuEvidence\": [...]}, the gateway's "
                          "<session>.gpu-evidence.json): every envelope must be one the record names")
    rec.add_argument("--max-age", type=int, default=86400, help="freshness window in seconds (0 = off)")
    rec.add_argument("--now", help="verification time: Unix seconds or ISO 8601")
    rec.add_argument("--json", action="store_true")
    _policy_flags(rec)
    _gpu_flags(rec)
    rec.set_defaults(func=_run(_record))

    aud = sub.add_parser("audit", help="Verify an exported audit chain offline")
    aud.add_argument("export", help="audit export (JSON array, {entries: [...]}, or JSON Lines)")
    aud.add_argument("--key", required=True, help="enclave key (JWK JSON or @file)")
    aud.add_argument("--tip", help="expected chain tip (e.g. a record's tool_transcript.hash)")
    aud.add_argument("--json", action="store_true")
    aud.set_defaults(func=_run(_audit))

    parser.set_defaults(func=lambda _args: (parser.print_help(sys.stderr), 2)[1])
