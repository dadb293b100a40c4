"""The Kata agent launch policy: a Rego document the agent evaluates for every request the host sends.

It is measured inside initdata, so it is the guest's only defence against a host that changes the
pod after the operator rendered it. Everything the host could vary is pinned from the exact pod
spec the operator creates (:class:`LaunchSpec`). Values enter the Rego as **one JSON data literal**
(``expected := <json.dumps>``) and fixed rules compare the input against it, so no string a route
author writes can ever become Rego source.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from cmcp_core.digest import tagged_sha256

# <registry[:port]>/<path>@sha256:<64 hex>, lowercase, no tag; the CRD and chart schema carry it too.
_COMPONENT = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
IMAGE_DIGEST_PATTERN = rf"^{_COMPONENT}(?::[0-9]+)?(?:/{_COMPONENT})*@sha256:[0-9a-f]{{64}}$"
IMAGE_DIGEST_RE = re.compile(IMAGE_DIGEST_PATTERN)
SHARED_CONTAINERS = "/run/kata-containers/shared/containers/"
PAUSE_IMAGE = "registry.k8s.io/pause@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097"
PAUSE_ARGS = ("/pause",)
# The mounts containerd and the kubelet add to every container; the OCI type is pinned with them.
RUNTIME_MOUNTS: tuple[tuple[str, str], ...] = (
    ("/proc", "proc"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"), ("/dev/mqueue", "mqueue"),
    ("/sys", "sysfs"), ("/sys/fs/cgroup", "cgroup"), ("/etc/hosts", "bind"),
    ("/dev/shm", "bind"),  # noqa: S108 - a mount destination in the guest, not a temp file
    ("/etc/hostname", "bind"), ("/etc/resolv.conf", "bind"), ("/dev/termination-log", "bind"),
)
NAMESPACES = ("ipc", "uts", "mount")


class LaunchPolicyError(ValueError):
    """A launch spec the policy cannot pin safely (an image that is not a digest)."""


def require_digest(image: str) -> str:
    """The operator and its webhook pin images by digest only: a tag can be re-pointed by a registry."""
    if not IMAGE_DIGEST_RE.fullmatch(image):  # fullmatch: `$` alone would let a trailing newline in
        raise LaunchPolicyError(f"enclave image must be <name>@sha256:<64 lowercase hex>, got {image!r}")
    return image


@dataclass(frozen=True)
class EnvRule:
    """One environment variable: an exact value, or (for runtime-supplied values) a full-match pattern."""

    name: str
    value: str | None = None
    pattern: str | None = None

    def to_json(self) -> dict[str, str]:
        if self.value is not None:
            return {"name": self.name, "exact": f"{self.name}={self.value}"}
        return {"name": self.name, "pattern": f"^{re.escape(self.name)}={self.pattern or ''}$"}


@dataclass(frozen=True)
class LaunchSpec:
    """What the operator's pod spec makes the runtime send for the enclave container."""

    image: str
    args: tuple[str, ...]
    env: tuple[EnvRule, ...]
    container_name: str = "enclave"
    namespace: str | None = None
    cwd: str = "/"
    uid: int = 65532
    gid: int = 65532
    mounts: tuple[tuple[str, bool], ...] = ()  # (destination, read-only) of the pod's volumeMounts
    pause_image: str = PAUSE_IMAGE

    def expected(self) -> dict[str, Any]:
        """The JSON data the rules compare against; any string is safe here, it is data."""
        mounts = [{"destination": d, "type": t, "readonly": False} for d, t in RUNTIME_MOUNTS]
        mounts += [{"destination": d, "type": "bind", "readonly": ro} for d, ro in self.mounts]
        return {
            "image": self.image,
            "container_name": self.container_name,
            "namespace": self.namespace,
            "args": list(self.args),
            "env": [rule.to_json() for rule in self.env],
            "cwd": self.cwd,
            "uid": self.uid,
            "gid": self.gid,
            "mounts": mounts,
            "namespaces": sorted(NAMESPACES),
            "pause": {"image": self.pause_image, "args": list(PAUSE_ARGS)},
            "shared_containers": SHARED_CONTAINERS,
        }


# Fixed rules. Nothing in here is formatted: the only variable part is the JSON document appended.
RULES = r"""package agent_policy

import future.keywords.every
import future.keywords.if
import future.keywords.in

default AddARPNeighborsRequest := true
default AddSwapRequest := false
default CloseStdinRequest := false
default CopyFileRequest := false
default CreateContainerRequest := false
default CreateSandboxRequest := false
default DestroySandboxRequest := true
default ExecProcessRequest := false
default GetMetricsRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default MemHotplugByProbeRequest := false
default OnlineCPUMemRequest := true
default PauseContainerRequest := false
default PullImageRequest := true
default ReadStreamRequest := true
default RemoveContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default ReseedRandomDevRequest := false
default ResumeContainerRequest := false
default SetGuestDateTimeRequest := false
default SetPolicyRequest := false
default SignalProcessRequest := true
default StartContainerRequest := true
default StartTracingRequest := false
default StatsContainerRequest := true
default StopTracingRequest := false
default TtyWinResizeRequest := false
default UpdateContainerRequest := false
default UpdateEphemeralMountsRequest := false
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default WaitProcessRequest := true
default WriteStreamRequest := false

# --- CreateSandbox: no guest hooks, no kernel modules ---------------------------------------
CreateSandboxRequest if {
    count(object.get(input, "kernel_modules", [])) == 0
    object.get(input, "guest_hook_path", "") == ""
}

# --- CreateContainer: exactly the pause container and the enclave container ---------------
CreateContainerRequest if {
    pause_container
}

CreateContainerRequest if {
    enclave_container
}

no_hooks if {
    hooks := object.get(input.OCI, "Hooks", null)
    hooks == null
}

no_hooks if {
    hooks := object.get(input.OCI, "Hooks", null)
    hooks != null
    every _, stage in hooks { count(stage) == 0 }
}

no_capabilities if {
    caps := object.get(input.OCI.Process, "Capabilities", null)
    caps == null
}

no_capabilities if {
    caps := object.get(input.OCI.Process, "Capabilities", null)
    caps != null
    every _, set in caps { count(set) == 0 }
}

pause_container if {
    input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox"
    input.OCI.Annotations["io.kubernetes.cri.image-name"] == expected.pause.image
    input.OCI.Process.Args == expected.pause.args
    input.OCI.Process.Terminal == false
    no_hooks
    every m in input.OCI.Mounts { runtime_mount(m) }
    every e in input.OCI.Process.Env { startswith(e, "PATH=") }
    count(object.get(input, "storages", [])) == 0
}

enclave_container if {
    input.OCI.Annotations["io.kubernetes.cri.container-type"] == "container"
    input.OCI.Annotations["io.kubernetes.cri.container-name"] == expected.container_name
    namespace_ok
    input.OCI.Annotations["io.kubernetes.cri.image-name"] == expected.image
    input.OCI.Process.Args == expected.args
    input.OCI.Process.Terminal == false
    input.OCI.Process.Cwd == expected.cwd
    input.OCI.Process.User.UID == expected.uid
    input.OCI.Process.User.GID == expected.gid
    every g in object.get(input.OCI.Process.User, "AdditionalGids", []) { g == expected.gid }
    input.OCI.Root.Readonly == true
    input.OCI.Process.NoNewPrivileges == true
    no_capabilities
    no_hooks
    env_exact
    mounts_exact
    namespaces_exact
    storages_ok
}

namespace_ok if {
    expected.namespace == null
}

namespace_ok if {
    input.OCI.Annotations["io.kubernetes.cri.sandbox-namespace"] == expected.namespace
}

# Every variable matches one rule, and every rule is matched once: nothing added, nothing missing.
env_matches(e, rule) if {
    rule.exact == e
}

env_matches(e, rule) if {
    regex.match(rule.pattern, e)
}

env_exact if {
    env := input.OCI.Process.Env
    count(env) == count(expected.env)
    every e in env { count([r | some r in expected.env; env_matches(e, r)]) == 1 }
    every r in expected.env { count([e | some e in env; env_matches(e, r)]) == 1 }
}

runtime_mount(m) if {
    some x in expected.mounts
    x.readonly == false
    m.destination == x.destination
    m.type_ == x.type
}

pinned_mount(m) if {
    some x in expected.mounts
    m.destination == x.destination
    m.type_ == x.type
    source_ok(m)
    readonly_ok(m, x)
}

# Kernel filesystems have no source path; every bind comes from the guest's own shared tree.
source_ok(m) if {
    m.type_ != "bind"
}

source_ok(m) if {
    m.type_ == "bind"
    startswith(m.source, "/run/kata-containers/")
    not contains(m.source, "..")
}

readonly_ok(m, x) if {
    x.readonly == false
}

readonly_ok(m, x) if {
    x.readonly == true
    "ro" in m.options
}

mounts_exact if {
    every m in input.OCI.Mounts { pinned_mount(m) }
    count({m.destination | some m in input.OCI.Mounts}) == count(input.OCI.Mounts)
}

namespaces_exact if {
    got := sort([n.Type | some n in input.OCI.Linux.Namespaces])
    got == expected.namespaces
    every n in input.OCI.Linux.Namespaces { object.get(n, "Path", "") == "" }
}

storages_ok if {
    every s in object.get(input, "storages", []) {
        startswith(s.mount_point, "/run/kata-containers/")
        not contains(s.mount_point, "..")
        s.driver in {"local", "virtio-fs", "ephemeral", "watchable-bind"}
    }
}

# --- CopyFile: only below the shared containers path, no `..`, no symlink leaving it -------
CopyFileRequest if {
    startswith(input.path, expected.shared_containers)
    path_clean(input.path)
    not is_symlink
}

CopyFileRequest if {
    startswith(input.path, expected.shared_containers)
    path_clean(input.path)
    is_symlink
    target := object.get(input, "data", [])
    count(target) > 0
    target[0] != 47
    not dotdot_segment(target)
}

path_clean(p) if {
    rest := substring(p, count(expected.shared_containers), -1)
    rest != ""
    every seg in split(rest, "/") { seg != ""; seg != "."; seg != ".." }
}

is_symlink if {
    bits.and(object.get(input, "file_mode", 0), 61440) == 40960
}

# A `..` path segment in a symlink target given as bytes (46 is '.', 47 is '/').
dotdot_segment(t) if {
    some i
    t[i] == 46
    t[i + 1] == 46
    segment_start(t, i)
    segment_end(t, i + 2)
}

segment_start(t, i) if { i == 0 }

segment_start(t, i) if { t[i - 1] == 47 }

segment_end(t, j) if { j == count(t) }

segment_end(t, j) if { t[j] == 47 }
"""


def render(spec: LaunchSpec) -> str:
    """The policy text: the fixed rules plus ``expected`` as one JSON literal (never interpolated)."""
    data = json.dumps(spec.expected(), sort_keys=True, ensure_ascii=True)
    return f"{RULES}\nexpected := {data}\n"


def digest(policy: str) -> str:
    """What relying parties compare: ``sha256:<hex>`` of the exact policy text in initdata."""
    return tagged_sha256(policy.encode("utf-8"))


def rules_digest() -> str:
    """What a release manifest pins: the rules are fixed per release, the data differs per pod."""
    return digest(RULES)


_DATA_PREFIX = "\nexpected := "


def split(policy: str) -> tuple[str, dict[str, Any]]:
    """The rules and the ``expected`` data of a policy :func:`render` produced, or an error.

    Only the exact shape ``render`` writes is accepted, so a policy with extra rules after the
    data, or data that is not one JSON object, never reads as a release's policy."""
    rules, sep, tail = policy.rpartition(_DATA_PREFIX)
    if not sep or not tail.endswith("\n"):
        raise LaunchPolicyError("policy does not end in one `expected := <JSON>` line")
    try:
        data = json.loads(tail[:-1])
    except json.JSONDecodeError as exc:
        raise LaunchPolicyError(f"policy data is not JSON: {exc.msg}") from exc
    if not isinstance(data, dict) or "\n" in tail[:-1]:
        raise LaunchPolicyError("policy data must be one JSON object on one line")
    return rules, data
