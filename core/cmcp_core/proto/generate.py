"""Regenerate the committed gRPC stubs from ``enclave.proto`` (run after editing the proto)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = HERE.parent.parent


def main() -> int:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{CORE}",
        f"--python_out={CORE}",
        f"--pyi_out={CORE}",
        f"--grpc_python_out={CORE}",
        str(HERE.relative_to(CORE) / "enclave.proto"),
    ]
    return int(protoc.main(args))


if __name__ == "__main__":
    sys.exit(main())
