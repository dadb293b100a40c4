"""Start ``cmcp-enclave`` on the simulated TEE (a process, or in this process) for tests and benchmarks.

API:
  * ``render_initdata`` — re-exported from :mod:`cmcp_devkit.initdata` (the tests' defaults).
  * ``start_enclave(bundle_dir, workdir, *, audience=..., route=..., initdata_bytes=None,
    measured_initdata=None, tee="simulated", extra_args=(), env=None, timeout=30.0)
    -> EnclaveProcess`` — writes the initdata under ``workdir``, launches the process with
    ``CMCP_SIM_MRCONFIGID`` measured from ``measured_initdata`` (default: the same initdata, as
    an honest launcher does), waits for ``--ready-file``. Raises ``EnclaveRefused`` (with
    ``.returncode``, ``.code``, ``.stderr``) if the enclave exits instead.
  * ``EnclaveProcess``: ``.address`` ("127.0.0.1:PORT"), ``.port``, ``.process``, ``.ready``
    (the ready-file JSON), ``.public_key`` (Ed25519PublicKey), ``.kid``, ``.initdata``,
    ``.audience``, ``.bundle_hash``, ``.stderr_text()``; ``.stop()`` (returns the exit code);
    usable as a context manager.
  * ``inprocess_enclave(bundle_dir, workdir, *, audience=..., route=..., limits=None,
    operator_keys=None) -> cmcp_enclave.enclave.Enclave`` — same start-up path in this process
    (simulated TEE, honest launcher); drive it with ``.open_session(principal, trail=NO_TRAIL)``
    (the enclave mints the id; ``NO_TRAIL``: the first session of a principal the audit store
    holds nothing of), ``.decide(...)``, ``.close(...)`` and ``carried(enclave)`` (the entries an
    answer would carry, acknowledged as a gateway does once it stored them), or serve it with
    ``cmcp_enclave.server.serve(enclave, "127.0.0.1:0", Metrics())``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core import initdata
from cmcp_core.crypto import key_from_jwk
from cmcp_core.proto import enclave_pb2
from cmcp_devkit.initdata import DEFAULT_AUDIENCE, DEFAULT_ROUTE, ENCLAVE_COMMAND, TEST_IMAGE, render_initdata
from cmcp_enclave.enclave import Enclave
from cmcp_enclave.gpu import with_gpus
from cmcp_enclave.simulated import launcher_env
from cmcp_enclave.startup import start
from cmcp_enclave.tee import SimulatedProvider

# A principal's trail from an audit store that holds nothing of it: how an honest gateway opens
# a new principal's first session (cmcp_enclave.handover).
NO_TRAIL = enclave_pb2.PrincipalTrail()

# What the tests' initdata names (tests that render initdata by hand use the same values).
IMAGE = TEST_IMAGE
COMMAND = list(ENCLAVE_COMMAND)

__all__ = [
    "COMMAND",
    "DEFAULT_AUDIENCE",
    "DEFAULT_ROUTE",
    "IMAGE",
    "EnclaveProcess",
    "EnclaveRefused",
    "inprocess_enclave",
    "render_initdata",
    "start_enclave",
]


class EnclaveRefused(RuntimeError):
    def __init__(self, returncode: int, stderr: str):
        self.returncode = returncode
        self.stderr = stderr
        self.code: str | None = None
        for line in reversed(stderr.splitlines()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("event") == "refused":
                self.code = str(doc.get("error"))
                break
        super().__init__(f"enclave exited {returncode} ({self.code}): {stderr[-2000:]}")


@dataclass
class EnclaveProcess:
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    initdata: bytes
    audience: str
    workdir: Path
    _stderr_path: Path = field(repr=False, default=Path())

    @property
    def address(self) -> str:
        return str(self.ready["address"])

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def kid(self) -> str:
        return str(self.ready["kid"])

    @property
    def bundle_hash(self) -> str:
        return str(self.ready["bundle_hash"])

    @property
    def public_key(self) -> Ed25519PublicKey:
        return key_from_jwk(self.ready["public_key_jwk"])

    def stderr_text(self) -> str:
        return self._stderr_path.read_text(errors="replace") if self._stderr_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def __enter__(self) -> EnclaveProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_enclave(bundle_dir: str | Path, workdir: str | Path, *, audience: str = DEFAULT_AUDIENCE,
                  route: str = DEFAULT_ROUTE, initdata_bytes: bytes | None = None,
                  measured_initdata: bytes | None = None, tee: str = "simulated",
                  extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                  timeout: float = 30.0, launcher: Sequence[str] = ()) -> EnclaveProcess:
    """``launcher`` prefixes the command (e.g. ``unshare --pid --fork --mount-proc``: the enclave
    as a PID namespace's init, as in a container)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = initdata_bytes if initdata_bytes is not None else render_initdata(
        bundle_dir, audience=audience, route=route)
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    init_path = work / f"initdata-{stamp}.toml"
    init_path.write_bytes(data)
    ready_path = work / f"ready-{stamp}.json"
    stderr_path = work / f"enclave-{stamp}.log"
    child_env = dict(os.environ)
    if tee == "simulated":
        child_env.update(launcher_env(measured_initdata if measured_initdata is not None else data))
    child_env.update(env or {})
    # no wait for a gateway to drain on SIGTERM (a test's stop has none): ``extra_args`` may set one
    cmd = [*launcher, sys.executable, "-m", "cmcp_enclave.main", "--bundle", str(bundle_dir),
           "--initdata", str(init_path), "--tee", tee, "--listen", "127.0.0.1:0",
           "--decide-listen", "127.0.0.1:0",  # decisions over the lean hop, as the operator runs them
           "--ready-file", str(ready_path), "--shutdown-grace", "0", *extra_args]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=child_env)
    deadline = time.monotonic() + timeout
    while True:
        if ready_path.exists():
            ready = json.loads(ready_path.read_text())
            return EnclaveProcess(process=proc, ready=ready, initdata=data, audience=audience,
                                  workdir=work, _stderr_path=stderr_path)
        code = proc.poll()
        if code is not None:
            raise EnclaveRefused(code, stderr_path.read_text(errors="replace"))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise EnclaveRefused(-1, "timed out waiting for the ready file\n"
                                 + stderr_path.read_text(errors="replace"))
        time.sleep(0.05)


def inprocess_enclave(bundle_dir: str | Path, workdir: str | Path, *, audience: str = DEFAULT_AUDIENCE,
                      route: str = DEFAULT_ROUTE, limits: Any = None,
                      operator_keys: list[Ed25519PublicKey] | None = None,
                      gateway_keys: Sequence[str] = (), gpus: Any = None) -> Any:
    """The same start-up path as the process (``cmcp_enclave.startup.start``), in this process.

    Returns a ``cmcp_enclave.enclave.Enclave`` on the simulated TEE with an honest launcher;
    ``gpus`` (a ``cmcp_enclave.gpu.GpuProvider``) puts GPUs beside it, as ``--gpu`` does.
    """
    data = render_initdata(bundle_dir, audience=audience, route=route, gateway_keys=gateway_keys)
    path = Path(workdir) / f"initdata-{time.monotonic_ns()}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    provider = with_gpus(SimulatedProvider(initdata.tdx_mrconfigid(data).hex()), gpus)
    return start(bundle_dir=bundle_dir, initdata_path=path, provider=provider, limits=limits,
                 operator_keys=operator_keys)


def carried(enclave: Enclave, since: int | None = None) -> list[bytes]:
    """The entries one answer carries, taken and acknowledged as the gRPC server and a gateway
    that stored them do; without the acknowledgement the enclave keeps them (ADR 0033)."""
    delivery = enclave.take_audit(since)
    enclave.acknowledge_audit([delivery.id])
    return delivery.entries
