"""The confidential-node stand-in: configfs-tsm for each kata container, served over FUSE.

Why FUSE, and why here: on a TDX or SEV-SNP node the guest kernel answers configfs-tsm
(``/sys/kernel/config/tsm/report``: ``mkdir`` an entry, write ``inblob``, read ``outblob``, and
on SNP ``auxblob``, the certificate table) synchronously, with a quote whose MRCONFIGID (TDX) or a
report whose HOST_DATA (SNP) the hypervisor measured from the pod's initdata. A file system
answers the same way — the evidence is made when the enclave writes ``inblob`` — so the enclave
image runs its production ``--tee tdx`` / ``--tee snp`` provider unchanged, and the only
simulated things left are the device and its signer (quotes and reports carry the simulator's
markers, so a verifier accepts them only with ``allow_simulated``, as ``software-only``). A
directory watched by a thread (the unit tests' emulator) would race the reader instead. The
binding is ``mfusepy`` (ctypes over the system's libfuse3: no compiler, maintained; ``pyfuse3``
needs libfuse3 headers and Cython at install).

Layout under the mount point (one per node, started with it): ``/<container id>/config/tsm/report/``
for each container the OCI hook (:mod:`.tsm_hook`) registered; the hook bind-mounts
``/<container id>`` onto that container's ``/sys/kernel``, so a container reaches only its own
tree. What is measured is the initdata the hook decoded from the pod's annotation — never a file
the container holds (:meth:`TsmStandin.measured_initdata` is the one place that decides it).

A registration's platform picks the device: ``tdx`` (provider ``tdx_guest``, a simulated TDX v4
quote) or ``snp`` (provider ``sev_guest``, a simulated SNP report with HOST_DATA = the initdata's
SNP digest, and ``auxblob`` = the simulator's certificate table).

The guest's boot measurements are the genuine simulated guest's (``SIMULATED_MRTD``/``SIMULATED_RTMRS``,
``SIMULATED_SNP_MEASUREMENT``: what the dev release pins) unless the host booted it differently:
kernel parameters the host added (the hook registers Kata's ``kernel_params`` annotation) extend
RTMR2, as the firmware measures the kernel command line into RTMR2 (:func:`guest_rtmrs`), and on
SNP change the launch MEASUREMENT, which covers the command line's hash with measured direct boot
(:func:`guest_snp_measurement`). That is how a test plays a host that boots another guest, which
only the release's reference values refuse.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mfusepy as fuse

from cmcp_core import initdata
from cmcp_core.evidence.simulated import SIMULATED_RTMRS, SimulatedQuoteSigner
from cmcp_core.evidence.simulated_snp import SIMULATED_SNP_MEASUREMENT, SimulatedReportSigner

from .tsm_hook import registration

REPORT_DIR = ("config", "tsm", "report")
FUSE_EXIT_SIGNALLED = "8"  # libfuse3's fuse_main after SIGTERM/SIGINT: a normal stop here
REPORT_DATA_LEN = 64
PROVIDER = {"tdx": b"tdx_guest\n", "snp": b"sev_guest\n"}
ENTRY_FILES = {"tdx": ("inblob", "outblob", "provider", "generation"),
               "snp": ("inblob", "outblob", "auxblob", "provider", "generation")}


def guest_rtmrs(kernel_params: str) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0-3 of the guest the host booted: the genuine simulated guest's, with RTMR2 extended
    (TDX's ``RTMR = SHA-384(RTMR || digest)``) by the SHA-384 of the kernel parameters the host
    added; none added, the genuine values (the release's)."""
    rtmr0, rtmr1, rtmr2 = SIMULATED_RTMRS
    if kernel_params:
        rtmr2 = hashlib.sha384(rtmr2 + hashlib.sha384(kernel_params.encode()).digest()).digest()
    return rtmr0, rtmr1, rtmr2, bytes(48)


def guest_snp_measurement(kernel_params: str) -> bytes:
    """The SNP launch MEASUREMENT of the guest the host booted: the genuine simulated guest's, or,
    with kernel parameters added, SHA-384 of it and their SHA-384 (the launch digest covers the
    command line's hash, so any change gives another digest); none added, the release's."""
    if not kernel_params:
        return SIMULATED_SNP_MEASUREMENT
    added = hashlib.sha384(kernel_params.encode()).digest()
    return hashlib.sha384(SIMULATED_SNP_MEASUREMENT + added).digest()


@dataclass
class _Entry:
    """One report request (a ``mkdir`` under ``report/``), as configfs-tsm keeps it."""

    inblob: bytes = b""
    outblob: bytes = b""
    auxblob: bytes = b""
    generation: int = 0
    created: float = field(default_factory=time.time)


class TsmStandin(fuse.Operations):  # type: ignore[misc]
    """configfs-tsm answers for registered containers; one simulator key per node and platform."""

    use_ns = True

    def __init__(self, registry: Path, signer: SimulatedQuoteSigner | None = None,
                 snp_signer: SimulatedReportSigner | None = None) -> None:
        self.registry = registry
        self.signer = signer or SimulatedQuoteSigner()
        self.snp_signer = snp_signer or SimulatedReportSigner()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ what is measured
    def measured_initdata(self, container_id: str, caller_pid: int) -> bytes:
        """The initdata whose digest goes into MRCONFIGID: what the hook decoded from the pod's
        annotation. ``caller_pid`` is unused here on purpose (a weakened stand-in in the tests
        reads the caller's own file through it, and the attacker test must catch that)."""
        found = registration(self.registry, container_id)
        if found is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return found.initdata

    def measured_rtmrs(self, container_id: str) -> tuple[bytes, bytes, bytes, bytes]:
        """The boot measurements of the guest the host launched for this container."""
        found = registration(self.registry, container_id)
        if found is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return guest_rtmrs(found.kernel_params)

    def measured_snp(self, container_id: str) -> bytes:
        """The SNP launch MEASUREMENT of the guest the host launched for this container."""
        found = registration(self.registry, container_id)
        if found is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return guest_snp_measurement(found.kernel_params)

    def _measured_config(self, container_id: str, caller_pid: int, platform: str) -> bytes:
        """The platform's config field (TDX MRCONFIGID, SNP HOST_DATA) for the measured initdata."""
        raw = self.measured_initdata(container_id, caller_pid)
        try:
            return initdata.expected_measurement(raw, platform)
        except initdata.InitdataError as exc:
            raise fuse.FuseOSError(errno.EIO) from exc

    def quote(self, container_id: str, caller_pid: int, report_data: bytes) -> bytes:
        mrconfigid = self._measured_config(container_id, caller_pid, "tdx")
        return self.signer.quote(report_data.ljust(REPORT_DATA_LEN, b"\x00"), mrconfigid,
                                 rtmrs=self.measured_rtmrs(container_id))

    def snp_report(self, container_id: str, caller_pid: int, report_data: bytes) -> bytes:
        """A simulated SNP report: HOST_DATA the SNP digest of the measured initdata."""
        host_data = self._measured_config(container_id, caller_pid, "snp")
        return self.snp_signer.report(report_data.ljust(REPORT_DATA_LEN, b"\x00"), host_data,
                                      measurement=self.measured_snp(container_id))

    def evidence(self, container_id: str, caller_pid: int, report_data: bytes) -> tuple[bytes, bytes]:
        """(outblob, auxblob) for the registration's platform."""
        if self._platform(container_id) == "snp":
            return self.snp_report(container_id, caller_pid, report_data), self.snp_signer.cert_table
        return self.quote(container_id, caller_pid, report_data), b""

    def _platform(self, container_id: str) -> str:
        found = registration(self.registry, container_id)
        if found is None or found.platform not in PROVIDER:
            raise fuse.FuseOSError(errno.ENOENT)
        return found.platform

    # ------------------------------------------------------------ path handling
    def _split(self, path: str) -> tuple[str, tuple[str, ...]]:
        """(container id, the rest) for a path under the mount; ENOENT for unknown containers."""
        parts = tuple(p for p in path.split("/") if p)
        if not parts:
            return "", ()
        self._platform(parts[0])
        return parts[0], parts[1:]

    def _entry(self, cid: str, rest: tuple[str, ...]) -> tuple[_Entry, str | None] | None:
        """The report entry a path names (and the file in it), or None for the directories above."""
        n = len(REPORT_DIR)
        if rest[:n] != REPORT_DIR or len(rest) == n:
            if REPORT_DIR[: len(rest)] == rest:
                return None
            raise fuse.FuseOSError(errno.ENOENT)
        entry = self._entries.get((cid, rest[n]))
        files = ENTRY_FILES[self._platform(cid)]
        if entry is None or len(rest) > n + 2 or (len(rest) == n + 2 and rest[n + 1] not in files):
            raise fuse.FuseOSError(errno.ENOENT)
        return entry, rest[n + 1] if len(rest) == n + 2 else None

    @staticmethod
    def _dir(mode: int = 0o755) -> dict[str, Any]:
        now = time.time_ns()
        return {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2, "st_uid": 0, "st_gid": 0,
                "st_atime": now, "st_mtime": now, "st_ctime": now}

    def _content(self, cid: str, entry: _Entry, name: str) -> bytes:
        if name == "inblob":
            return entry.inblob
        if name == "provider":
            return PROVIDER[self._platform(cid)]
        if name == "generation":
            return f"{entry.generation}\n".encode()
        if name == "auxblob":
            return entry.auxblob
        return entry.outblob

    # ------------------------------------------------------------ FUSE operations
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        cid, rest = self._split(path)
        if not cid:
            return self._dir()
        with self._lock:
            found = self._entry(cid, rest)
            if found is None:
                # report/ is writable by the enclave's (non-root) user: see the ADR on the stand-in
                return self._dir(0o777 if rest == REPORT_DIR else 0o755)
            entry, name = found
            if name is None:
                return self._dir(0o777)
            size = len(self._content(cid, entry, name))
        mode = 0o666 if name == "inblob" else 0o444
        st = self._dir()
        st.update(st_mode=stat.S_IFREG | mode, st_nlink=1, st_size=size)
        return st

    def readdir(self, path: str, fh: int) -> list[str]:
        cid, rest = self._split(path)
        if not cid:
            return [".", ".."]  # containers are not listed: each sees only its own tree
        with self._lock:
            found = self._entry(cid, rest)
            if found is None:
                if rest == REPORT_DIR:
                    return [".", "..", *sorted(name for (c, name) in self._entries if c == cid)]
                return [".", "..", REPORT_DIR[len(rest)]]
            if found[1] is not None:
                raise fuse.FuseOSError(errno.ENOTDIR)
        return [".", "..", *ENTRY_FILES[self._platform(cid)]]

    def mkdir(self, path: str, mode: int) -> int:
        cid, rest = self._split(path)
        if not cid or rest[:-1] != REPORT_DIR or len(rest) != len(REPORT_DIR) + 1:
            raise fuse.FuseOSError(errno.EPERM)
        with self._lock:
            if (cid, rest[-1]) in self._entries:
                raise fuse.FuseOSError(errno.EEXIST)
            self._entries[(cid, rest[-1])] = _Entry()
        return 0

    def rmdir(self, path: str) -> int:
        cid, rest = self._split(path)
        with self._lock:
            found = self._entry(cid, rest) if cid else None
            if found is None or found[1] is not None:
                raise fuse.FuseOSError(errno.EPERM)
            del self._entries[(cid, rest[-1])]
        return 0

    def open(self, path: str, flags: int) -> int:
        self.getattr(path)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        cid, rest = self._split(path)
        with self._lock:
            found = self._entry(cid, rest) if cid else None
            if found is None or found[1] != "inblob":
                raise fuse.FuseOSError(errno.EACCES)
            found[0].inblob = found[0].inblob[:length]
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        """``inblob`` only, at most 64 bytes; the evidence is made now, so ``outblob``'s (and
        ``auxblob``'s) size is right when the reader stats it (a FUSE read stops at the size the
        kernel was told)."""
        cid, rest = self._split(path)
        caller_pid = fuse.fuse_get_context()[2]
        with self._lock:
            found = self._entry(cid, rest) if cid else None
            if found is None or found[1] != "inblob":
                raise fuse.FuseOSError(errno.EACCES)
            entry = found[0]
            blob = entry.inblob[:offset].ljust(offset, b"\x00") + bytes(data)
            if len(blob) > REPORT_DATA_LEN:
                raise fuse.FuseOSError(errno.EINVAL)
            entry.inblob = blob
            entry.outblob, entry.auxblob = self.evidence(cid, caller_pid, blob)
            entry.generation += 1
        return len(data)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        cid, rest = self._split(path)
        with self._lock:
            found = self._entry(cid, rest) if cid else None
            if found is None or found[1] is None:
                raise fuse.FuseOSError(errno.EISDIR)
            entry, name = found[0], found[1]
            return self._content(cid, entry, name)[offset:offset + size]


def serve(mount: Path, standin: TsmStandin) -> None:
    """Mount and serve until unmounted or signalled (libfuse unmounts on SIGTERM/SIGINT; a
    signalled stop returns normally, any other libfuse failure raises)."""
    mount.mkdir(parents=True, exist_ok=True)
    try:
        fuse.FUSE(standin, str(mount), foreground=True, allow_other=True, fsname="cmcp-tsm-standin",
                  attr_timeout=0, entry_timeout=0, negative_timeout=0)
    except RuntimeError as exc:
        if str(exc) != FUSE_EXIT_SIGNALLED:
            raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cmcp-tsm-standin", description=__doc__)
    p.add_argument("--mount", type=Path, required=True)
    p.add_argument("--registry", type=Path, required=True)
    args = p.parse_args(argv)
    args.registry.mkdir(parents=True, exist_ok=True)
    print(f"cmcp tsm stand-in: serving {args.mount} (registry {args.registry}, pid {os.getpid()})",
          flush=True)
    serve(args.mount, TsmStandin(args.registry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
