"""Run a built image's console script as a real container: runc, a read-only root file system,
user 65532, no capabilities, and only the writable mounts the chart (or the operator, for the
enclave) declares.

The root is buildah's mount of the image (``buildah from oci-archive:…``), given to runc
read-only; the network namespace is the host's, so the test reaches the container on
127.0.0.1. The process is the container's PID 1, and ``runc kill`` sends SIGTERM from outside,
as the kubelet's runtime does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

needs_runc = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None or shutil.which("buildah") is None,
    reason="running an image needs root, runc and buildah")

USER = 65532
# What each container may write, as the chart's pod templates and the operator's enclave pod give
# it (tests/unit/test_chart_static.py checks the chart against this): everything else is read-only.
WRITABLE: dict[str, tuple[str, ...]] = {
    # none: its bundle and initdata volumes are read-only and there is no /tmp; only the
    # runtime's /dev/shm (every container's) is writable (cmcp_enclave.workers.ensure_temp_dir)
    "enclave": (),
    # tmp emptyDir, the audit store's volume, the TDX collateral cache
    "gateway": ("/tmp", "/var/lib/cmcp-gateway", "/var/cache/cmcp/tdx-collateral"),
    "guard": (),  # the chart does not run it; nothing is needed
    # tmp emptyDir (the webhook's minted certificates), the TDX collateral cache
    "operator": ("/tmp", "/var/cache/cmcp/tdx-collateral"),
}


@dataclass
class Container:
    id: str
    process: subprocess.Popen[bytes]  # ``runc run``: its exit status is the container's
    log: Path
    bundle: Path
    buildah_container: str
    _cleaned: bool = field(default=False, repr=False)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the running container, as its user."""
        return subprocess.run(["runc", "exec", "--user", f"{USER}:{USER}", self.id, *argv],
                              capture_output=True, text=True, timeout=60)

    def stop(self, within: float) -> int | None:
        """SIGTERM to PID 1 and wait at most ``within`` seconds: its exit status, or ``None``."""
        subprocess.run(["runc", "kill", self.id, "TERM"], capture_output=True)
        try:
            return self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.remove()

    def remove(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        subprocess.run(["runc", "delete", "--force", self.id], capture_output=True)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        subprocess.run(["buildah", "umount", self.buildah_container], capture_output=True)
        subprocess.run(["buildah", "rm", self.buildah_container], capture_output=True)


def _image_config(buildah_container: str) -> dict[str, object]:
    out = subprocess.run(["buildah", "inspect", "--type", "container", buildah_container],
                         capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out)["OCIv1"]["config"])


def run_image(archive: str, name: str, args: Sequence[str], workdir: Path, *,
              binds: Sequence[tuple[Path, str]] = (), env: dict[str, str] | None = None) -> Container:
    """Start the image's entrypoint with ``args``. ``binds`` are read-only host paths; the image's
    :data:`WRITABLE` paths are fresh writable tmpfs (as an emptyDir is)."""
    buildah_container = subprocess.run(["buildah", "from", "--quiet", f"oci-archive:{archive}"],
                                       capture_output=True, text=True, check=True).stdout.strip()
    rootfs = subprocess.run(["buildah", "mount", buildah_container],
                            capture_output=True, text=True, check=True).stdout.strip()
    image = _image_config(buildah_container)
    bundle = workdir / f"oci-{name}"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").unlink(missing_ok=True)  # runc spec writes no file over one
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": rootfs, "readonly": True}
    process = spec["process"]
    process["args"] = [*image["Entrypoint"], *args]  # type: ignore[misc]
    process["terminal"] = False
    process["cwd"] = "/"
    process["user"] = {"uid": USER, "gid": USER}
    process["env"] = [*image.get("Env", []), *(f"{k}={v}" for k, v in (env or {}).items())]  # type: ignore[misc]
    process["capabilities"] = {kind: [] for kind in ("bounding", "effective", "permitted", "ambient")}
    process["noNewPrivileges"] = True
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    mounts = spec["mounts"]
    for path in WRITABLE[name]:
        mounts.append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777", "size=64m"]})
    for source, destination in binds:
        mounts.append({"destination": destination, "type": "bind", "source": str(source),
                       "options": ["rbind", "ro"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    container_id = f"cmcp-test-{name}-{os.getpid()}-{time.monotonic_ns()}"
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        runner = subprocess.Popen(["runc", "run", "--bundle", str(bundle), container_id],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    return Container(container_id, runner, log, bundle, buildah_container)
