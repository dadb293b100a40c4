"""``cmcp-enclave``: start-up checks (docs/enclave.md, "Start-up"), then the gRPC server.

Exit codes: 0 clean stop, 2 usage, 3 refused to start (one JSON line on stderr naming the
code: INITDATA_MISMATCH, BUNDLE_HASH_MISMATCH, BUNDLE_INVALID, TEE_PROVIDER_FAILED).
``--ready-file`` receives a JSON document (address, port, key id, public JWK, hashes) once the
server listens, written atomically so a launcher polling for it never reads half a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import start_http_server

from cmcp_core import logs
from cmcp_core.crypto import key_from_jwk
from cmcp_core.errors import CmcpError, Code
from cmcp_core.stop_signals import GRACE_SECONDS, STOP_SIGNALS, exit_on_stop_signals
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.gpu import GPUS, make_gpu_provider, with_gpus
from cmcp_enclave.log import log
from cmcp_enclave.metrics import Metrics
from cmcp_enclave.scheduler import DecisionScheduler
from cmcp_enclave.server import audit_counter, expiry_loop, serve
from cmcp_enclave.sessions import EnclaveLimits
from cmcp_enclave.shutdown import shut_down
from cmcp_enclave.startup import StartupError, start
from cmcp_enclave.tee import make_provider

EXIT_REFUSED = 3
TEES = ("simulated", "tdx", "snp", "coco-aa")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="cmcp-enclave", description="cMCP enclave pod")
    p.add_argument("--bundle", default=env("CMCP_BUNDLE"), help="bundle directory (env CMCP_BUNDLE)")
    # no env defaults here: a flag given on the command line (which the agent policy pins) must
    # win over a variable a launcher set (see _initdata_source)
    p.add_argument("--initdata", help="initdata TOML the pod was launched with (env CMCP_INITDATA)")
    p.add_argument("--initdata-annotation",
                   help="file holding the pod's cc_init_data annotation (base64 of gzip), e.g. a downward-"
                        "API volume: how a Kata pod sees its initdata (env CMCP_INITDATA_ANNOTATION)")
    p.add_argument("--tee", default=env("CMCP_TEE"), choices=TEES, help="TEE provider (env CMCP_TEE)")
    p.add_argument("--gpu", default=env("CMCP_GPU", "none"), choices=GPUS,
                   help="confidential GPUs whose evidence every Attest carries (env CMCP_GPU; default none)")
    p.add_argument("--gpu-rim-dir", default=env("CMCP_GPU_RIM_DIR"),
                   help="signed NVIDIA RIMs (*.swidtag) to staple to --gpu nvidia evidence")
    p.add_argument("--listen", default=env("CMCP_LISTEN", "127.0.0.1:50051"),
                   help="gRPC HOST:PORT (env CMCP_LISTEN); port 0 picks a free one")
    p.add_argument("--decide-listen", default=env("CMCP_DECIDE_LISTEN"),
                   help="also serve decisions over the lean decision hop on HOST:PORT (env "
                        "CMCP_DECIDE_LISTEN; off by default; port 0 picks a free one): "
                        "docs/adr/0024-lean-decision-hop.md")
    p.add_argument("--metrics-listen", default=env("CMCP_METRICS_LISTEN"), help="Prometheus HOST:PORT")
    p.add_argument("--permit-ttl", type=int, default=60, help="permit lifetime in seconds")
    p.add_argument("--idle-timeout", type=float, default=900.0, help="close sessions idle this long")
    p.add_argument("--max-sessions", type=int, default=10_000)
    p.add_argument("--max-principals", type=int, default=100_000,
                   help="principals whose windowed taint and budgets are held (full: new ones refused)")
    p.add_argument("--decision-workers", type=int, default=None,
                   help="worker processes deciding calls whose arguments are not small "
                        "(default: the CPUs this process may use)")
    p.add_argument("--outbox-mb", type=int, default=64,
                   help="memory for signed audit entries no gateway has stored yet (full: no new session)")
    p.add_argument("--audit-redeliver-seconds", type=float, default=EnclaveLimits.redeliver_seconds,
                   metavar="S",
                   help="audit entries whose answer no gateway acknowledged as stored within S seconds "
                        "leave again with a later answer (the answer was lost on its way)")
    p.add_argument("--shutdown-grace", type=float, default=float(GRACE_SECONDS), metavar="S",
                   help="on SIGTERM, wait at most this long for the gateway to take the audit entries "
                        "of the sessions it closes (keep it below the pod's terminationGracePeriodSeconds)")
    p.add_argument("--ready-file", default=env("CMCP_READY_FILE"))
    p.add_argument("--tsm-root", default=env("CMCP_TSM_ROOT"), help="configfs-tsm report directory")
    p.add_argument("--aa-url", default=env("CMCP_AA_URL"), help="attestation agent base URL")
    p.add_argument("--operator-key", action="append", default=[],
                   help="JWK (file or JSON) of an operator key allowed to reset sessions")
    p.add_argument("--bundle-signer", action="append", default=[],
                   help="JWK (file or JSON) of a trusted bundle signer; if given, the bundle must be signed")
    p.add_argument("--issuer-jwks", action="append", default=[],
                   help="JWK Set file (e.g. a cluster's /openid/v1/jwks) offering keys for issuers the "
                        "bundle pins by thumbprint; keys it does not pin are ignored")
    return p


def _initdata_source(args: argparse.Namespace) -> None:
    """Flags first; only when neither is given, ``CMCP_INITDATA`` then ``CMCP_INITDATA_ANNOTATION``."""
    if args.initdata or args.initdata_annotation:
        return
    args.initdata = os.environ.get("CMCP_INITDATA") or None
    if not args.initdata:
        args.initdata_annotation = os.environ.get("CMCP_INITDATA_ANNOTATION") or None


def _refuse(code: Code, detail: str) -> int:
    sys.stderr.write(json.dumps({"level": "error", "component": "cmcp-enclave", "event": "refused",
                                 "error": code.value, "detail": detail}, ensure_ascii=False) + "\n")
    sys.stderr.flush()
    return EXIT_REFUSED


def _jwk_keys(values: list[str]) -> list[Ed25519PublicKey]:
    keys = []
    for value in values:
        text = Path(value).read_text() if not value.lstrip().startswith("{") else value
        keys.append(key_from_jwk(json.loads(text)))
    return keys


def _write_ready(path: str, doc: dict[str, object]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    Path(tmp).write_text(json.dumps(doc))
    os.replace(tmp, path)


async def _run(enclave: Enclave, metrics: Metrics, args: argparse.Namespace) -> int:
    # Workers start with the first large call, not here: most routes never need them, and
    # twenty enclaves starting theirs at once on a small node slowed their attestation 3x.
    scheduler = DecisionScheduler(enclave, workers=args.decision_workers)
    server, port = await serve(enclave, args.listen, metrics, scheduler, decide_listen=args.decide_listen)
    decide_port = server.hop.port if server.hop is not None else 0
    host = args.listen.rsplit(":", 1)[0]
    address = f"{host}:{port}"
    if args.metrics_listen:
        m_host, m_port = args.metrics_listen.rsplit(":", 1)
        start_http_server(int(m_port), addr=m_host, registry=metrics.registry)
    log("serving", address=address, kid=enclave.kid, bundle_hash=enclave.bundle_hash,
        mode=enclave.mode, platform=enclave.startup_report.platform, decide_hop_port=decide_port,
        gateway_keys=len(enclave.entry.gateway_keys))
    if not enclave.entry.gateway_keys:
        log("no gateway key in the initdata: state-changing calls are taken from any caller "
            "(a development set-up; the operator always pins one)", level="warning")
    if args.ready_file:
        _write_ready(args.ready_file, {
            "address": address, "port": port, "decide_hop_port": decide_port, "pid": os.getpid(),
            "kid": enclave.kid,
            "public_key_jwk": enclave.public_jwk, "bundle_hash": enclave.bundle_hash,
            "catalog_hash": enclave.catalog_hash, "enforcement_mode": enclave.mode,
            "platform": enclave.startup_report.platform})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    interval = max(0.5, min(30.0, args.idle_timeout / 4))
    expiry = asyncio.create_task(expiry_loop(enclave, metrics, interval))
    await stop.wait()
    expiry.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await expiry
    stopped = await shut_down(enclave, server, grace=args.shutdown_grace)
    scheduler.close()
    metrics.sessions_closed.labels("shutdown").inc(stopped.sessions_closed)
    log("stopped", sessions_closed=stopped.sessions_closed,
        audit_entries_undelivered=stopped.audit_entries_undelivered,
        audit_entries_unacknowledged=stopped.audit_entries_unacknowledged,
        level="warning" if stopped.audit_entries_undelivered else "info")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    exit_on_stop_signals()  # a stop during the start-up checks ends the process, also as PID 1
    args = build_parser().parse_args(argv)
    logs.setup()
    _initdata_source(args)
    missing = [n for n in ("bundle", "tee") if not getattr(args, n)]
    if not args.initdata and not args.initdata_annotation:
        missing.append("initdata (or --initdata-annotation)")
    if missing:
        sys.stderr.write(f"cmcp-enclave: missing --{', --'.join(missing)}\n")
        return 2
    if args.initdata and args.initdata_annotation:
        sys.stderr.write("cmcp-enclave: give --initdata or --initdata-annotation, not both\n")
        return 2
    metrics = Metrics()
    try:
        operator_keys = _jwk_keys(args.operator_key)
        signers = _jwk_keys(args.bundle_signer)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"cmcp-enclave: bad --operator-key/--bundle-signer: {exc}\n")
        return 2
    try:
        provider = with_gpus(make_provider(args.tee, tsm_root=args.tsm_root, aa_url=args.aa_url),
                             make_gpu_provider(args.gpu, rim_dir=args.gpu_rim_dir))
        limits = EnclaveLimits(permit_ttl=args.permit_ttl, idle_timeout=args.idle_timeout,
                               max_sessions=args.max_sessions, max_principals=args.max_principals,
                               outbox_bytes=args.outbox_mb * 1024 * 1024,
                               redeliver_seconds=args.audit_redeliver_seconds)
        enclave = start(bundle_dir=args.bundle, initdata_path=args.initdata or args.initdata_annotation,
                        provider=provider, limits=limits, operator_keys=operator_keys,
                        bundle_signers=signers, on_audit=audit_counter(metrics),
                        initdata_annotation=not args.initdata)
    except StartupError as exc:
        return _refuse(exc.code, exc.detail)
    except CmcpError as exc:
        return _refuse(Code.TEE_PROVIDER_FAILED if exc.code == Code.TEE_PROVIDER_FAILED else exc.code,
                       exc.detail)
    for path in args.issuer_jwks:
        try:
            offered = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"cmcp-enclave: bad --issuer-jwks {path}: {exc}\n")
            return 2
        usable = enclave.identity is not None and isinstance(offered, dict)
        taken = enclave.identity.add_keys(offered) if usable and enclave.identity else []
        log("issuer keys offered", file=path, pinned_keys_taken=len(taken))
    try:
        return uvloop.run(_run(enclave, metrics, args))  # docs/adr/0020-uvloop-everywhere.md
    except OSError as exc:
        log("listen-failed", level="error", detail=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
