"""``cmcpctl conformance``: run the conformance suite against a deployment and report by ID.

Output: one line per catalogue ID (``PASS`` / ``FAIL`` / ``SKIP`` with a reason), then
``conformance: N passed, M failed, K skipped``. Exit 0 when no MUST failed, 1 when one did,
2 on a usage error. ``--target local`` starts the whole system as local processes on the
simulated TEE; ``--target URL`` tests a deployed gateway route (the route must serve the
conformance bundle, written by ``--write-bundle DIR``) and appraises its enclaves against the
signed release manifests given with ``--release-manifest``/``--release-key``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from cmcp_conformance import cluster
from cmcp_conformance.cluster import RouteOutage
from cmcp_core import appraisal_options, gateway_identity
from cmcp_core.errors import CmcpError
from cmcp_core.route_status import RouteRef
from cmcp_core.verify.gpu_requirement import GpuRequirement


def _gpu(count: int, route_gpu: Any) -> GpuRequirement | None:
    """``--require-gpu N`` wins; else what the McpRoute status says the operator required."""
    if count:
        return GpuRequirement(count=count)
    return GpuRequirement.from_spec(route_gpu) if isinstance(route_gpu, dict) else None

def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "conformance",
        help="Run the conformance suite against a deployment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--target",
        help="'local', or the MCP URL of a deployed gateway route (e.g. https://gw.example/mcp/NAME)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig used to read the McpRoute status (cluster target)")
    p.add_argument("--route", help="NAMESPACE/NAME of the McpRoute behind --target")
    p.add_argument(
        "--allow-disruption",
        action="store_true",
        help="with --route: let the fail-closed checks stop the route's enclave by scaling the "
        "McpRoute to 0 replicas (its scale subresource) and restore the count afterwards; "
        "the route serves nobody meanwhile",
    )
    p.add_argument("--token", help="agent bearer token for the gateway")
    p.add_argument("--advisory-url", help="MCP URL of a route serving the advisory conformance bundle")
    p.add_argument(
        "--enclave", help="enclave gRPC HOST:PORT (default: first attested pod in the route status)"
    )
    p.add_argument("--advisory-enclave", help="gRPC HOST:PORT of the advisory route's enclave")
    p.add_argument("--audit-store", help="the gateway's audit store: sqlite:PATH or postgresql://...")
    p.add_argument("--gateway-key", metavar="PEM",
                   help="the gateway's identity key (the chart's gateway identity Secret): the checks "
                        "that play a compromised gateway call the enclave with it")
    p.add_argument("--upstream", help="the guarded upstream's MCP URL, reachable directly (bypass tests)")
    p.add_argument("--upstream-counter", help="URL returning the upstream's tool-call counter as JSON")
    p.add_argument("--require-gpu", type=int, default=0, metavar="N",
                   help="the enforce enclave must prove N confidential GPUs (ATTEST-007; default: the "
                        "route's status.gpu with --route, else none)")
    p.add_argument("--audience", help="permit audience of the upstream (default: from the route)")
    # how the suite appraises a remote target's evidence, spelt as for every relying party: the
    # signed release manifests it trusts (required for a URL target), collateral, simulated consent
    appraisal_options.add_arguments(p)
    p.add_argument("--id", action="append", dest="ids", metavar="ID", help="run only this ID (repeatable)")
    p.add_argument("--junit", type=Path, help="write a JUnit XML report to FILE")
    p.add_argument("--workdir", type=Path, help="local target: keep process logs in this directory")
    p.add_argument("--list", action="store_true", help="print the catalogue and exit")
    p.add_argument(
        "--write-bundle",
        type=Path,
        metavar="DIR",
        help="write the conformance bundle to DIR and exit",
    )
    p.add_argument(
        "--bundle-mode",
        choices=("enforce", "advisory"),
        default="enforce",
        help="with --write-bundle: the measured enforcement mode (advisory: for --advisory-url's route)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show pytest's own output")
    p.set_defaults(func=run)


def _remote_target(args: argparse.Namespace) -> Any:
    # grpc and protobuf (under TargetDeployment) load when a target is built, not at start-up:
    # every cmcpctl command imports this module to register ``conformance``.
    from cmcp_conformance.target import TargetDeployment

    route: dict[str, Any] | None = None
    access: cluster.ClusterAccess | None = None
    enclave = args.enclave
    audience = args.audience
    notes: list[str] = []
    if args.allow_disruption and not args.route:
        raise ValueError("--allow-disruption needs --route (and --kubeconfig) to scale the McpRoute")
    if args.route:
        access = cluster.ClusterAccess(args.kubeconfig, RouteRef.parse(args.route))
        route = cluster.read_route(args.kubeconfig, access.route)
        if enclave is None:
            addresses = cluster.attested_addresses(route)
            enclave = addresses[0] if addresses else None
            if enclave is None:
                notes.append("route status lists no attested enclave address")
        audience = audience or cluster.route_audience(route)
    status = (route or {}).get("status") or {}
    try:
        appraisal = appraisal_options.appraisal_policy(
            release_manifests=args.release_manifest, release_keys=args.release_key,
            allow_simulated=args.allow_simulated, collateral_dir=args.tdx_collateral_dir,
            pccs_url=args.pccs_url)
    except CmcpError as exc:
        raise ValueError(f"{exc.code.value}: {exc.detail}") from exc
    target = TargetDeployment(
        name="cluster",
        mcp_url=args.target,
        token=args.token,
        advisory_mcp_url=args.advisory_url,
        advisory_enclave_address=args.advisory_enclave,
        enclave_address=enclave,
        audit_store=args.audit_store,
        gateway_key=gateway_identity.load_private_key(Path(args.gateway_key)) if args.gateway_key else None,
        upstream_url=args.upstream,
        upstream_audience=audience,
        upstream_counter_url=args.upstream_counter,
        allow_simulated=args.allow_simulated,
        gpu=_gpu(args.require_gpu, status.get("gpu")),
        appraisal=appraisal,
        expected_bundle_hash=status.get("bundleHash"),
        route_status=route,
        cluster=access,
        notes=notes,
    )
    if access is not None and args.allow_disruption:
        follow = args.enclave is None  # a restarted enclave is a new pod: follow the route status

        def restored(new_route: dict[str, Any]) -> None:
            target.route_status = new_route
            if follow:
                target.enclave_address = cluster.attested_addresses(new_route)[0]

        target.outage = cluster.RouteOutage(access, on_restored=restored)
        notes.append(f"--allow-disruption: fail-closed checks scale McpRoute {args.route} to 0 and back")
    return target


def run(args: argparse.Namespace) -> int:
    try:
        # pytest and the suite: only ``conformance`` needs them, and only when it runs
        from cmcp_conformance import catalogue, runner
    except ImportError as exc:  # pytest is needed at run time
        print(f"cmcpctl conformance: cannot load the suite ({exc}); install pytest", file=sys.stderr)
        return 2
    if args.list:
        for req in catalogue.active():
            print(f"{req.id:<15} {req.level.value:<6} {req.title}")
        return 0
    if args.write_bundle:
        from cmcp_conformance import bundle  # imports the target module (grpc): see _remote_target

        bundle.write(args.write_bundle, mode=args.bundle_mode)
        print(f"conformance bundle ({args.bundle_mode}) written to {args.write_bundle}")
        return 0
    if not args.target:
        print("cmcpctl conformance: --target local|<gateway route URL> is required", file=sys.stderr)
        return 2
    if args.target != "local" and not args.target.startswith(("http://", "https://")):
        print(
            f"cmcpctl conformance: --target must be 'local' or an http(s) URL, got {args.target!r}",
            file=sys.stderr,
        )
        return 2
    try:
        for rid in args.ids or []:
            catalogue.get(rid)
    except KeyError as exc:
        print(f"cmcpctl conformance: {exc.args[0]}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.target == "local":
            from cmcp_conformance.local import LaunchError, local_deployment  # grpc: see _remote_target

            if args.workdir:
                args.workdir.mkdir(parents=True, exist_ok=True)
            try:
                deployment = stack.enter_context(local_deployment(args.workdir))
            except LaunchError as exc:
                print(f"cmcpctl conformance: local target did not start: {exc}", file=sys.stderr)
                return 1
            target = deployment.target()
        else:
            try:
                target = _remote_target(args)
            except ValueError as exc:
                print(f"cmcpctl conformance: {exc}", file=sys.stderr)
                return 2
            if isinstance(target.outage, RouteOutage):  # whatever happens, the route gets its replicas back
                stack.callback(target.outage.restore)
        print(f"# target {target.describe()}", flush=True)
        for note in target.notes:
            print(f"# note: {note}")
        report = runner.run(target, ids=args.ids, junit=args.junit, verbose=args.verbose)
    for line in report.lines():
        print(line)
    if not report.ok and args.target == "local" and not args.workdir:
        print(
            "# the local processes' logs are gone; rerun with --workdir DIR (and -v) to keep them",
            file=sys.stderr,
        )
    return 0 if report.ok else 1
