"""Enclave(s) on the simulated TEE, a guard and the gateway as real local processes, launched together.

Everything runs on 127.0.0.1. The launcher plays the hardware's part for the simulator: it
measures the initdata it hands an enclave (``CMCP_SIM_MRCONFIGID``), so an enclave given other
initdata, or a bundle that does not match it, is refused exactly as on hardware.

Components are started by their console scripts (``cmcp-enclave``, ``cmcp-guard``,
``cmcp-gateway``) and the dev kit's upstream; each launcher is a method so a user (the demo, the
conformance target, test code substituting a deliberately weakened component) can change one
part while keeping the rest real. ``cmcpctl dev up`` puts the guard in front of a server it did
not start (:meth:`LocalStack.start_guard`). Several gateway replicas on the same enclaves
(:meth:`LocalStack.start_gateway` with another name) and routes served by several enclaves
(``pools``) model a deployment with replicas; :meth:`LocalStack.kill` crashes one (SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cmcp_core import gateway_identity
from cmcp_devkit.ports import free_port
from cmcp_devkit.procs import Proc, console_script, ready_url, start
from cmcp_devkit.release import DevRelease, write_dev_release
from cmcp_enclave.simulated import launcher_env
from cmcp_gateway.protocol import LOOPBACK_HOSTS

AUDIENCE = "urn:cmcp:dev-upstream"
AGENT = "dev-agent"
START_TIMEOUT = 30.0
PERMIT_TTL = 60


class LaunchError(RuntimeError):
    """A component did not come up; the message carries the tail of its output."""


def _bin(name: str) -> str:
    """The console script ``name``; a missing one is a launch error (the message says which)."""
    try:
        return console_script(name)
    except FileNotFoundError as exc:
        raise LaunchError(str(exc)) from exc


@dataclass
class EnclaveHandle:
    proc: Proc
    address: str
    bundle_dir: Path
    initdata_path: Path
    ready: dict[str, Any]


@dataclass
class LocalStack:
    """Starts and owns the local processes (stopped, newest first, by :meth:`close`)."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Who the stack is for: the guard's and routes' permit audience (measured into the initdata
    # its users render), the principal the gateway maps ``token`` to, and how long the enclave's
    # permits live. Each user (conformance, demo, dev up) passes its own.
    audience: str = AUDIENCE
    agent: str = AGENT
    permit_ttl: int = PERMIT_TTL
    # More agents the gateways know (token -> agent id), beside ``token`` -> ``agent``.
    tokens: dict[str, str] = field(default_factory=dict)
    # Routes served by several enclaves: route name -> enclave names. An enclave named in no
    # pool serves a route of its own, named after it.
    pools: dict[str, list[str]] = field(default_factory=dict)
    gateway_limits: dict[str, Any] = field(default_factory=dict)  # over the stack's defaults
    # Routes whose agents present OAuth access tokens: route name -> the gateway config's
    # ``authorization`` block (cmcp_gateway.config.Authorization)
    authorizations: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Names agents reach the gateways by besides loopback (a Service name in front of replicas):
    # every route serves them and the loopback names (its allowed_hosts, DNS rebinding)
    allowed_hosts: tuple[str, ...] = ()
    procs: list[Proc] = field(default_factory=list)
    enclaves: dict[str, EnclaveHandle] = field(default_factory=dict)
    upstream_url: str = ""
    raw_upstream_base: str = ""
    gateway_url: str = ""
    # The gateway's audit store (every enclave answer's entries); default a SQLite file in workdir.
    # Gateway replicas share it: one store, as with PostgreSQL in a deployment.
    audit_store: str = ""
    gateways: dict[str, Proc] = field(default_factory=dict)  # gateway replicas by name
    gateway_urls: dict[str, str] = field(default_factory=dict)
    _launch_count: int = 0
    _release: DevRelease | None = None
    _gateway_key: Ed25519PrivateKey | None = None

    def __post_init__(self) -> None:
        if not self.audit_store:
            self.audit_store = f"sqlite:{self.workdir / 'audit.sqlite'}"

    @property
    def gateway_key_file(self) -> Path:
        """The gateways' identity (Ed25519, PEM; written on first use): every gateway replica of
        the stack signs its enclave calls with it."""
        path = self.workdir / "gateway-key.pem"
        if self._gateway_key is None:
            self._gateway_key = key = Ed25519PrivateKey.generate()
            path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        return path

    @property
    def gateway_keys(self) -> list[str]:
        """What an enclave's initdata pins (``render_initdata(..., gateway_keys=stack.gateway_keys)``)
        so that it takes state-changing calls from this stack's gateways only."""
        return [gateway_identity.initdata_value(gateway_identity.load_private_key(self.gateway_key_file))]

    @property
    def release(self) -> DevRelease:
        """The signed dev release the stack's relying parties trust (written on first use)."""
        if self._release is None:
            self._release = write_dev_release(self.workdir)
        return self._release

    # --- process plumbing ------------------------------------------------------------------
    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` in the work folder, its output in ``NAME.log``; :meth:`close` stops it."""
        proc = start(name, argv, self.workdir, env={**(env or {}), "PYTHONUNBUFFERED": "1"},
                     cwd=self.workdir)
        proc.stop_signal, proc.stop_timeout = signal.SIGTERM, 5.0
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
            "--decide-listen",  # decisions over the lean hop (docs/adr/0024-lean-decision-hop.md)
            f"{listen.rsplit(':', 1)[0]}:0",
            "--ready-file",
            str(ready),
            "--permit-ttl",
            str(self.permit_ttl),
            "--shutdown-grace",  # the stack stops its gateways too: nobody would drain
            "0",
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

    def stop_enclave(self, name: str = "enforce") -> None:
        self.enclaves[name].proc.stop()

    def restart_enclave(self, name: str = "enforce") -> None:
        old = self.enclaves[name]
        if old.proc.alive():
            old.proc.stop()
        self.start_enclave_on(name, old.bundle_dir, old.initdata_path.read_bytes(), listen=old.address)

    # --- upstream and gateway ----------------------------------------------------------------
    upstream_profile: str = "test"

    def upstream_argv(self) -> list[str]:
        """The ``mcp`` SDK upstream itself; it sits behind the guard and is reached only through it."""
        return [sys.executable, "-m", "cmcp_devkit.upstream", "--profile", self.upstream_profile,
                "--listen", "127.0.0.1:0"]

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
            *self.release.argv(),
            "--refresh-seconds",
            "5",
        ]
        for address in enclaves:
            argv += ["--enclave", address]
        for bundle_hash in hashes:
            argv += ["--expected-bundle-hash", bundle_hash]
        for catalog_hash in sorted({str(h.ready["catalog_hash"]) for h in self.enclaves.values()}):
            argv += ["--expected-catalog-hash", catalog_hash]
        for mode in self.modes():
            argv += ["--expected-mode", mode]
        return argv

    def modes(self) -> list[str]:
        """The enforcement modes this stack's enclaves run in: its guard is for all of them."""
        return sorted({str(h.ready["enforcement_mode"]) for h in self.enclaves.values()} or {"enforce"})

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
        :func:`cmcp_devkit.serving.run_until_stopped`), once it has printed it."""
        url: str = self.wait_for(proc, lambda: ready_url(proc.output(100_000)), "READY")
        return url

    def start_upstream(self) -> str:
        """Start the upstream, then the guard in front of it; return the guarded MCP URL."""
        proc = self.spawn("upstream", self.upstream_argv())
        raw_url = self.wait_ready_line(proc)
        self.raw_upstream_base = raw_url.rsplit("/mcp", 1)[0]
        return self.start_guard(self.raw_upstream_base)

    def start_guard(self, upstream_base: str, mcp_path: str = "/mcp") -> str:
        """The guard in front of ``upstream_base`` (attesting this stack's enclaves); its MCP URL.

        The guard is a reverse proxy that keeps the request path, so its MCP URL ends in the
        upstream's own ``mcp_path``."""
        handles = list(self.enclaves.values())
        port = free_port()
        guard = self.spawn(
            "guard",
            self.guard_argv(
                f"127.0.0.1:{port}",
                upstream_base,
                [h.address for h in handles],
                [str(h.ready["bundle_hash"]) for h in handles],
            ),
        )
        self._wait_http(guard, f"http://127.0.0.1:{port}/calls")
        self.upstream_url = f"http://127.0.0.1:{port}{mcp_path}"
        return self.upstream_url

    def route_enclaves(self) -> dict[str, list[EnclaveHandle]]:
        """Each route the gateways serve and the enclaves behind it (see ``pools``)."""
        pooled = {name for names in self.pools.values() for name in names}
        routes = {name: [handle] for name, handle in self.enclaves.items() if name not in pooled}
        for route, names in self.pools.items():
            routes[route] = [self.enclaves[name] for name in names]
        return routes

    def gateway_config(self, port: int) -> dict[str, Any]:
        routes = []
        for name, handles in self.route_enclaves().items():
            routes.append(
                {
                    "name": name,
                    "upstream": self.upstream_url,
                    "audience": self.audience,
                    "enclaves": [h.address for h in handles],
                    "expected_bundle_hashes": sorted({str(h.ready["bundle_hash"]) for h in handles}),
                    "expected_catalog_hashes": sorted({str(h.ready["catalog_hash"]) for h in handles}),
                    "enforcement_modes": sorted({str(h.ready["enforcement_mode"]) for h in handles}),
                    **({"authorization": self.authorizations[name]} if name in self.authorizations else {}),
                    **({"allowed_hosts": [*self.allowed_hosts, *LOOPBACK_HOSTS]}
                       if self.allowed_hosts else {}),
                }
            )
        tokens = self.workdir / "tokens.yaml"
        tokens.write_text(yaml.safe_dump({self.token: self.agent, **self.tokens}))
        return {
            "listen": f"127.0.0.1:{port}",
            "allow_simulated": True,
            "release": self.release.config(),
            "auth": {"tokens_file": str(tokens)},
            "routes": routes,
            "audit": {"store": self.audit_store},
            "identity": {"key_file": str(self.gateway_key_file)},
            "limits": {"max_body_bytes": 256 * 1024, "decide_timeout_seconds": 2.0, **self.gateway_limits},
            "attest_refresh_seconds": 2.0,
        }

    def gateway_argv(self, config_path: Path) -> list[str]:
        return [_bin("cmcp-gateway"), "--config", str(config_path)]

    def start_gateway(self, name: str = "gateway") -> str:
        """Start a gateway; its base URL. Another ``name`` starts one more replica: the same routes,
        enclaves and tokens on its own port (``gateway_urls[name]``), sharing nothing else."""
        port = free_port()
        config_path = self.workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(self.gateway_config(port), allow_unicode=True))
        proc = self.spawn(name, self.gateway_argv(config_path))
        base = f"http://127.0.0.1:{port}"
        self._wait_http(proc, f"{base}/")
        self.gateways[name], self.gateway_urls[name] = proc, base
        if name == "gateway":
            self.gateway_url = base
        return base

    def kill(self, proc: Proc) -> None:
        """SIGKILL, as a crash or an evicted pod: no shutdown, nothing flushed."""
        proc.popen.kill()
        proc.popen.wait(timeout=10)

    def close(self) -> None:
        """Stop every process this stack started, newest first (each by its own PID)."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
