"""The OCI hook that plays the hypervisor for the real node's ``kata-qemu-*`` handlers.

On a Kata node the runtime decodes the pod's ``cc_init_data`` annotation, refuses the sandbox when
it does not decode, and has the TEE measure it (TDX ``MRCONFIGID`` / SNP ``HOST_DATA``) before the
guest boots; the guest kernel then answers configfs-tsm reports carrying that measurement. Here
runc runs the pod, so this hook (a ``createContainer`` hook in each kata handler's base runtime
spec, see ``containerd.py``) does the host's half, once per container:

1. decodes and parses the annotation the CRI passed into the OCI spec (``pod_annotations``) and
   fails the container when it does not (as Kata fails the sandbox);
2. registers those exact bytes with the stand-in (:mod:`.tsm_standin`) under the container id,
   with the kernel parameters the host adds to the guest's command line (below);
3. bind-mounts the stand-in's tree for that container onto ``<rootfs>/sys/kernel``, so the
   container sees ``/sys/kernel/config/tsm/report`` and nothing else of the stand-in.

``createContainer`` hooks run inside the container's mount namespace before ``pivot_root``
(host paths still visible), so the mount is the container's own and dies with it. ``poststop``
removes the registration. Nothing else reaches the container: no file, no variable.

Why kernel parameters: the host, not the guest, picks how the guest boots, and the attestation's
answer to a host that boots another guest is the boot measurements (RTMR0-2, SNP MEASUREMENT) the
release pins. The
smallest host-side knob a Kata host really has is ``io.katacontainers.config.hypervisor.kernel_params``
(extra guest kernel parameters, appended by the runtime to the command line); the firmware measures
the command line into RTMR2 (TDX), and an SNP launch digest covers its hash, so the stand-in extends
RTMR2 or changes MEASUREMENT with what this hook registers. A pod without the annotation boots the
genuine guest, whose RTMRs / MEASUREMENT the dev release pins.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
# extra guest kernel parameters a Kata host adds (the runtime's enable_annotations must allow it)
KERNEL_PARAMS_ANNOTATION = "io.katacontainers.config.hypervisor.kernel_params"
MS_BIND = 4096
# Where a guest's configfs lives: the stand-in's per-container tree holds config/tsm/report/.
GUEST_SYSFS_KERNEL = "sys/kernel"
PLATFORMS = ("tdx", "snp")
SERVED_PLATFORMS = ("tdx", "snp")  # the platforms the stand-in answers configfs-tsm for


class HookRefusal(Exception):
    """The container must not be created; the runtime reports the message."""


def registration_path(registry: Path, container_id: str) -> Path:
    if not container_id or "/" in container_id or container_id.startswith("."):
        raise HookRefusal(f"unusable container id {container_id!r}")
    return registry / container_id


class Registration(NamedTuple):
    """What the host launched one container with: its platform, the initdata it measured and the
    kernel parameters it added to the guest's command line ("": the genuine guest's)."""

    platform: str
    initdata: bytes
    kernel_params: str = ""


def register(registry: Path, container_id: str, platform: str, raw: bytes, kernel_params: str = "") -> None:
    """What the stand-in measures for this container; written whole or not at all."""
    path = registration_path(registry, container_id)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"platform": platform, "initdata": base64.b64encode(raw).decode(),
                               "kernel_params": kernel_params}))
    os.replace(tmp, path)


def registration(registry: Path, container_id: str) -> Registration | None:
    """What the hook registered for a container, or None."""
    try:
        doc = json.loads(registration_path(registry, container_id).read_text())
        return Registration(str(doc["platform"]), base64.b64decode(doc["initdata"], validate=True),
                            str(doc["kernel_params"]))
    except (OSError, ValueError, KeyError, TypeError, HookRefusal):
        return None


def measured_initdata(annotations: Mapping[str, str]) -> bytes | None:
    """The initdata bytes a Kata runtime would measure for these annotations (None: no initdata)."""
    # imported here: cmcp_core.initdata costs ~0.7 s of imports (its key handling), which every
    # sandbox and every poststop call (each a fresh process) would pay for nothing
    from cmcp_core import initdata

    value = annotations.get(initdata.ANNOTATION)
    if value is None:
        return None
    try:
        raw = initdata.decode_annotation(value)
        initdata.tdx_mrconfigid(raw)  # parses it and checks its digest fits MRCONFIGID
    except initdata.InitdataError as exc:
        raise HookRefusal(f"{initdata.ANNOTATION}: {exc}") from exc
    return raw


def _bind(source: Path, target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(str(source).encode(), str(target).encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise HookRefusal(f"bind mount {source} -> {target}: {os.strerror(err)}")


def _rootfs(state: Mapping[str, Any]) -> Path:
    bundle = Path(state["bundle"])
    spec = json.loads((bundle / "config.json").read_text())
    root = Path(spec["root"]["path"])
    return root if root.is_absolute() else bundle / root


def create_container(state: Mapping[str, Any], *, platform: str, mount: Path, registry: Path) -> str:
    """Register and mount the stand-in for one container; what was done, for the node's log."""
    annotations: Mapping[str, str] = state.get("annotations") or {}
    cid = str(state.get("id", ""))
    if annotations.get(CONTAINER_TYPE) == "sandbox":
        return f"{cid[:12]}: sandbox, nothing to do"
    raw = measured_initdata(annotations)
    if raw is None:
        return f"{cid[:12]}: no initdata annotation, no TSM (a Kata CoCo guest would have none either)"
    kernel_params = annotations.get(KERNEL_PARAMS_ANNOTATION, "")
    register(registry, cid, platform, raw, kernel_params)
    if platform not in SERVED_PLATFORMS:
        return f"{cid[:12]}: {platform} initdata of {len(raw)} bytes valid; no {platform} stand-in, no TSM"
    target = _rootfs(state) / GUEST_SYSFS_KERNEL
    if not target.is_dir():
        raise HookRefusal(f"{target} is not a directory (is sysfs mounted in the container?)")
    _bind(mount / cid, target)
    booted = f", kernel params added {kernel_params!r}" if kernel_params else ""
    return (f"{cid[:12]}: {platform} initdata of {len(raw)} bytes measured{booted}, "
            f"TSM under /{GUEST_SYSFS_KERNEL}")


def post_stop(state: Mapping[str, Any], *, registry: Path) -> str:
    cid = str(state.get("id", ""))
    with contextlib.suppress(HookRefusal):
        registration_path(registry, cid).unlink(missing_ok=True)
    return f"{cid[:12]}: unregistered"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cmcp-tsm-hook", description=__doc__)
    p.add_argument("stage", choices=("createContainer", "poststop"))
    p.add_argument("--platform", choices=PLATFORMS, required=True)
    p.add_argument("--mount", type=Path, required=True, help="the stand-in's FUSE mount point")
    p.add_argument("--registry", type=Path, required=True, help="where registrations are kept")
    p.add_argument("--log", type=Path, help="append one line per container here")
    args = p.parse_args(argv)
    try:
        state = json.load(sys.stdin)
        if args.stage == "createContainer":
            line = create_container(state, platform=args.platform, mount=args.mount, registry=args.registry)
        else:
            line = post_stop(state, registry=args.registry)
        code = 0
    except (HookRefusal, OSError, ValueError, KeyError) as exc:
        line, code = f"refused: {exc}", 1
        print(f"cmcp tsm hook: {exc}", file=sys.stderr)
    if args.log:
        with args.log.open("a") as fh:
            fh.write(f"{args.stage} {line}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
