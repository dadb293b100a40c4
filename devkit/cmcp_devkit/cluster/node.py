"""A real node for the local cluster: a kubelet running pods through its own containerd and runc.

Why: images, users, read-only roots, PID 1 signals and the OCI spec a Kata shim would read only
behave like production with the real kubelet (v1.35.4, from the same pinned module as the
apiserver), containerd and runc. ``LocalCluster(real_node=True)`` (``cluster up --real-node``)
starts one: the only node of the local cluster that runs pods (the others are registered-only,
``registered_nodes.py``).

What it changes on the host, and what :func:`clean_host` (run by ``stop``, by ``cluster down``
and before every start, so a crashed run's leftovers go) takes back:

* processes: containerd, the kubelet, containerd-shim-runc-v2, the NetworkPolicy engine
  ``cmcp-netpol`` (``netpol.py``), the TSM stand-in and the containers (the shims detach, so a
  crash leaves them running): killed via their cmdlines and the kubepods cgroups;
* the engine's packet steering, the iptables chain ``mangle CMCP-NETPOL`` with its jump from
  ``POSTROUTING``, and its nftables table ``inet cmcp-e2e-netpol`` where the kernel lets it write
  one (a killed engine leaves them, and they drop new pod connections: fail closed until removed);
* mounts under the node's dirs: the kubelet bind-mounts its root dir onto itself, volumes
  (tmpfs), container rootfs overlays, sandbox /dev/shm, the pods' network namespaces, and the
  TSM stand-in's FUSE mount (a dead daemon leaves it behind, answering ENOTCONN: detached);
* cgroups ``/sys/fs/cgroup/<controller>/kubepods`` (removed depth-first, after their processes);
* the kubelet's iptables chains ``KUBE-FIREWALL``, ``KUBE-KUBELET-CANARY``, ``KUBE-IPTABLES-HINT``
  (IPv4 and IPv6) and the rules jumping to them;
* sysctls the kubelet sets (``vm.overcommit_memory``, ``kernel.panic``, …): restored to the
  values recorded before it started;
* the bridge ``cmcpnode0``, the node's entries in libcni's result cache ``/var/lib/cni/results``,
  its shims' sockets in ``/run/containerd/s`` (a path containerd 1.6 fixes), the kubelet's
  ``/var/lib/kubelet/device-plugins/kubelet.sock`` (a path it fixes despite ``--root-dir``) and the
  ``/var/log/containers`` links into the node's pod logs (each dir removed too once empty);
* the node's dirs :data:`DATA_DIR` and :data:`RUN_DIR`.

One real node per machine: kubepods cgroups and the kubelet's iptables chains are host-wide.
``owner.pid`` in :data:`RUN_DIR` says who runs it. A second start waits for the machine's node
lock (:data:`NODE_LOCK`, an ``flock`` the kernel drops when its holder dies) for up to
``CMCP_E2E_NODE_WAIT_SECONDS`` (default 0: fail at once with a clear message), so several
engineers' test runs on one machine queue instead of failing.

Network: the bridge holds the node IP ``198.19.N.65/26`` (N = the cluster's pod-network index,
``podnet.py``), pods get ``198.19.N.66-126`` from host-local IPAM, their default route is the
bridge, so they reach the apiserver on ``198.19.N.1``; the host forwards nothing, no NAT: no pod
traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import netpol
from .binaries import NETPOL_PROGRAM
from .containerd import ContainerdPaths, Ctr, containerd_config, hooked_base_spec

DATA_DIR = Path("/var/lib/cmcp-e2e-node")
RUN_DIR = Path("/run/cmcp-e2e-node")
NODE_LOCK = Path("/run/cmcp-e2e-node.lock")  # beside RUN_DIR: clean_host removes RUN_DIR
BRIDGE = "cmcpnode0"
CNI_NETWORK = "cmcp-e2e-node"
CNI_CACHE = Path("/var/lib/cni")
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's fixed ContainerLogsDir
# the device-plugin registration socket ignores --root-dir (pluginapi.DevicePluginPath is fixed)
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 puts shim sockets here, whatever its state dir
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
KUBE_CHAIN_PREFIX = "KUBE-"  # the kubelet's and kube-proxy's chains (KUBE-SERVICES, KUBE-SVC-*, ...)
# the node's own FORWARD guard: pod traffic may be forwarded from the bridge only back into it
FORWARD_GUARD = "CMCP-NODE-FORWARD"
KUBE_PROXY_HEALTHZ = "http://127.0.0.1:10256/healthz"  # 200 once its rules are synced
# What the kubelet's container manager writes (setupKernelTunables) when protectKernelDefaults is off,
# and what kube-proxy may write (its config below asks it to leave conntrack and route_localnet alone).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
REQUIRED_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip")
MNT_DETACH = 2
NODE_PROGRAMS = frozenset({"containerd", "kubelet", "kube-proxy", "containerd-shim-runc-v2", NETPOL_PROGRAM})
# python -m programs of the node (by name: importing the stand-in loads libfuse, which only it needs)
TSM_STANDIN_MODULE = "cmcp_devkit.cluster.tsm_standin"
TSM_HOOK_MODULE = "cmcp_devkit.cluster.tsm_hook"
NODE_MODULES = frozenset({TSM_STANDIN_MODULE})
# RuntimeClass handler -> the TEE the confidential-node stand-in plays for it (tsm_hook.py)
KATA_HANDLER_TEE = {"kata-qemu-tdx": "tdx", "kata-qemu-snp": "snp"}


class NodeError(RuntimeError):
    """The real node cannot run here or did not come up; the message says why."""


@dataclass(frozen=True)
class NodePaths:
    """Every file and directory of the real node, under one data dir and one run dir."""

    data: Path = DATA_DIR
    run: Path = RUN_DIR

    @property
    def owner(self) -> Path:
        return self.run / "owner.pid"

    @property
    def socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.data / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.data / "cni" / "net.d"

    @property
    def cni_state(self) -> Path:
        return self.data / "cni" / "state"

    @property
    def kubelet_root(self) -> Path:
        return self.data / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.data / "kubelet-config.yaml"

    @property
    def kubeconfig(self) -> Path:
        return self.data / "kubelet.kubeconfig"

    @property
    def kube_proxy_config(self) -> Path:
        return self.data / "kube-proxy-config.yaml"

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        return self.data / "kube-proxy.kubeconfig"

    @property
    def netpol_kubeconfig(self) -> Path:
        return self.data / "netpol.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.data / "pod-logs"

    @property
    def sysctls(self) -> Path:
        return self.data / "sysctls.json"

    @property
    def tsm_mount(self) -> Path:
        """The TSM stand-in's FUSE mount (one per node; the hook binds a container's part of it)."""
        return self.run / "tsm"

    @property
    def tsm_registry(self) -> Path:
        """Per container: the initdata the hook decoded from its annotation, for the stand-in."""
        return self.run / "tsm-registry"

    @property
    def tsm_hook_log(self) -> Path:
        return self.data / "tsm-hook.log"

    def base_spec(self, handler: str) -> Path:
        return self.data / f"base-spec-{handler}.json"

    def containerd(self) -> ContainerdPaths:
        return ContainerdPaths(
            root=self.data / "containerd",
            state=self.run / "containerd",
            socket=self.socket,
            cni_conf_dir=self.cni_conf_dir,
        )


@dataclass(frozen=True)
class NodeNet:
    """The real node's addresses inside the cluster's 198.19.N.0/24 (see the module doc)."""

    index: int

    @property
    def subnet(self) -> str:
        return f"198.19.{self.index}.64/26"

    @property
    def node_ip(self) -> str:
        return f"198.19.{self.index}.65"

    @property
    def range_start(self) -> str:
        return f"198.19.{self.index}.66"

    @property
    def range_end(self) -> str:
        return f"198.19.{self.index}.126"


# ------------------------------------------------------------------ configuration (pure)
def cni_conflist(net: NodeNet, paths: NodePaths) -> str:
    """Bridge + host-local IPAM; the bridge already holds the gateway (node) IP; no NAT, no portmap."""
    doc = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.cni_state),
                    "ranges": [
                        [
                            {
                                "subnet": net.subnet,
                                "rangeStart": net.range_start,
                                "rangeEnd": net.range_end,
                                "gateway": net.node_ip,
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0", "gw": net.node_ip}],
                },
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def kubelet_config(net: NodeNet, paths: NodePaths, ca_file: Path) -> str:
    """KubeletConfiguration for this kind of machine (cgroup v1, no systemd, swap, no DNS)."""
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # 1.35 refuses cgroup v1 unless told
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "imageServiceEndpoint": f"unix://{paths.socket}",
        "address": net.node_ip,  # the apiserver reaches the kubelet API (logs, exec) here
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},  # the apiserver's kubelet client cert
        },
        "authorization": {"mode": "AlwaysAllow"},  # any client that got past x509 is the apiserver
        "podLogsDir": str(paths.pod_logs),
        "resolvConf": "",  # pods get no nameserver: nothing may leave the machine
        "clusterDNS": [],
        "serializeImagePulls": False,
        "maxPods": 50,  # the /26 holds 61 pod IPs
        "registerNode": True,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 98,
        "imageGCLowThresholdPercent": 95,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kubelet_argv(kubelet: Path, name: str, net: NodeNet, paths: NodePaths) -> list[str]:
    return [
        str(kubelet),
        f"--config={paths.kubelet_config}",
        f"--kubeconfig={paths.kubeconfig}",
        f"--root-dir={paths.kubelet_root}",
        f"--cert-dir={paths.kubelet_root / 'pki'}",
        f"--hostname-override={name}",
        f"--node-ip={net.node_ip}",
        "--v=1",
    ]


def kube_proxy_config(name: str, net: NodeNet, paths: NodePaths) -> str:
    """KubeProxyConfiguration: iptables mode for the node's pods, touching no host-wide setting it can
    leave alone (conntrack sizes and timeouts, route_localnet), listening on loopback only.

    ``masqueradeAll``: a pod reaching a Service backed by a pod on the same bridge would get the reply
    straight from that pod's IP (bridged, past the host's conntrack); masquerading makes it return
    through the host, which undoes the DNAT, with no br_netfilter needed."""
    doc = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(paths.kube_proxy_kubeconfig)},
        "hostnameOverride": name,
        "bindAddress": net.node_ip,
        "healthzBindAddress": KUBE_PROXY_HEALTHZ.split("/")[2],
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": net.subnet,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": [f"{net.node_ip}/32"],
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "syncPeriod": "30s",
                     "minSyncPeriod": "0s"},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kube_proxy_argv(kube_proxy: Path, paths: NodePaths) -> list[str]:
    return [str(kube_proxy), f"--config={paths.kube_proxy_config}", "--v=1"]


def forward_guard_rules() -> list[list[str]]:
    """``iptables`` argument lists that let the bridge forward only into itself (Service traffic that
    kube-proxy DNATs to a pod on the bridge) and drop the rest: no pod packet leaves the machine."""
    return [
        ["-N", FORWARD_GUARD],
        ["-A", FORWARD_GUARD, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
        ["-A", FORWARD_GUARD, "-i", BRIDGE, "-j", "DROP"],
        ["-I", "FORWARD", "1", "-j", FORWARD_GUARD],
    ]


def containerd_argv(paths: NodePaths) -> list[str]:
    return ["containerd", "--config", str(paths.containerd_config), "--log-level", "warn"]


def _python_path() -> str:
    """Where this process finds cmcp_core and cmcp_devkit: the hook and stand-in run the same code."""
    import cmcp_core
    import cmcp_devkit

    dirs = [str(Path(m.__file__ or "").resolve().parents[1]) for m in (cmcp_core, cmcp_devkit)]
    return os.pathsep.join(dict.fromkeys(dirs))


def tsm_standin_argv(paths: NodePaths) -> list[str]:
    return [sys.executable, "-m", TSM_STANDIN_MODULE, "--mount", str(paths.tsm_mount),
            "--registry", str(paths.tsm_registry)]


def tsm_hooks(paths: NodePaths, tee: str) -> dict[str, list[dict[str, Any]]]:
    """The OCI hooks that play the hypervisor for one kata handler (see ``tsm_hook.py``)."""
    def hook(stage: str) -> dict[str, Any]:
        args = [sys.executable, "-m", TSM_HOOK_MODULE, stage, "--platform", tee, "--mount",
                str(paths.tsm_mount), "--registry", str(paths.tsm_registry), "--log", str(paths.tsm_hook_log)]
        return {"path": sys.executable, "args": args, "env": [f"PYTHONPATH={_python_path()}"], "timeout": 60}

    return {"createContainer": [hook("createContainer")], "poststop": [hook("poststop")]}


# ------------------------------------------------------------------ host state
def missing_prerequisites() -> str | None:
    """Why a real node cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the real node needs root (kubelet, containerd, cgroups, iptables, bridges)"
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("/usr/lib/cni/bridge")
    if not Path("/dev/fuse").exists() or not ctypes.util.find_library("fuse3"):
        missing.append("/dev/fuse and libfuse3 (the TSM stand-in)")
    if missing:
        return (
            f"missing {', '.join(missing)}: apt-get install containerd runc containernetworking-plugins "
            "iptables conntrack fuse3 (scripts/setup.sh does it as root)"
        )
    return None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _mentions(paths: NodePaths) -> list[int]:
    """Pids of the node's containerd, kubelet and shims: those programs, with the node's dirs in their
    command line (a shim names the socket). Nothing else is touched, not even a ``tail -f`` of a log."""
    needles = (str(paths.data) + "/", str(paths.run) + "/")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        ours = os.path.basename(argv[0]) in NODE_PROGRAMS or any(a in NODE_MODULES for a in argv)
        if ours and any(n in a for a in argv for n in needles):
            pids.append(int(proc.name))
    return pids


def _kubepods_cgroups() -> list[Path]:
    """Every kubepods cgroup dir, deepest first (v1 controllers and the unified hierarchy)."""
    tops = [*CGROUP_ROOT.glob("*/kubepods"), *CGROUP_ROOT.glob("kubepods")]
    found: list[Path] = []
    for top in tops:
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(cgroups: list[Path]) -> set[int]:
    pids: set[int] = set()
    for cg in cgroups:
        pids.update(int(x) for x in _read(cg / "cgroup.procs").split() if x.isdigit())
    pids.discard(os.getpid())
    return pids


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts_under(paths: NodePaths) -> list[str]:
    """Mount points under the node's dirs, deepest first (from /proc/self/mountinfo)."""
    roots = (str(paths.data), str(paths.run))
    points = []
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape_mount(fields[4])
            if any(point == r or point.startswith(r + "/") for r in roots):
                points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def _umount(point: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(point.encode(), MNT_DETACH)


def node_chain(name: str) -> bool:
    """A chain the node's kubelet, kube-proxy or set-up made (one real node per machine owns them)."""
    return name.startswith(KUBE_CHAIN_PREFIX) or name == FORWARD_GUARD


def _chain_rules(binary: str) -> list[tuple[str, list[str]]]:
    """(table, ``-A ...`` rule words) of rules in built-in chains that jump to the node's chains."""
    found = []
    for table in ("filter", "nat", "mangle"):
        proc = _run([binary, "-w", "-t", table, "-S"])
        for line in proc.stdout.splitlines():
            words = shlex.split(line)  # kube-proxy's rules carry quoted comments: -D needs them whole
            targets = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")]
            if words[:1] == ["-A"] and not node_chain(words[1]) and any(node_chain(t) for t in targets):
                found.append((table, words))
    return found


def _chains(binary: str) -> list[tuple[str, str]]:
    found = []
    for table in ("filter", "nat", "mangle"):
        proc = _run([binary, "-w", "-t", table, "-S"])
        for line in proc.stdout.splitlines():
            words = line.split()
            if words[:1] == ["-N"] and len(words) > 1 and node_chain(words[1]):
                found.append((table, words[1]))
    return found


def _iptables_binaries() -> list[str]:
    return [b for b in ("iptables", "ip6tables") if shutil.which(b)]


def _log_links(paths: NodePaths) -> list[Path]:
    if not CONTAINER_LOG_LINKS.is_dir():
        return []
    return [
        p
        for p in CONTAINER_LOG_LINKS.iterdir()
        if p.is_symlink() and os.readlink(p).startswith(str(paths.pod_logs) + "/")
    ]


def _cni_results(paths: NodePaths) -> list[Path]:
    """libcni's cached results of the node's pods: its bridge network's, and the loopback ones
    containerd adds (``cni-loopback-<sandbox>-lo``), recognised by their netns under the run dir."""
    results = CNI_CACHE / "results"
    if not results.is_dir():
        return []
    ours = str(paths.run) + "/"
    return sorted(p for p in results.iterdir() if p.name.startswith(f"{CNI_NETWORK}-") or ours in _read(p))


def _shim_sockets(paths: NodePaths) -> list[Path]:
    """Sockets of the node's shims in :data:`SHIM_SOCKETS` (each task's bundle names its ``address``)."""
    tasks = paths.run / "containerd" / "io.containerd.runtime.v2.task"
    found = []
    for address in tasks.glob("*/*/address"):
        sock = Path(_read(address).strip().removeprefix("unix://"))
        if sock.parent == SHIM_SOCKETS and sock.exists():
            found.append(sock)
    return sorted(found)


def _bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def host_leftovers(paths: NodePaths | None = None) -> list[str]:
    """What of a real node is on this host now (empty after :func:`clean_host`)."""
    paths = paths or NodePaths()
    out = [f"process {pid}" for pid in _mentions(paths)]
    cgroups = _kubepods_cgroups()
    out += [f"cgroup {cg}" for cg in cgroups]
    out += [f"process {pid} in kubepods" for pid in sorted(_cgroup_pids(cgroups))]
    out += [f"mount {m}" for m in _mounts_under(paths)]
    for binary in _iptables_binaries():
        out += [f"{binary} -t {t} chain {c}" for t, c in _chains(binary)]
    out += netpol.host_leftovers()
    if _bridge_exists():
        out.append(f"bridge {BRIDGE}")
    out += [f"log link {p}" for p in _log_links(paths)]
    out += [f"CNI result {p}" for p in _cni_results(paths)]
    out += [f"shim socket {p}" for p in _shim_sockets(paths)]
    if DEVICE_PLUGIN_SOCKET.exists():
        out.append(f"kubelet socket {DEVICE_PLUGIN_SOCKET}")
    out += [f"dir {d}" for d in (paths.data, paths.run) if d.exists()]
    return out


def _kill(pids: set[int] | list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def record_sysctls(paths: NodePaths) -> None:
    """Keep the host's values of the sysctls the kubelet will set (only if none are recorded yet)."""
    if paths.sysctls.exists():
        return
    values = {k: _read(Path("/proc/sys") / k).strip() for k in KUBELET_SYSCTLS}
    paths.sysctls.write_text(json.dumps({k: v for k, v in values.items() if v}) + "\n")


def _restore_sysctls(paths: NodePaths) -> None:
    try:
        values: dict[str, str] = json.loads(paths.sysctls.read_text())
    except (OSError, ValueError):
        return
    for key, value in values.items():
        with contextlib.suppress(OSError):
            target = Path("/proc/sys") / key
            if target.read_text().strip() != value:
                target.write_text(value)


def clean_host(paths: NodePaths | None = None) -> list[str]:
    """Remove every trace of a real node (see the module doc); idempotent. Returns what it found."""
    paths = paths or NodePaths()
    found = host_leftovers(paths)
    # 1. processes: containerd, kubelet, shims by their cmdline; then everything in kubepods
    _kill(_mentions(paths))
    _until(lambda: not _mentions(paths), 10)
    for _ in range(3):
        pids = _cgroup_pids(_kubepods_cgroups())
        if not pids:
            break
        _kill(pids)
        _until(lambda: not _cgroup_pids(_kubepods_cgroups()), 5)
    # 2. mounts (kubelet root self-bind, volumes, rootfs overlays, shm, netns), deepest first
    for point in _mounts_under(paths):
        _umount(point)
    # 3. kubepods cgroups, children before parents (a cgroup just emptied may need a moment)
    for _ in range(20):
        for cg in _kubepods_cgroups():
            with contextlib.suppress(OSError):
                cg.rmdir()
        if not _kubepods_cgroups():
            break
        time.sleep(0.1)
    # 4. the kubelet's, kube-proxy's and the guard's chains: jumps first, then flush all, then delete
    for binary in _iptables_binaries():
        for table, words in _chain_rules(binary):
            _run([binary, "-w", "-t", table, "-D", *words[1:]])
        chains = _chains(binary)
        for table, chain in chains:
            _run([binary, "-w", "-t", table, "-F", chain])
        for table, chain in chains:
            _run([binary, "-w", "-t", table, "-X", chain])
    # 4b. the NetworkPolicy engine's steering chain and table (the engine was killed in 1.)
    netpol.remove_from_host()
    # 5. network, log links, CNI result cache
    if _bridge_exists():
        _run(["ip", "link", "del", BRIDGE])
    for link in _log_links(paths):
        link.unlink(missing_ok=True)
    for result in _cni_results(paths):
        result.unlink(missing_ok=True)
    for sock in [*_shim_sockets(paths), DEVICE_PLUGIN_SOCKET]:  # (a killed shim leaves its socket)
        sock.unlink(missing_ok=True)
    shared = (CNI_CACHE / "results", CNI_CACHE, CONTAINER_LOG_LINKS, SHIM_SOCKETS, SHIM_SOCKETS.parent)
    for d in (*shared, DEVICE_PLUGIN_SOCKET.parent, DEVICE_PLUGIN_SOCKET.parent.parent):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty: other users of the host keep theirs
    # 6. sysctls back, then the node's dirs
    _restore_sysctls(paths)
    for d in (paths.data, paths.run):
        shutil.rmtree(d, ignore_errors=True)
    return found


def owner_pid(paths: NodePaths | None = None) -> int | None:
    """The live process that runs the real node, if any."""
    paths = paths or NodePaths()
    try:
        pid = int(_read(paths.owner).strip())
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def clean_if_abandoned(paths: NodePaths | None = None) -> list[str]:
    """:func:`clean_host` unless a live process still runs the node (for ``cluster down`` and starts)."""
    paths = paths or NodePaths()
    pid = owner_pid(paths)
    if pid is not None and pid != os.getpid():
        return []
    return clean_host(paths)


# ------------------------------------------------------------------ the node
class RealNode:
    """Prepares the host for one kubelet + containerd; the cluster spawns and waits for them.

    Order: :meth:`prepare` (claims the machine, cleans leftovers, bridge, configs), spawn
    ``containerd_argv()``, :meth:`containerd_ready`, :meth:`import_images`, spawn
    ``kubelet_argv()``; at the end stop both processes and call :meth:`cleanup`.
    """

    def __init__(self, name: str, index: int, paths: NodePaths | None = None) -> None:
        self.name = name
        self.net = NodeNet(index)
        self.paths = paths or NodePaths()
        self.ctr = Ctr(self.paths.socket)
        self._claimed = False
        self._lock_fd: int | None = None

    def _lock_machine(self) -> None:
        """Hold :data:`NODE_LOCK` for the node's life; wait ``CMCP_E2E_NODE_WAIT_SECONDS`` for it."""
        wait = float(os.environ.get("CMCP_E2E_NODE_WAIT_SECONDS", "0") or 0)
        fd = os.open(NODE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    pid = owner_pid(self.paths)
                    raise NodeError(
                        f"a real node already runs on this machine (owner pid {pid}); one per machine "
                        "(set CMCP_E2E_NODE_WAIT_SECONDS to wait for it)"
                    ) from None
                time.sleep(1.0)

    def _unlock_machine(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the only descriptor releases the flock
            self._lock_fd = None

    def prepare(
        self,
        ca_file: Path,
        kubeconfig: str,
        handlers: tuple[str, ...],
        sandbox_image: str,
        kube_proxy_kubeconfig: str | None = None,
    ) -> None:
        why = missing_prerequisites()
        if why:
            raise NodeError(why)
        self._lock_machine()
        leftovers = clean_host(self.paths)
        if leftovers:
            print(f"[cmcp-e2e node] removed leftovers of an earlier run: {leftovers[:10]}", flush=True)
        p = self.paths
        for d in (p.run, p.data, p.cni_conf_dir, p.cni_state, p.kubelet_root, p.pod_logs):
            d.mkdir(parents=True, exist_ok=True)
        p.owner.write_text(str(os.getpid()))
        self._claimed = True
        record_sysctls(p)
        for step in (
            ["ip", "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", f"{self.net.node_ip}/26", "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
        ):
            proc = _run(step)
            if proc.returncode != 0:
                raise NodeError(f"{' '.join(step)}: {proc.stderr.strip()}")
        base_specs = {}
        default_spec = self.ctr.default_spec()
        for handler in handlers:
            if handler in KATA_HANDLER_TEE:
                spec = hooked_base_spec(default_spec, tsm_hooks(p, KATA_HANDLER_TEE[handler]))
                p.base_spec(handler).write_text(json.dumps(spec, indent=2) + "\n")
                base_specs[handler] = p.base_spec(handler)
        p.containerd_config.write_text(containerd_config(p.containerd(), sandbox_image, handlers, base_specs))
        (p.cni_conf_dir / "10-cmcp-e2e-node.conflist").write_text(cni_conflist(self.net, p))
        p.kubelet_config.write_text(kubelet_config(self.net, p, ca_file))
        p.kubeconfig.write_text(kubeconfig)
        p.kubeconfig.chmod(0o600)
        if kube_proxy_kubeconfig is not None:
            self._prepare_service_network(kube_proxy_kubeconfig)

    def _prepare_service_network(self, kube_proxy_kubeconfig: str) -> None:
        """kube-proxy's files; the guard first, then forwarding on the bridge only (the host's
        ``ip_forward`` stays as it is), so Service traffic DNATed to a pod on the bridge goes back in."""
        p = self.paths
        p.kube_proxy_config.write_text(kube_proxy_config(self.name, self.net, p))
        p.kube_proxy_kubeconfig.write_text(kube_proxy_kubeconfig)
        p.kube_proxy_kubeconfig.chmod(0o600)
        for rule in forward_guard_rules():
            proc = _run(["iptables", "-w", *rule])
            if proc.returncode != 0:
                raise NodeError(f"iptables {' '.join(rule)}: {proc.stderr.strip()}")
        Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1\n")

    def kube_proxy_argv(self, kube_proxy: Path) -> list[str]:
        return kube_proxy_argv(kube_proxy, self.paths)

    def containerd_argv(self) -> list[str]:
        return containerd_argv(self.paths)

    def tsm_standin_argv(self) -> list[str]:
        return tsm_standin_argv(self.paths)

    def tsm_standin_ready(self) -> bool:
        """The stand-in's FUSE file system is mounted (containers may start: the hook binds it)."""
        target = str(self.paths.tsm_mount)
        for line in _read(Path("/proc/self/mountinfo")).splitlines():
            fields = line.split()
            if len(fields) > 4 and _unescape_mount(fields[4]) == target and " - fuse " in line:
                return True
        return False

    def kubelet_argv(self, kubelet: Path) -> list[str]:
        return kubelet_argv(kubelet, self.name, self.net, self.paths)

    def containerd_ready(self) -> bool:
        self.ctr.run("version", timeout=5)
        return True

    def import_images(self, archives: list[Path]) -> None:
        for archive in archives:
            self.ctr.import_archive(archive)

    def cleanup(self) -> list[str]:
        """After the kubelet and containerd stopped: :func:`clean_host` (only if this process claimed it)."""
        if not self._claimed:
            self._unlock_machine()
            return []
        self._claimed = False
        try:
            return clean_host(self.paths)
        finally:
            self._unlock_machine()
