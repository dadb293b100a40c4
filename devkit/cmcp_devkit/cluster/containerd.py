"""The real node's own containerd: its configuration and the ``ctr`` calls the dev kit needs.

Why its own: root, state, socket, runc root, netns mounts and the ``opt`` dir all live under the
node's directories (see ``node.NodePaths``), never at containerd's defaults (``/var/lib/containerd``,
``/run/containerd``), so a machine's own containerd is left alone and ``cluster down`` can remove
everything by removing those directories.

Settings this kind of machine needs (found by the real-kubelet probe):

* ``restrict_oom_score_adj = true``: root here lacks CAP_SYS_RESOURCE; without it every sandbox
  fails with "can't get final child's PID from pipe" (a negative oom_score_adj is EACCES);
* ``SystemdCgroup = false`` (no systemd; the kubelet's cgroup driver is cgroupfs), ``disable_apparmor``;
* no registry is reachable: the sandbox image is imported from an archive (``binaries.PAUSE_IMAGE``).

Every RuntimeClass handler (``kata-qemu-tdx``, ``kata-qemu-snp``) maps to runc and passes the
pod's ``io.katacontainers.*`` annotations into the OCI spec (``pod_annotations``), where Kata's
shim would read them: the pods run unchanged, only without a VM. Each handler may have a base
runtime spec (:func:`hooked_base_spec`: containerd's default spec plus OCI hooks), which is how
the confidential-node stand-in's hook (``tsm_hook.py``) plays the hypervisor for that handler only.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KATA_ANNOTATIONS = "io.katacontainers.*"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins


@dataclass(frozen=True)
class ContainerdPaths:
    """Where one containerd keeps its data (``root``), runtime state (``state``) and socket."""

    root: Path
    state: Path
    socket: Path
    cni_conf_dir: Path


def _q(value: object) -> str:
    """A TOML basic string (JSON string escapes are valid TOML for these values)."""
    return json.dumps(str(value))


def hooked_base_spec(default_spec: dict[str, Any], hooks: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``default_spec`` (``ctr oci spec``: what the CRI builds on) with ``hooks`` added per stage."""
    spec: dict[str, Any] = json.loads(json.dumps(default_spec))
    for stage, entries in hooks.items():
        spec.setdefault("hooks", {}).setdefault(stage, []).extend(entries)
    return spec


def containerd_config(paths: ContainerdPaths, sandbox_image: str, handlers: tuple[str, ...],
                      base_specs: dict[str, Path] | None = None) -> str:
    """containerd 1.6 config (version 2) for the real node; ``handlers`` are RuntimeClass handlers,
    ``base_specs`` their base runtime spec files (handlers without one get containerd's default)."""
    base_specs = base_specs or {}
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f"root = {_q(paths.root)}",
        f"state = {_q(paths.state)}",
        "oom_score = 0",
        "",
        "[grpc]",
        f"  address = {_q(paths.socket)}",
        "",
        '[plugins."io.containerd.internal.v1.opt"]',
        f"  path = {_q(paths.root / 'opt')}",
        "",
        f"[{cri}]",
        f"  sandbox_image = {_q(sandbox_image)}",
        "  disable_apparmor = true",
        "  enable_selinux = false",
        "  restrict_oom_score_adj = true",
        "  netns_mounts_under_state_dir = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
    ]
    for name in ("runc", *handlers):
        lines += [
            "",
            f"[{cri}.containerd.runtimes.{_q(name)}]",
            '  runtime_type = "io.containerd.runc.v2"',
        ]
        if name != "runc":
            lines.append(f"  pod_annotations = [{_q(KATA_ANNOTATIONS)}]")
        if name in base_specs:
            lines.append(f"  base_runtime_spec = {_q(base_specs[name])}")
        lines += [
            f"[{cri}.containerd.runtimes.{_q(name)}.options]",
            "  SystemdCgroup = false",
            f"  Root = {_q(paths.state / 'runc')}",
        ]
    lines += [
        "",
        f"[{cri}.cni]",
        f"  bin_dir = {_q(CNI_BIN_DIR)}",
        f"  conf_dir = {_q(paths.cni_conf_dir)}",
        "  max_conf_num = 1",
        "",
    ]
    return "\n".join(lines)


def archive_images(archive: Path) -> list[tuple[str, str]]:
    """(name, manifest digest) of each named image in an OCI archive, as ``ctr images import`` names it
    (the ``io.containerd.image.name`` annotation, else a full ``org.opencontainers.image.ref.name``)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        index = json.load(member) if member is not None else {}
    found = []
    for manifest in index.get("manifests") or []:
        notes = manifest.get("annotations") or {}
        name = notes.get("io.containerd.image.name") or notes.get("org.opencontainers.image.ref.name", "")
        if "/" in name:
            found.append((name, str(manifest["digest"])))
    return found


def digest_reference(name: str, digest: str) -> str:
    """``registry/repo:tag`` -> ``registry/repo@<digest>`` (a registry host's port is not a tag)."""
    repo = name.split("@", 1)[0]
    head, _, last = repo.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}@{digest}"


class CtrError(RuntimeError):
    """A ``ctr`` call failed; the message carries its stderr."""


@dataclass(frozen=True)
class Ctr:
    """``ctr`` against one containerd socket, in the CRI's ``k8s.io`` namespace."""

    socket: Path
    namespace: str = "k8s.io"
    binary: str = "ctr"

    def run(self, *args: str, timeout: float = 120.0) -> str:
        argv = [self.binary, "--address", str(self.socket), "--namespace", self.namespace, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise CtrError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def import_archive(self, archive: Path) -> list[str]:
        """Import an OCI image archive (built elsewhere) so pods on this node can run it; returns the
        references pods can name it by.

        Each named image is also recorded as ``repo@sha256:<manifest digest>``, as a pull by digest
        would record it: the CRI resolves a pod's image only by the names containerd holds, and a user's
        chart names our images by repository and digest (``imagePullPolicy: IfNotPresent`` then finds
        it here and pulls nothing)."""
        self.run("images", "import", str(archive), timeout=300.0)
        references = []
        for name, digest in archive_images(archive):
            by_digest = digest_reference(name, digest)
            self.run("images", "tag", "--force", name, by_digest)
            references += [name, by_digest]
        return references

    def images(self) -> set[str]:
        return set(self.run("images", "list", "--quiet").split())

    def default_spec(self) -> dict[str, Any]:
        """containerd's default OCI spec (``ctr oci spec``; no daemon needed), the base the CRI extends."""
        spec: dict[str, Any] = json.loads(self.run("oci", "spec", timeout=30.0))
        return spec

    def container_info(self, container_id: str) -> dict[str, Any]:
        """containerd's record of a container: ``Spec`` is the OCI runtime spec runc got."""
        info: dict[str, Any] = json.loads(self.run("containers", "info", container_id))
        return info

    def task_pid(self, container_id: str) -> int:
        """Host pid of the container's main process (``ctr tasks ls``: TASK PID STATUS)."""
        for line in self.run("tasks", "list").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == container_id:
                return int(parts[1])
        raise CtrError(f"no task for container {container_id}")
