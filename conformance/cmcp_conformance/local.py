"""The ``local`` target: enclave(s), gateway and a guarded ``mcp`` upstream as real processes.

Everything runs on 127.0.0.1 with the simulated TEE. The launcher plays the hardware's part
for the simulator: it measures the initdata it hands an enclave (``CMCP_SIM_MRCONFIGID``), so
an enclave given other initdata, or a bundle that does not match it, is refused exactly as on
hardware. Two routes are deployed: ``enforce`` and ``advisory`` (the same policies, measured
in advisory mode, hence a different bundle hash).

Components are started by their console scripts (``cmcp-enclave``, ``cmcp-gateway``) and the
conformance upstream module; each launcher is a method so test code can substitute a
deliberately weakened component while keeping the rest real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from cmcp_conformance import bundle as conformance_bundle
from cmcp_conformance.serving import free_port, ready_url
from cmcp_conformance.target import LaunchResult, Profile, TargetDeployment
from cmcp_core import initdata
from cmcp_enclave.simulated import launcher_env

AUDIENCE = "conformance-upstream"
AGENT = "conformance-agent"
ENCLAVE_IMAGE = "ghcr.io/cmcp/enclave:conformance"
ENCLAVE_COMMAND = ["cmcp-enclave"]
START_TIMEOUT = 30.0
PERMIT_TTL = 5  # short, so the suite can watch a genuine permit expire


class LaunchError(RuntimeError):
    """A component did not come up; the message carries the tail of its output."""


def _bin(name: str) -> str:
    """The console script next to this interpreter (a venv), else whatever PATH finds."""
    candidate = Path(sys.executable).with_name(name)
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise LaunchError(f"console script {name!r} not found; is cmcp-k8s installed?")
    return found


def render_initdata(bundle_dir: Path, *, route: str, audience: str = AUDIENCE) -> bytes:
    """Initdata naming the bundle's hashes and mode (the product renderer, conformance image)."""
    return initdata.render_for_bundle(
        bundle_dir, route=route, audience=audience, image=ENCLAVE_IMAGE, command=ENCLAVE_COMMAND
    )


@dataclass
class Proc:
    """One child process with its output captured to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def output(self, limit: int = 4000) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[-limit:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self.log_file.close()


@dataclass
class EnclaveHandle:
    proc: Proc
    address: str
    bundle_dir: Path
    initdata_path: Path
    ready: dict[str, Any]


@dataclass
class LocalDeployment:
    """Starts and owns the local processes; :meth:`target` describes them to the suite."""

    workdir: Path
    profile: Profile = field(default_factory=Profile)
    token: str = "conformance-token-0123456789abcdef"
    # Who the deployment is for: the guard's and routes' permit audience (also measured into the
    # initdata :meth:`start` renders), the principal the gateway maps ``token`` to, and how long
    # the enclave's permits live. The suite keeps the defaults; the demo passes its own.
    audience: str = AUDIENCE
    agent: str = AGENT
    permit_ttl: int = PERMIT_TTL
    procs: list[Proc] = field(default_factory=list)
    enclaves: dict[str, EnclaveHandle] = field(default_factory=dict)
    upstream_url: str = ""
    raw_upstream_base: str = ""
    gateway_url: str = ""
    _launch_count: int = 0

    # --- process plumbing ------------------------------------------------------------------
    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        popen = subprocess.Popen(
            list(argv), stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=self.workdir
        )
        proc = Proc(name, popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def wait_for(self, proc: Proc, check: Any, what: str, timeout: float = START_TIMEOUT) -> Any:
        """Poll ``check`` until it returns something truthy (returned); fail if ``proc`` dies first.

        The :class:`LaunchError` carries the tail of the process's output, which is usually
        the only clue to why a component did not come up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if not proc.alive():
                raise LaunchError(
                    f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.output()}"
                )
            time.sleep(0.05)
        raise LaunchError(f"{proc.name}: timed out waiting for {what}:\n{proc.output()}")

    # --- enclaves --------------------------------------------------------------------------
    def enclave_argv(self, bundle_dir: Path, initdata_path: Path, listen: str, ready: Path) -> list[str]:
        return [
            _bin("cmcp-enclave"),
            "--bundle",
            str(bundle_dir),
            "--initdata",
            str(initdata_path),
            "--tee",
            "simulated",
            "--listen",
            listen,
            "--ready-file",
            str(ready),
            "--permit-ttl",
            str(self.permit_ttl),
        ]

    def _enclave_proc(
        self, name: str, bundle_dir: Path, initdata_bytes: bytes, listen: str, measured: bytes | None = None
    ) -> tuple[Proc, Path, Path]:
        self._launch_count += 1
        initdata_path = self.workdir / f"{name}-{self._launch_count}.initdata.toml"
        initdata_path.write_bytes(initdata_bytes)
        ready = self.workdir / f"{name}-{self._launch_count}.ready.json"
        ready.unlink(missing_ok=True)
        proc = self.spawn(
            f"{name}-{self._launch_count}",
            self.enclave_argv(bundle_dir, initdata_path, listen, ready),
            env=launcher_env(initdata_bytes if measured is None else measured),
        )
        return proc, initdata_path, ready

    def start_enclave_on(
        self, name: str, bundle_dir: Path, initdata_bytes: bytes, listen: str = "127.0.0.1:0"
    ) -> EnclaveHandle:
        proc, initdata_path, ready = self._enclave_proc(name, bundle_dir, initdata_bytes, listen)

        def read_ready() -> dict[str, Any] | None:
            if not ready.exists():
                return None
            doc: dict[str, Any] = json.loads(ready.read_text())
            return doc

        doc = self.wait_for(proc, read_ready, "its ready file")
        handle = EnclaveHandle(proc, str(doc["address"]), bundle_dir, initdata_path, doc)
        self.enclaves[name] = handle
        return handle

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

    def stop_enclave(self, name: str = "enforce") -> None:
        self.enclaves[name].proc.stop()

    def restart_enclave(self, name: str = "enforce") -> None:
        old = self.enclaves[name]
        if old.proc.alive():
            old.proc.stop()
        self.start_enclave_on(name, old.bundle_dir, old.initdata_path.read_bytes(), listen=old.address)

    # --- upstream and gateway ----------------------------------------------------------------
    def upstream_argv(self) -> list[str]:
        """The ``mcp`` SDK upstream itself; it sits behind the guard and is reached only through it."""
        return [sys.executable, "-m", "cmcp_conformance.upstream", "--listen", "127.0.0.1:0", "--no-guard"]

    def guard_argv(
        self, listen: str, upstream_base: str, enclaves: list[str], hashes: list[str]
    ) -> list[str]:
        argv = [
            _bin("cmcp-guard"),
            "--listen",
            listen,
            "--upstream",
            upstream_base,
            "--audience",
            self.audience,
            "--allow-simulated",
            "--refresh-seconds",
            "5",
        ]
        for address in enclaves:
            argv += ["--enclave", address]
        for bundle_hash in hashes:
            argv += ["--expected-bundle-hash", bundle_hash]
        return argv

    def _wait_http(self, proc: Proc, url: str) -> None:
        def answering() -> bool:
            try:
                httpx.get(url, timeout=1.0)
            except httpx.HTTPError:
                return False
            return True

        self.wait_for(proc, answering, f"HTTP at {url}")

    def wait_ready_line(self, proc: Proc) -> str:
        """The URL a helper process announces with ``READY <url>`` (see
        :func:`cmcp_conformance.serving.run_until_stopped`), once it has printed it."""
        url: str = self.wait_for(proc, lambda: ready_url(proc.output(100_000)), "READY")
        return url

    def start_upstream(self) -> str:
        """Start the upstream, then the guard in front of it; return the guarded MCP URL."""
        proc = self.spawn("upstream", self.upstream_argv())
        raw_url = self.wait_ready_line(proc)
        self.raw_upstream_base = raw_url.rsplit("/mcp", 1)[0]
        handles = list(self.enclaves.values())
        port = free_port()
        guard = self.spawn(
            "guard",
            self.guard_argv(
                f"127.0.0.1:{port}",
                self.raw_upstream_base,
                [h.address for h in handles],
                [str(h.ready["bundle_hash"]) for h in handles],
            ),
        )
        self._wait_http(guard, f"http://127.0.0.1:{port}/calls")
        self.upstream_url = f"http://127.0.0.1:{port}/mcp"
        return self.upstream_url

    def gateway_config(self, port: int) -> dict[str, Any]:
        routes = []
        for name, handle in self.enclaves.items():
            routes.append(
                {
                    "name": name,
                    "upstream": self.upstream_url,
                    "audience": self.audience,
                    "enclaves": [handle.address],
                    "expected_bundle_hashes": [handle.ready["bundle_hash"]],
                }
            )
        tokens = self.workdir / "tokens.yaml"
        tokens.write_text(yaml.safe_dump({self.token: self.agent}))
        return {
            "listen": f"127.0.0.1:{port}",
            "allow_simulated": True,
            "auth": {"tokens_file": str(tokens)},
            "routes": routes,
            "limits": {"max_body_bytes": 256 * 1024, "decide_timeout_seconds": 2.0},
            "attest_refresh_seconds": 2.0,
        }

    def gateway_argv(self, config_path: Path) -> list[str]:
        return [_bin("cmcp-gateway"), "--config", str(config_path)]

    def start_gateway(self) -> str:
        port = free_port()
        config_path = self.workdir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(self.gateway_config(port), allow_unicode=True))
        proc = self.spawn("gateway", self.gateway_argv(config_path))
        base = f"http://127.0.0.1:{port}"
        self._wait_http(proc, f"{base}/")
        self.gateway_url = base
        return base

    # --- whole deployment ------------------------------------------------------------------
    def start(self) -> None:
        for name, mode in (("enforce", "enforce"), ("advisory", "advisory")):
            bundle_dir = conformance_bundle.write(self.workdir / f"bundle-{name}", self.profile, mode=mode)
            initdata_bytes = render_initdata(bundle_dir, route=f"conformance/{name}", audience=self.audience)
            self.start_enclave_on(name, bundle_dir, initdata_bytes)
        self.start_upstream()
        self.start_gateway()

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()

    def target(self) -> TargetDeployment:
        enforce, advisory = self.enclaves["enforce"], self.enclaves.get("advisory")
        return TargetDeployment(
            name="local",
            mcp_url=f"{self.gateway_url}/mcp/enforce",
            token=self.token,
            advisory_mcp_url=f"{self.gateway_url}/mcp/advisory" if advisory else None,
            enclave_address=enforce.address,
            advisory_enclave_address=advisory.address if advisory else None,
            upstream_url=self.upstream_url,
            upstream_audience=self.audience,
            upstream_counter_url=f"{self.raw_upstream_base}/calls",
            allow_simulated=True,
            expected_bundle_hash=str(enforce.ready["bundle_hash"]),
            bundle_dir=enforce.bundle_dir,
            powers=LocalPowers(self),
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
