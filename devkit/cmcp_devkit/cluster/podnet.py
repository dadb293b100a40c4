"""The host side of the local cluster's network: one private network namespace joined to the host by a veth.

Why: the apiserver binds an address the real node's pods reach and that is not loopback (the apiserver
rejects loopback addresses in EndpointSlices, ``ValidateEndpointIP``), in a range that never leaves
the machine. Per cluster index N:

* a holder process (``sleep``) owns a fresh network namespace; the namespace, its veth and
  the host route vanish with it, so a crash leaves nothing behind;
* host end ``cmcpe2e<N>`` = 198.19.N.1/30 (the apiserver binds here, so pods reach it),
  namespace end ``eth0`` = 198.19.N.2/30; no default route inside, so anything else (DNS
  included) fails at once with "network unreachable" instead of timing out, and no pod
  traffic can leave the machine (the host does not forward either);
* Service ClusterIPs 198.19.N.128/25 (kube-proxy on the real node turns them into its pods' IPs);
* the host routes 198.19.N.128/25 into the namespace (the real node's own pod bridge, node.py,
  uses 198.19.N.64/26).

198.18.0.0/15 is the RFC 2544 benchmarking range: never routed on the internet, and all of
the traffic stays inside this machine. Needs CAP_NET_ADMIN (root) and iproute2; without
them ``mode="loopback"`` binds the apiserver to 127.0.0.1: a control plane with registered-only
nodes and no pod (the real node needs ``netns``).
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


def _holder_preexec() -> None:
    set_pdeathsig()
    unshare_net()


@dataclass
class PodNetwork:
    """The apiserver's address, the Service range and the namespace holding them (netns mode)."""

    mode: str
    index: int
    host_ip: str
    service_cidr: str
    netns_path: str | None = None
    holder: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def first_service_ip(self) -> str:
        base, _ = self.service_cidr.split("/")
        a, b, c, d = (int(x) for x in base.split("."))
        return f"{a}.{b}.{c}.{d + 1}"

    @classmethod
    def create(cls, mode: str | None = None) -> PodNetwork:
        mode = mode or os.environ.get("CMCP_E2E_POD_NETWORK") or ("netns" if _can_netns() else "loopback")
        if mode == "loopback":
            idx = 100 + os.getpid() % 150
            return cls("loopback", idx, "127.0.0.1", f"198.19.{idx}.128/25")
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
            [*inside, "ip", "route", "add", "local", f"198.19.{idx}.128/25", "dev", "lo"],
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
