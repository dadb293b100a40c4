"""Parsers for TEE evidence (Intel TDX DCAP quotes, AMD SEV-SNP reports) and the simulated quote.

Parsers only decode bytes into typed structures and fail with :class:`EvidenceError`
carrying a stable code; *trust* decisions live in :mod:`cmcp_core.verify`.
"""

from __future__ import annotations

from cmcp_core.errors import CmcpError, Code


class EvidenceError(CmcpError):
    """Evidence that cannot be decoded or checked; ``code`` is a registered :class:`Code`."""

    def __init__(self, code: Code, detail: str):
        super().__init__(code, detail)


__all__ = ["EvidenceError"]
