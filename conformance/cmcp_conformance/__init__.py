"""cMCP conformance suite: per-ID checks of a deployment against the catalogue in
conformance/README.md (the IDs in :mod:`cmcp_conformance.catalogue`).

Entry points: :func:`cmcp_conformance.runner.run` (programmatic) and ``cmcpctl conformance``.
"""
