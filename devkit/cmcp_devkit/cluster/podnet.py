"""The pod network of the local cluster: one private network namespace joined to the host by a veth.

Why not pod IPs on 127.0.0.x: the apiserver rejects loopback addresses in EndpointSlices
(``ValidateEndpointIP``: "may not be in the loopback range"), so the EndpointSlice
controller could never publish such pods. Instead, per cluster index N:

* a holder process (``sleep``) owns a fresh network namespace; the namespace, its veth and
  the host route vanish with it, so a crash leaves nothing behind;
* host end ``cmcpe2e<N>`` = 198.19.N.1/30 (the apiserver binds here, so pods reach it),
  namespace end ``eth0`` = 198.19.N.2/30; no default route inside, so anything else (DNS
  included) fails at once with "network unreachable" instead of timing out, and no pod
  traffic can leave the machine (the host does not forward either);
* pod IPs 198.18.N.10-250: a ``local`` route for 198.18.N.0/24 inside the namespace lets
  every pod process bind its own IP without per-pod address set-up;
* Service ClusterIPs 198.19.N.128/25 (no kube-proxy: they answer with a reset, quickly);
* the host routes 198.18.N.0/24 and 198.19.N.128/25 into the namespace.

198.18.0.0/15 is the RFC 2544 benchmarking range: never routed on the internet, and all of
the traffic stays inside this machine. Needs CAP_NET_ADMIN (root) and iproute2; without
them ``mode="loopback"`` gives 127.<N>.0.x pod IPs (processes run, EndpointSlices stay empty).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class PodNetworkError(RuntimeError):
    """The pod network could not be set up."""


def set_pdeathsig() -> None:
    """In a child before exec: die with SIGKILL when the parent dies (no strays on a crash)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def unshare_net() -> None:
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def enter_netns(path: str) -> None:
    """In a child before exec: join the pod network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _holder_preexec() -> None:
    set_pdeathsig()
    unshare_net()


@dataclass
class PodNetwork:
    """Addresses and namespace the cluster and the node agent agree on."""

    mode: str
    index: int
    host_ip: str
    pod_prefix: str
    service_cidr: str
    netns_path: str | None = None
    holder: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def pod_ip(self, slot: int) -> str:
        """Slot 0.. maps to .10..; the node agent hands slots out."""
        return f"{self.pod_prefix}{10 + slot}"

    @property
    def first_service_ip(self) -> str:
        base, _ = self.service_cidr.split("/")
        a, b, c, d = (int(x) for x in base.split("."))
        return f"{a}.{b}.{c}.{d + 1}"

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "index": self.index,
            "host_ip": self.host_ip,
            "pod_prefix": self.pod_prefix,
            "service_cidr": self.service_cidr,
            "netns_path": self.netns_path,
        }

    @classmethod
    def create(cls, mode: str | None = None) -> PodNetwork:
        mode = mode or os.environ.get("CMCP_E2E_POD_NETWORK") or ("netns" if _can_netns() else "loopback")
        if mode == "loopback":
            idx = 100 + os.getpid() % 150
            return cls("loopback", idx, "127.0.0.1", f"127.{idx}.0.", f"198.19.{idx}.128/25")
        if mode != "netns":
            raise PodNetworkError(f"unknown pod network mode {mode!r} (netns or loopback)")
        used = set(re.findall(r"inet 198\.19\.(\d+)\.1/", _run(["ip", "-4", "-o", "addr"]).stdout))
        last_err = ""
        start = 1 + os.getpid() % 250
        for idx in [*range(start, 251), *range(1, start)]:
            if str(idx) in used:
                continue
            try:
                return cls._create_netns(idx)
            except PodNetworkError as exc:  # index taken meanwhile by a parallel run: try the next
                last_err = str(exc)
                used.add(str(idx))
        raise PodNetworkError(f"no free pod network index: {last_err}")

    @classmethod
    def _create_netns(cls, idx: int) -> PodNetwork:
        holder = subprocess.Popen(["sleep", "infinity"], preexec_fn=_holder_preexec, start_new_session=True)
        ns = f"/proc/{holder.pid}/ns/net"
        # The holder unshares before exec; wait until its namespace differs from ours.
        for _ in range(500):
            if os.readlink(ns) != os.readlink("/proc/self/ns/net"):
                break
            if holder.poll() is not None:
                raise PodNetworkError("netns holder exited")
            os.sched_yield()
        host_if = f"cmcpe2e{idx}"
        net = cls(
            "netns",
            idx,
            f"198.19.{idx}.1",
            f"198.18.{idx}.",
            f"198.19.{idx}.128/25",
            ns,
            holder,
        )
        inside = ["nsenter", f"--net={ns}"]
        steps = [
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", str(holder.pid)],
            ["ip", "addr", "add", f"198.19.{idx}.1/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            [*inside, "ip", "link", "set", "lo", "up"],
            [*inside, "ip", "addr", "add", f"198.19.{idx}.2/30", "dev", "eth0"],
            [*inside, "ip", "link", "set", "eth0", "up"],
            [*inside, "ip", "route", "add", "local", f"198.18.{idx}.0/24", "dev", "lo"],
            [*inside, "ip", "route", "add", "local", f"198.19.{idx}.128/25", "dev", "lo"],
            ["ip", "route", "add", f"198.18.{idx}.0/24", "via", f"198.19.{idx}.2"],
            ["ip", "route", "add", f"198.19.{idx}.128/25", "via", f"198.19.{idx}.2"],
        ]
        for step in steps:
            proc = _run(step)
            if proc.returncode != 0:
                net.close()
                raise PodNetworkError(f"{' '.join(step)}: {proc.stderr.strip()}")
        return net

    def close(self) -> None:
        """Kill the holder: the kernel then drops the namespace, the veth pair and the routes."""
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()
        self.holder = None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _can_netns() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nsenter"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0
