"""A weakened confidential-node stand-in: it measures the initdata file the *container* holds
instead of the pod's annotation the hook decoded. A host that let the guest choose what is
measured would pass any initdata check, so the attacker tests run this to show they catch it.

``python -m tests.helpers.weakened_tsm_standin --mount M --registry R --handed-file PATH``
(the file is read through ``/proc/<caller>/root``, so a path inside the container).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

import mfusepy as fuse

from cmcp_core import initdata
from cmcp_devkit.cluster.tsm_standin import TsmStandin, serve


class HandedFileStandin(TsmStandin):
    """Measures ``/proc/<caller>/root/<handed_file>`` (an annotation value) - the hole."""

    def __init__(self, registry: Path, handed_file: str) -> None:
        super().__init__(registry)
        self.handed_file = handed_file.lstrip("/")

    def measured_initdata(self, container_id: str, caller_pid: int) -> bytes:
        super().measured_initdata(container_id, caller_pid)  # still only registered containers
        try:
            value = (Path(f"/proc/{caller_pid}/root") / self.handed_file).read_bytes()
            return initdata.decode_annotation(value.strip())
        except (OSError, initdata.InitdataError) as exc:
            raise fuse.FuseOSError(errno.EIO) from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mount", type=Path, required=True)
    p.add_argument("--registry", type=Path, required=True)
    p.add_argument("--handed-file", required=True)
    args = p.parse_args(argv)
    print(f"weakened tsm stand-in: measuring {args.handed_file} of the caller", flush=True)
    serve(args.mount, HandedFileStandin(args.registry, args.handed_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
