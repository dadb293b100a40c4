"""The cMCP enclave pod: measured bundle, Cedar engine, session state, audit chain, gRPC API.

Everything that can authorise a tool call lives here and only here; the gateway and the
operator talk to it over gRPC and verify what it signs.
"""
