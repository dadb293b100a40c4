"""cmcp-gateway: the agent-facing MCP endpoint that holds no policy and no authorising key.

It authenticates agents, asks an attested enclave for a signed decision on every call,
forwards allowed calls with the enclave's permit, and fails closed on anything else.
"""
