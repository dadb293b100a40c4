"""cmcp-guard: the upstream-side check that makes an enclave deny unbypassable.

An MCP server only runs a ``tools/call`` that carries a permit signed by an enclave key the
guard attested itself, bound to exactly this tool, these arguments and this upstream.
"""
