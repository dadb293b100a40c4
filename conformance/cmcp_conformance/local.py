"""The ``local`` target: the dev kit's local stack deployed for the conformance suite.

Three routes are deployed: ``enforce`` and ``advisory`` (the same policies, measured in advisory
mode, hence a different bundle hash) and ``identity`` (enforce, its agents present OAuth access
tokens of a development issuer the bundle trusts), behind the dev kit's ``conformance`` upstream profile,
served by two gateway replicas (the second one for REPLICA-001). The
process launching itself is :class:`cmcp_devkit.stack.LocalStack`; this module adds the suite's
bundles, its short permit lifetime, the :class:`~cmcp_conformance.target.Target` description and
the powers (stop, restart, throw-away launches) a local deployment grants.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcp_conformance import bundle as conformance_bundle
from cmcp_conformance.target import IdentityAccess, LaunchResult, Profile, TargetDeployment
from cmcp_core.gateway_identity import load_private_key
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify.gpu_requirement import GpuRequirement
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.initdata import render_initdata as devkit_render_initdata
from cmcp_devkit.issuer import DevIssuer, identity_section
from cmcp_devkit.stack import LaunchError, LocalStack
from cmcp_enclave.simulated import SimulatedGuest, launcher_env

AUDIENCE = "conformance-upstream"
AGENT = "conformance-agent"
REPLICA_AGENT = "conformance-replica-agent"  # REPLICA-001 taints this one, never AGENT
REPLICA_TOKEN = "conformance-replica-token-0123456789ab"
REPLICA = "replica"  # the second gateway process's name
IDENTITY_ROUTE = "identity"  # the route whose agents present OAuth access tokens
ENCLAVE_IMAGE = TEST_IMAGE  # by digest, the image the stack's signed dev release names
PERMIT_TTL = 5  # short, so the suite can watch a genuine permit expire
# A host's own initrd under the genuine firmware and kernel: only RTMR2 differs from the release.
_GENUINE = SimulatedGuest()
FORGED_GUEST = SimulatedGuest(rtmrs=(_GENUINE.rtmrs[0], _GENUINE.rtmrs[1],
                                     hashlib.sha384(b"cmcp-conformance-forged-initrd").digest()))

__all__ = ["AUDIENCE", "LaunchError", "LocalDeployment", "LocalPowers", "local_deployment", "render_initdata"]


def render_initdata(bundle_dir: Path, *, route: str, audience: str = AUDIENCE,
                    gateway_keys: Sequence[str] = ()) -> bytes:
    """Initdata naming the bundle's hashes and mode (the product renderer, conformance image)
    and the gateways the enclave takes state-changing calls from."""
    return devkit_render_initdata(bundle_dir, route=route, audience=audience, image=ENCLAVE_IMAGE,
                                  gateway_keys=gateway_keys)


@dataclass
class LocalDeployment(LocalStack):
    """Starts and owns the local processes; :meth:`target` describes them to the suite."""

    profile: Profile = field(default_factory=Profile)
    token: str = "conformance-token-0123456789abcdef"
    audience: str = AUDIENCE
    agent: str = AGENT
    permit_ttl: int = PERMIT_TTL
    upstream_profile: str = "conformance"
    tokens: dict[str, str] = field(default_factory=lambda: {REPLICA_TOKEN: REPLICA_AGENT})
    issuer: DevIssuer = field(default_factory=lambda: DevIssuer("https://issuer.conformance.example"))

    gpu: str = "simulated"  # every enclave here has a simulated GPU beside it (ATTEST-007)

    def enclave_argv(self, bundle_dir: Path, initdata_path: Path, listen: str, ready: Path) -> list[str]:
        argv = super().enclave_argv(bundle_dir, initdata_path, listen, ready)
        return argv if self.gpu == "none" else [*argv, "--gpu", self.gpu]

    def launch_enclave(
        self, bundle_dir: Path, initdata_bytes: bytes, *, measured: bytes | None = None, timeout: float = 20.0
    ) -> LaunchResult:
        """Try a throw-away enclave; report whether it ever served, then stop it.

        ``measured`` is the initdata the simulated hardware recorded (default: the same bytes, as
        an honest launch); passing other bytes models a host that swaps the file after measurement."""
        proc, _, ready = self._enclave_proc("probe", bundle_dir, initdata_bytes, "127.0.0.1:0", measured)
        deadline = time.monotonic() + timeout
        served = False
        while time.monotonic() < deadline:
            if ready.exists():
                served = True
                break
            if not proc.alive():
                break
            time.sleep(0.05)
        returncode = proc.popen.poll()
        proc.stop()
        self.procs.remove(proc)
        return LaunchResult(served=served, returncode=returncode, output=proc.output())

    @contextlib.contextmanager
    def forged_enclave(self, guest: SimulatedGuest = FORGED_GUEST) -> Iterator[str]:
        """The enforce enclave's genuine bundle and initdata, launched as ``guest``; its address."""
        genuine = self.enclaves["enforce"]
        self._launch_count += 1
        name = f"forged-{self._launch_count}"
        ready = self.workdir / f"{name}.ready.json"
        argv = self.enclave_argv(genuine.bundle_dir, genuine.initdata_path, "127.0.0.1:0", ready)
        proc = self.spawn(name, argv, env=launcher_env(genuine.initdata_path.read_bytes(), guest))

        def read_ready() -> dict[str, Any] | None:
            return dict(json.loads(ready.read_text())) if ready.exists() else None

        try:
            doc = self.wait_for(proc, read_ready, "its ready file")
            yield str(doc["address"])
        finally:
            proc.stop()
            self.procs.remove(proc)

    # --- whole deployment ------------------------------------------------------------------
    @property
    def resource(self) -> str:
        """The identity route's resource URI (RFC 8707): tokens name it, the bundle requires it."""
        return f"https://conformance.example/mcp/{IDENTITY_ROUTE}"

    def start(self) -> None:
        trusted = identity_section(self.issuer, audiences=(self.resource,))
        for name, mode, identity in (("enforce", "enforce", None), ("advisory", "advisory", None),
                                     (IDENTITY_ROUTE, "enforce", trusted)):
            bundle_dir = conformance_bundle.write(self.workdir / f"bundle-{name}", self.profile, mode=mode,
                                                  identity=identity)
            initdata_bytes = render_initdata(bundle_dir, route=f"conformance/{name}", audience=self.audience,
                                             gateway_keys=self.gateway_keys)
            self.start_enclave_on(name, bundle_dir, initdata_bytes)
        self.authorizations[IDENTITY_ROUTE] = {"resource": self.resource,
                                               "authorization_servers": [self.issuer.issuer]}
        self.start_upstream()
        self.start_gateway()
        self.start_gateway(REPLICA)  # a second replica on the same enclaves (REPLICA-001)

    def target(self) -> TargetDeployment:
        enforce, advisory = self.enclaves["enforce"], self.enclaves.get("advisory")
        replica = self.gateway_urls.get(REPLICA)
        return TargetDeployment(
            name="local",
            mcp_url=f"{self.gateway_url}/mcp/enforce",
            token=self.token,
            advisory_mcp_url=f"{self.gateway_url}/mcp/advisory" if advisory else None,
            replica_mcp_url=f"{replica}/mcp/enforce" if replica else None,
            replica_token=REPLICA_TOKEN if replica else None,
            enclave_address=enforce.address,
            gateway_key=load_private_key(self.gateway_key_file),
            audit_store=self.audit_store,
            advisory_enclave_address=advisory.address if advisory else None,
            upstream_url=self.upstream_url,
            upstream_audience=self.audience,
            upstream_counter_url=f"{self.raw_upstream_base}/calls",
            allow_simulated=True,
            gpu=None if self.gpu == "none" else GpuRequirement(),
            appraisal=AppraisalPolicy(releases=(self.release.release,)),
            expected_bundle_hash=str(enforce.ready["bundle_hash"]),
            bundle_dir=enforce.bundle_dir,
            powers=LocalPowers(self),
            identity=IdentityAccess(
                mcp_url=f"{self.gateway_url}/mcp/{IDENTITY_ROUTE}", resource=self.resource,
                enclave_address=self.enclaves[IDENTITY_ROUTE].address,
                token=lambda subject: self.issuer.token(subject, audience=self.resource),
            ) if IDENTITY_ROUTE in self.enclaves else None,
            profile=self.profile,
        )


class LocalPowers:
    """The :class:`~cmcp_conformance.target.Powers` a local deployment grants."""

    def __init__(self, deployment: LocalDeployment) -> None:
        self.deployment = deployment

    def stop_enclave(self) -> None:
        self.deployment.stop_enclave("enforce")

    def start_enclave(self) -> None:
        self.deployment.restart_enclave("enforce")

    def launch_enclave(
        self, bundle_dir: Path, initdata: bytes, *, measured: bytes | None = None, timeout: float = 20.0
    ) -> LaunchResult:
        return self.deployment.launch_enclave(bundle_dir, initdata, measured=measured, timeout=timeout)

    def forged_enclave(self) -> contextlib.AbstractContextManager[str]:
        return self.deployment.forged_enclave()


@contextlib.contextmanager
def local_deployment(
    workdir: Path | None = None, profile: Profile | None = None
) -> Iterator[LocalDeployment]:
    """Start the local deployment in ``workdir`` (a temporary directory by default)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cmcp-conformance-")))
        deployment = LocalDeployment(workdir=workdir, profile=profile or Profile())
        stack.callback(deployment.close)
        deployment.start()
        yield deployment
