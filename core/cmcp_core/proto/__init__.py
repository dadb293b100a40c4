"""Generated gRPC stubs for ``enclave.proto``; regenerate with ``python -m cmcp_core.proto.generate``."""
