"""``cmcpctl demo``: cMCP end to end in one command, on the simulated TEE.

What it shows, with real parts only (separate processes, the official ``mcp`` SDK client, real
Ed25519 signatures, the same verifier library ``cmcpctl verify`` uses):

1. it starts an enclave (``cmcp-enclave --tee simulated``) on ``examples/realistic`` under
   initdata the launcher measured, an ``mcp`` SDK upstream with that bundle's tools behind the
   ``cmcp-guard`` proxy, and the gateway (``cmcp-gateway``);
2. one agent session through the gateway: an allowed CRM lookup, a tool outside the catalog,
   a policy deny on arguments, the taint rule (after a PHI read the same external mail is
   denied), then the host's own attempts on the upstream: no permit, and a replay of a genuine
   permit it copied off the wire. For every step the table shows expected vs actual, the error
   code and whether the upstream actually executed (its own call counter);
3. it closes the session (HTTP ``DELETE``), fetches the Trust Record and the audit export,
   appraises fresh evidence, verifies both with the verifier library and by running the
   ``cmcpctl verify`` commands it prints, and writes everything to the output folder.

Exit code: 0 only if every expected outcome happened; 1 if any did not; 2 for usage errors or
a deployment that could not start (the message says what to do next).

The launcher is the dev kit's :class:`cmcp_devkit.stack.LocalStack` (the one the conformance
target, the benchmarks and ``cmcpctl dev up`` use); the demo only adds its own bundle, the
``demo`` upstream profile and the wiretap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cmcp_core.bundle import load_bundle
from cmcp_core.errors import CmcpError
from cmcp_core.evidence.gpu import GPU_EVIDENCE_SUFFIX, read_gpu_evidence_file
from cmcp_core.validation import validate_bundle
from cmcp_core.verify import AppraisalPolicy
from cmcp_ctl.demo_cluster import add_cluster_arguments, run_cluster
from cmcp_ctl.demo_story import (
    AGENT,
    AUDIENCE,
    DEMO_ENCLAVE_IMAGE,
    DEMO_PERMIT_TTL,
    ROUTE,
    Console,
    DemoFailure,
    Run,
    Step,
    _explain_failures,
    _rel,
    auditor_commands,
    default_bundle_dir,
    prepare_out,
    publish_release,
    report_stop,
    report_success,
    tell_story,
)
from cmcp_devkit.initdata import render_initdata
from cmcp_devkit.stack import LaunchError, LocalStack


@dataclass
class DemoDeployment(LocalStack):
    """One enclave on ``bundle_dir``, the demo upstream behind the guard, a wiretap, a gateway."""

    bundle_dir: Path = field(default_factory=default_bundle_dir)
    tap_base: str = ""
    upstream_profile: str = "demo"
    gpu: str = "none"  # --gpu simulated: the enclave has a simulated GPU beside it

    @property
    def records_dir(self) -> Path:
        return self.workdir / "records"

    def enclave_argv(self, bundle_dir: Path, initdata_path: Path, listen: str, ready: Path) -> list[str]:
        argv = super().enclave_argv(bundle_dir, initdata_path, listen, ready)
        return argv if self.gpu == "none" else [*argv, "--gpu", self.gpu]

    def start_enclave(self) -> None:
        initdata = render_initdata(self.bundle_dir, route=f"demo/{ROUTE}", audience=self.audience,
                                   image=DEMO_ENCLAVE_IMAGE)
        self.start_enclave_on(ROUTE, self.bundle_dir, initdata)

    def start_tap(self) -> str:
        """The host's wiretap between gateway and guard (see :mod:`cmcp_devkit.demo_tap`)."""
        guard_base = self.upstream_url.rsplit("/mcp", 1)[0]
        argv = [
            sys.executable,
            "-m",
            "cmcp_devkit.demo_tap",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            guard_base,
        ]
        self.tap_base = self.wait_ready_line(self.spawn("wiretap", argv))
        return self.tap_base

    def gateway_config(self, port: int) -> dict[str, Any]:
        config: dict[str, Any] = super().gateway_config(port)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        config["trust_record_dir"] = str(self.records_dir)  # the gateway's copies, checked after
        if self.tap_base:  # the gateway forwards through the wiretap; the guard is behind it
            for route in config["routes"]:
                route["upstream"] = f"{self.tap_base}/mcp"
        return config


def run_local(console: Console, out: Path, bundle_dir: Path, gpu: str = "none") -> Run:
    """Bring the deployment up, tell the story, verify, write the files.

    Whatever happens after the first process started (a failure, Ctrl-C), every process is
    stopped before this returns or raises: a demo must not leave servers behind.
    """

    # grpc and protobuf (under TargetDeployment) load here, not at start-up: every cmcpctl command
    # imports this module to register ``demo`` and would pay for them.
    from cmcp_conformance.target import TargetDeployment

    run = Run(out=out)
    workdir = out / "run"
    console.heading("1. Start the deployment (simulated TEE, real processes)")
    with console.progress(f"checking the bundle {_rel(bundle_dir)}"):
        try:
            loaded = load_bundle(bundle_dir)
            problems = validate_bundle(loaded)
        except Exception as exc:  # a broken bundle must read as a bundle problem, not a traceback
            raise DemoFailure(
                f"cannot load the bundle: {exc}",
                f"run `cmcpctl bundle validate {_rel(bundle_dir)}` and fix what it reports",
            ) from exc
        if problems:
            raise DemoFailure(
                f"the bundle has {len(problems)} validation error(s)",
                f"run `cmcpctl bundle validate {_rel(bundle_dir)}` and fix what it reports",
            )
        run.bundle_hash = loaded.bundle_hash

    deployment = DemoDeployment(
        workdir=workdir, audience=AUDIENCE, agent=AGENT, permit_ttl=DEMO_PERMIT_TTL, bundle_dir=bundle_dir,
        gpu=gpu,
    )
    try:
        stage = "enclave"
        try:
            beside = ", a simulated GPU beside it" if gpu != "none" else ""
            with console.progress(f"enclave on the simulated TEE (initdata measured into MRCONFIGID)"
                                  f"{beside}"):
                deployment.start_enclave()
            stage = "upstream"
            with console.progress("mcp SDK upstream behind the cmcp-guard proxy (guard attests the enclave)"):
                deployment.start_upstream()
            stage = "wiretap"
            with console.progress("the host's wiretap between gateway and guard"):
                deployment.start_tap()
            stage = "gateway"
            with console.progress("gateway (holds no policy and no signing key)"):
                deployment.start_gateway()
        except LaunchError as exc:
            first = str(exc).splitlines()[0]
            raise DemoFailure(
                f"the {stage} did not start: {first}",
                f"read {_rel(workdir)}/*.log (the {stage}'s log ends with the reason); "
                "`pip install -e .` if a console script is missing",
            ) from exc
        handle = deployment.enclaves[ROUTE]
        run.release_argv = publish_release(out, deployment.release)
        target = TargetDeployment(
            name="demo",
            mcp_url=f"{deployment.gateway_url}/mcp/{ROUTE}",
            token=deployment.token,
            enclave_address=handle.address,
            audit_store=deployment.audit_store,
            upstream_url=deployment.upstream_url,
            upstream_audience=AUDIENCE,
            upstream_counter_url=f"{deployment.raw_upstream_base}/calls",
            allow_simulated=True,
            appraisal=AppraisalPolicy(releases=(deployment.release.release,)),
            expected_bundle_hash=str(handle.ready["bundle_hash"]),
            bundle_dir=bundle_dir,
        )
        console.table(
            ["component", "address", "note"],
            [
                [
                    "enclave",
                    handle.address,
                    f"bundle {run.bundle_hash[:23]}…, mode {loaded.enforcement_mode}",
                ],
                ["guarded upstream", deployment.upstream_url, "tools of examples/realistic + 1 uncatalogued"],
                ["gateway route", target.mcp_url, "agent token in run/tokens.yaml"],
            ],
        )

        tell_story(console, run, target, deployment.upstream_url, deployment.tap_base)
        check_gateway_files(run, deployment.records_dir)
    finally:
        with console.progress("stopping the processes"):
            deployment.close()

    auditor_commands(console, run)
    return run


def check_gateway_files(run: Run, records: Path) -> None:
    """What the gateway wrote at DELETE (``trust_record_dir``) is the record the enclave returns,
    and, beside GPUs, the GPU evidence it names (``<session>.gpu-evidence.json``)."""
    record_file = records / f"{run.session_id}.json"
    gpu_file = records / f"{run.session_id}{GPU_EVIDENCE_SUFFIX}"
    try:
        same = json.loads(record_file.read_bytes()) == run.record
        if run.gpu_evidence:
            same = same and read_gpu_evidence_file(gpu_file.read_bytes()) == run.gpu_evidence
        else:
            same = same and not gpu_file.exists()
        detail = f"{_rel(record_file)}" + (f" + {gpu_file.name}" if run.gpu_evidence else "")
    except (OSError, ValueError, CmcpError) as exc:
        same, detail = False, f"{type(exc).__name__}: {exc}"
    run.checks.append(("the gateway's copies (trust_record_dir) are the enclave's", same, detail))


def run_demo(args: argparse.Namespace, console: Console | None = None) -> int:
    """Entry point for ``cmcpctl demo``; returns the exit code."""
    console = console or Console()
    if args.cluster:  # the same story on a Kubernetes cluster: helm install + kubectl apply
        if args.gpu != "none":
            console.line(f"{console.fail_mark} --gpu is for the local demo only")
            console.line("  next: drop --gpu, or run without --cluster")
            return 2
        return run_cluster(args, console)
    bundle_dir = Path(args.bundle).resolve() if args.bundle else default_bundle_dir()
    if not (bundle_dir / "manifest.json").is_file():
        console.line(f"{console.fail_mark} no policy bundle at {bundle_dir}")
        console.line("  next: run from the repository root, or pass --bundle DIR (e.g. examples/realistic)")
        return 2
    started = time.monotonic()
    out = prepare_out(args.out)
    console.line("cMCP demo: Cedar decides inside a (simulated) TEE; the gateway only relays;")
    console.line("the upstream's guard runs nothing without a permit the attested enclave signed.")
    console.line(f"Output folder: {_rel(out)}")
    try:
        run = run_local(console, out, bundle_dir, gpu=args.gpu)
    except DemoFailure as exc:
        return report_stop(console, str(exc), exc.hint, exit_code=2)
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        return report_stop(console, f"the demo stopped: {type(exc).__name__}: {exc}",
                           f"read the component logs in {_rel(out / 'run')}/ and run `cmcpctl demo` again")
    if report_success(console, run, time.monotonic() - started):
        return 0
    _explain_failures(console, run)
    return 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Run the end-to-end demo on the simulated TEE",
        description="Start an enclave (simulated TEE), the gateway and a guarded MCP upstream; drive one "
        "agent session through allowed, out-of-catalog, denied and tainted calls and two bypass attempts; "
        "verify the Trust Record and audit chain; write them to a folder. Exit 0 only if every "
        "expected outcome happened.",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for *.trust-record.json, *.audit.json and logs (default: a new "
        "./cmcp-demo-<time> folder, named in the output)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run the story on a Kubernetes cluster (helm install + kubectl apply); `make demo-cluster` "
        "starts the local cluster with its real node and installs this checkout's images for it",
    )
    add_cluster_arguments(parser)
    parser.add_argument("--bundle", metavar="DIR", help="policy bundle (default: examples/realistic)")
    parser.add_argument(
        "--gpu",
        choices=("none", "simulated"),
        default="none",
        help="simulated: the enclave runs with a simulated GPU beside it (cmcp-enclave --gpu simulated); "
        "the Trust Record names its GPU evidence, written to <session>.gpu-evidence.json in --out",
    )
    parser.set_defaults(func=run_demo)


__all__: list[str] = ["Console", "Run", "Step", "register", "run_demo"]
