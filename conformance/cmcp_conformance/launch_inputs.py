"""Kata agent requests for a measured launch policy, and regorus to answer them.

The launch policy in an enclave's initdata is the guest's only defence against a host that
changes the pod after the operator rendered it. The suite reads it from the attested initdata,
builds the requests the runtime would send for the pod the policy pins (genpolicy-shaped:
``CreateContainerRequest`` with an ``OCI`` spec and ``storages``, ``CreateSandboxRequest``,
``CopyFileRequest``, ``ExecProcessRequest``) and asks regorus — the Rego engine the Kata agent
embeds — what the agent would answer for the honest pod and for each injection a host could try.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import opa_eval

CID = "c" * 64  # a container id as containerd names it
POD_IP = "10.244.1.17"
# Values the runtime supplies for variables a policy pins by pattern (the image's and kubelet's).
RUNTIME_SAMPLES = (POD_IP, "10.96.0.1", "443", "tcp://10.96.0.1:443", "cmcp-enclave-7d9f8-abcde",
                   "3.11.11", "A035C8C19219BA821ECEA86B64E628F8D684696D", "9a" * 32)
S_IFLNK = 0o120000


class LaunchInputError(ValueError):
    """The policy's pinned values cannot be turned into an honest request (names which)."""


def _runtime_value(rule: Mapping[str, Any]) -> str:
    """``NAME=value`` for a pattern rule: the first sample the rule's full-match pattern admits."""
    name, pattern = str(rule["name"]), str(rule["pattern"])
    candidates = list(RUNTIME_SAMPLES)
    port = re.search(r":([0-9]+)\$$", pattern)
    if port:
        candidates.append(f"{POD_IP}:{port.group(1)}")
    for value in candidates:
        if re.fullmatch(pattern, f"{name}={value}"):
            return f"{name}={value}"
    raise LaunchInputError(f"no runtime sample value fits the pinned pattern of {name}")


def _env(expected: Mapping[str, Any]) -> list[str]:
    return [str(r["exact"]) if "exact" in r else _runtime_value(r) for r in expected["env"]]


def _mount(m: Mapping[str, Any]) -> dict[str, Any]:
    destination, kind = str(m["destination"]), str(m["type"])
    source = f"/run/kata-containers/shared/containers/{CID}-{destination.rsplit('/', 1)[1]}"
    return {"destination": destination, "type_": kind, "source": source if kind == "bind" else kind,
            "options": ["rbind", "ro"] if m.get("readonly") else []}


def honest_requests(expected: Mapping[str, Any]) -> dict[str, Any]:
    """What containerd and the Kata shim send the agent for the pod the policy's data pins."""
    annotations = {"io.kubernetes.cri.container-type": "container",
                   "io.kubernetes.cri.container-name": expected["container_name"],
                   "io.kubernetes.cri.image-name": expected["image"]}
    if expected.get("namespace") is not None:
        annotations["io.kubernetes.cri.sandbox-namespace"] = expected["namespace"]
    enclave = {
        "OCI": {
            "Annotations": annotations,
            "Process": {"Terminal": False, "Args": list(expected["args"]), "Env": _env(expected),
                        "Cwd": expected["cwd"],
                        "User": {"UID": expected["uid"], "GID": expected["gid"],
                                 "AdditionalGids": [expected["gid"]]},
                        "Capabilities": {k: [] for k in ("Bounding", "Effective", "Inheritable",
                                                         "Permitted", "Ambient")},
                        "NoNewPrivileges": True},
            "Root": {"Path": f"/run/kata-containers/{CID}/rootfs", "Readonly": True},
            "Mounts": [_mount(m) for m in expected["mounts"]],
            "Linux": {"Namespaces": [{"Type": n, "Path": ""} for n in expected["namespaces"]]},
            "Hooks": None,
        },
        "storages": [],
    }
    pause = {
        "OCI": {
            "Annotations": {"io.kubernetes.cri.container-type": "sandbox",
                            "io.kubernetes.cri.image-name": expected["pause"]["image"]},
            "Process": {"Terminal": False, "Args": list(expected["pause"]["args"]),
                        "Env": ["PATH=/usr/bin:/bin"], "Cwd": "/"},
            "Mounts": [{"destination": "/proc", "source": "proc", "type_": "proc", "options": []}],
            "Hooks": None,
        },
        "storages": [],
    }
    shared = str(expected["shared_containers"])
    return {
        "enclave": enclave,
        "pause": pause,
        "sandbox": {"hostname": "", "kernel_modules": [], "guest_hook_path": "", "storages": []},
        "copy": {"path": f"{shared}{CID}-0123456789abcdef-bundle/manifest.json",
                 "file_mode": 0o100644, "data": list(b"{}")},
        "exec": {"container_id": CID, "exec_id": "x", "process": {"Args": ["/bin/sh"]}},
    }


@dataclass(frozen=True)
class Probe:
    """One request the agent receives: which of the honest requests, under which agent method."""

    name: str
    request: str  # agent_policy rule, e.g. CreateContainerRequest
    body: str  # key of :func:`honest_requests`
    mutate: Callable[[dict[str, Any]], None] | None = None


def _env_add(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        env = body["OCI"]["Process"]["Env"]
        env[:] = [e for e in env if not e.startswith(f"{name}=")] + [f"{name}={value}"]
    return mutate


def _extra_host_mount(body: dict[str, Any]) -> None:
    body["OCI"]["Mounts"].append({"destination": "/opt/evil", "source": "/var/lib/attacker",
                                  "type_": "bind", "options": ["rbind", "rw"]})


def _other_container(body: dict[str, Any]) -> None:
    body["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = "sidecar"


def _capability(body: dict[str, Any]) -> None:
    for key in ("Bounding", "Effective", "Permitted"):
        body["OCI"]["Process"]["Capabilities"][key].append("CAP_SYS_ADMIN")


def _sandbox_label_other_image(body: dict[str, Any]) -> None:
    body["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = "docker.io/attacker/shell:latest"


def _copy_traversal(body: dict[str, Any]) -> None:
    body["path"] = "/run/kata-containers/shared/containers/../../../etc/ld.so.preload"


def _copy_symlink_out(body: dict[str, Any]) -> None:
    body["file_mode"], body["data"] = S_IFLNK | 0o777, list(b"/etc/ld.so.preload")


def _guest_hook(body: dict[str, Any]) -> None:
    body["guest_hook_path"] = "/usr/share/oci/hooks"


def _kernel_module(body: dict[str, Any]) -> None:
    body["kernel_modules"] = [{"name": "evil", "parameters": []}]


HONEST: tuple[Probe, ...] = (
    Probe("the enclave container as pinned", "CreateContainerRequest", "enclave"),
    Probe("the pause container", "CreateContainerRequest", "pause"),
    Probe("the sandbox", "CreateSandboxRequest", "sandbox"),
    Probe("a file copied under the shared containers path", "CopyFileRequest", "copy"),
)

INJECTIONS: tuple[Probe, ...] = (
    Probe("env LD_PRELOAD", "CreateContainerRequest", "enclave", _env_add("LD_PRELOAD", "/tmp/evil.so")),
    Probe("env PYTHONPATH", "CreateContainerRequest", "enclave", _env_add("PYTHONPATH", "/tmp/evil")),
    Probe("env PATH", "CreateContainerRequest", "enclave", _env_add("PATH", "/tmp/evil:/usr/bin")),
    Probe("env CMCP_*", "CreateContainerRequest", "enclave", _env_add("CMCP_SIM_MRTD", "00" * 48)),
    Probe("extra host mount", "CreateContainerRequest", "enclave", _extra_host_mount),
    Probe("another container", "CreateContainerRequest", "enclave", _other_container),
    Probe("a capability", "CreateContainerRequest", "enclave", _capability),
    Probe("sandbox-labelled container with another image", "CreateContainerRequest", "pause",
          _sandbox_label_other_image),
    Probe("CopyFile traversal", "CopyFileRequest", "copy", _copy_traversal),
    Probe("CopyFile symlink out of the shared path", "CopyFileRequest", "copy", _copy_symlink_out),
    Probe("guest hooks", "CreateSandboxRequest", "sandbox", _guest_hook),
    Probe("kernel modules", "CreateSandboxRequest", "sandbox", _kernel_module),
    Probe("exec into the enclave", "ExecProcessRequest", "exec"),
)


class AgentPolicy:
    """A rendered launch policy loaded into regorus (via ``opa_eval``)."""

    def __init__(self, policy: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cmcp-launch-policy-")
        self._path = Path(self._dir.name) / "policy.rego"
        self._path.write_text(policy, encoding="utf-8")

    def allows(self, request: str, body: Mapping[str, Any]) -> bool:
        engine = opa_eval.OpaEval(str(self._path), query=f"data.agent_policy.{request}")
        answer = engine.evaluate_parsed(json.dumps(body))
        if not isinstance(answer, bool):
            raise LaunchInputError(f"{request} did not evaluate to a boolean: {answer!r}")
        return answer

    def answer(self, probe: Probe, requests: Mapping[str, Any]) -> bool:
        body = copy.deepcopy(requests[probe.body])
        if probe.mutate is not None:
            probe.mutate(body)
        return self.allows(probe.request, body)

    def close(self) -> None:
        self._dir.cleanup()
