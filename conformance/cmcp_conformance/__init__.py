"""cMCP conformance suite: per-ID checks of a deployment against DESIGN.md section 7.

Entry points: :func:`cmcp_conformance.runner.run` (programmatic) and ``cmcpctl conformance``.
"""
