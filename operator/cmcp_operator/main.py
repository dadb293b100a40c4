"""``cmcp-operator``: parse flags, register handlers, run Kopf."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import kopf
import uvloop

from cmcp_core import appraisal_options, gateway_identity
from cmcp_core.launch_policy import IMAGE_DIGEST_RE
from cmcp_core.stop_signals import STOP_SIGNALS, exit_on_stop_signals
from cmcp_operator.config import DEFAULT_IMAGE, OperatorConfig
from cmcp_operator.handlers import register

NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # an RFC 1123 label


def parse_args(argv: Sequence[str] | None = None) -> OperatorConfig:
    p = argparse.ArgumentParser(prog="cmcp-operator", description=__doc__)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[],
                       help="watch this namespace (repeatable; exact names: the operator's Roles are granted "
                            "per namespace, and it never lists namespaces)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch the whole cluster")
    appraisal_options.add_arguments(p)  # --release-manifest/--release-key/--allow-simulated/...
    p.add_argument("--reattest-interval", type=float, default=30.0, metavar="S")
    p.add_argument("--attest-timeout", type=float, default=5.0, metavar="S")
    p.add_argument("--enclave-image", default=DEFAULT_IMAGE)
    p.add_argument("--runtime-class-tdx", default="kata-qemu-tdx")
    p.add_argument("--runtime-class-snp", default="kata-qemu-snp")
    p.add_argument("--runtime-class-any", default="kata-cc")
    p.add_argument("--runtime-class-simulated", default="",
                   help="runtime class for tee: simulated routes (default: none)")
    p.add_argument("--runtime-class-gpu-tdx", default="kata-qemu-nvidia-gpu-tdx",
                   help="runtime class for tee: tdx routes with spec.gpu")
    p.add_argument("--runtime-class-gpu-snp", default="kata-qemu-nvidia-gpu-snp",
                   help="runtime class for tee: snp routes with spec.gpu")
    p.add_argument("--gpu-resource", default="nvidia.com/pgpu",
                   help="extended resource a spec.gpu route's enclave requests (the Kata sandbox device "
                        "plugin's name; model-specific names such as nvidia.com/GH100_H100_PCIE also work)")
    p.add_argument("--gpu-provider", default="nvidia", choices=["nvidia", "simulated"],
                   help="what spec.gpu enclaves attest (--gpu); simulated needs --allow-simulated")
    p.add_argument("--initdata-algorithm", default="sha384", choices=["sha256", "sha384", "sha512"])
    p.add_argument("--gateway-key-file", action="append", default=[], metavar="PEM",
                   help="a gateway's Ed25519 key (PEM); its public half goes into every enclave's "
                        "initdata, and enclaves take state-changing calls from no other caller (repeatable)")
    p.add_argument("--acceptable-tcb", default="UpToDate,SWHardeningNeeded",
                   help="comma-separated TDX TCB statuses to accept (accepted_tcb_statuses)")
    p.add_argument("--webhook-port", type=int, default=None, help="serve the admission webhook on this port")
    p.add_argument("--webhook-host", default=None,
                   help="host name/IP the apiserver uses to reach the webhook (URL mode)")
    p.add_argument("--webhook-listen", default="0.0.0.0")  # noqa: S104
    p.add_argument("--webhook-cert-dir", default=None,
                   help="directory with tls.crt, tls.key (and ca.crt); default: mint a CA at start")
    p.add_argument("--webhook-service", default=None, metavar="NS/NAME[:PORT]",
                   help="advertise the webhook as this Service (in-cluster) instead of a URL")
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--peering", default=None, metavar="NAME",
                   help="leader election via Kopf peering object NAME (needs crds/kopf-peering.yaml)")
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority; default: random, so replicas never tie (a tie freezes all)")
    p.add_argument("--liveness", default=None, metavar="URL", help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--verbose", "-v", action="store_true")
    a = p.parse_args(argv)
    if a.gpu_provider == "simulated" and not a.allow_simulated:
        p.error("--gpu-provider simulated needs --allow-simulated (simulated evidence must be accepted "
                "explicitly)")
    if not a.namespace and not a.all_namespaces:
        p.error("give --namespace NS (repeatable) or --all-namespaces")
    patterns = [n for n in a.namespace if not NAMESPACE_NAME.fullmatch(n)]
    if patterns:
        p.error(f"--namespace takes exact namespace names, not {patterns}: the operator is granted "
                "Roles in named namespaces and does not list namespaces (use --all-namespaces)")
    if not IMAGE_DIGEST_RE.fullmatch(a.enclave_image):
        p.error(f"--enclave-image {a.enclave_image!r} must be pinned by digest (<name>@sha256:<64 hex>): "
                "the measured launch policy pins it")
    try:
        gateway_keys = tuple(gateway_identity.initdata_value(gateway_identity.load_private_key(Path(f)))
                             for f in a.gateway_key_file)
    except (OSError, ValueError) as exc:
        p.error(f"--gateway-key-file: {exc}")
    # Last: a missing or forged release manifest is a usage error (exit 2) naming its code.
    appraisal = appraisal_options.from_args(
        a, p, accepted_tcb_statuses=tuple(s for s in a.acceptable_tcb.split(",") if s))
    return OperatorConfig(
        namespaces=tuple(a.namespace), all_namespaces=a.all_namespaces,
        appraisal=appraisal,
        reattest_interval=a.reattest_interval, attest_timeout=a.attest_timeout,
        enclave_image=a.enclave_image,
        runtime_classes={"tdx": a.runtime_class_tdx, "snp": a.runtime_class_snp, "any": a.runtime_class_any,
                         "simulated": a.runtime_class_simulated},
        gpu_runtime_classes={"tdx": a.runtime_class_gpu_tdx, "snp": a.runtime_class_gpu_snp},
        gpu_resource=a.gpu_resource, gpu_provider=a.gpu_provider,
        initdata_algorithm=a.initdata_algorithm, gateway_keys=gateway_keys,
        webhook_port=a.webhook_port, webhook_host=a.webhook_host, webhook_listen=a.webhook_listen,
        webhook_cert_dir=a.webhook_cert_dir, webhook_service=a.webhook_service,
        metrics_port=a.metrics_port, peering=a.peering,
        priority=a.priority if a.priority is not None else secrets.randbelow(2**31),
        liveness_endpoint=a.liveness, verbose=a.verbose,
    )


async def run_operator(config: OperatorConfig, *, stop_flag: asyncio.Event | threading.Event | None = None,
                       ready_flag: asyncio.Event | threading.Event | None = None) -> None:
    """Run Kopf in the current event loop (tests may run it in a thread)."""
    registry = kopf.OperatorRegistry()
    register(registry, config)
    await kopf.operator(
        registry=registry,
        clusterwide=config.all_namespaces,
        namespaces=list(config.namespaces),
        standalone=config.peering is None,
        peering_name=config.peering,
        priority=config.priority,
        liveness_endpoint=config.liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=kopf.Memo(),
    )


async def run_until_stopped(config: OperatorConfig) -> None:
    """Kopf until SIGTERM or SIGINT; then its cleanup handlers run and it returns.

    Kopf installs its own handlers only once its tasks are spawned; a stop before that would
    reach :func:`~cmcp_core.stop_signals.exit_on_stop_signals`'s, whose ``SystemExit`` inside the
    event loop leaves asyncio cancelling Kopf's half-started tasks, which took until its API
    retries gave up (about a minute with the apiserver away). The loop handlers set Kopf's own
    stop flag instead, at any point of its start-up.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await run_operator(config, stop_flag=stop)


def main(argv: Sequence[str] | None = None) -> None:
    exit_on_stop_signals()  # a stop before the event loop runs ends the process, also as PID 1
    config = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if config.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.verbose:  # one INFO line per pod event is noise; our own loggers say what matters
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    uvloop.run(run_until_stopped(config))  # as kopf's own CLI does (docs/adr/0020-uvloop-everywhere.md)


if __name__ == "__main__":
    main()
