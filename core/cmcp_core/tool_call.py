"""The (tool, arguments) pair of an MCP ``tools/call`` and its digest.

The gateway asks the enclave about exactly this pair and the guard checks the permit against
exactly this pair, so both ends parse and digest it with the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmcp_core.digest import canonical, tagged_sha256
from cmcp_core.errors import CmcpError, Code

TOOLS_CALL = "tools/call"


def tool_call_target(params: Any) -> tuple[str, dict[str, Any]]:
    """Return ``(tool name, arguments)`` of a ``tools/call``; absent arguments mean ``{}``."""
    if not isinstance(params, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, "tools/call params must be an object")
    name = params.get("name")
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        raise CmcpError(Code.MCP_INVALID_REQUEST, "tools/call needs a string name and object arguments")
    return name, arguments


def args_digest(arguments: Mapping[str, Any]) -> str:
    """Digest of the call's arguments (JCS, = ``json_digest``); unrepresentable numbers are refused."""
    try:
        return tagged_sha256(canonical(dict(arguments)))
    except Exception as exc:  # rfc8785 raises its own types for NaN / out-of-range integers
        raise CmcpError(Code.MCP_INVALID_REQUEST, f"arguments cannot be canonicalised: {exc}") from exc
