"""The permit check itself, shared by the ASGI middleware and the reverse proxy.

``tool_call_target`` is also what the gateway uses to compute the argument digest it asks the
enclave about, so both ends bind exactly the same (tool, arguments) pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core import permit as permits
from cmcp_core.digest import canonical, tagged_sha256
from cmcp_core.errors import CmcpError, Code
from cmcp_guard.replay import ReplayCache

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


class PermitChecker:
    """Stateless permit verification plus the single-use nonce cache, for one audience."""

    def __init__(
        self,
        *,
        audience: str,
        keys: Callable[[], Mapping[str, Ed25519PublicKey]],
        allowed_bundles: frozenset[str] | None = None,
        replay: ReplayCache | None = None,
    ) -> None:
        self.audience = audience
        self._keys = keys
        self.allowed_bundles = allowed_bundles
        self.replay = replay or ReplayCache()

    def check(
        self, token: str | None, tool: str, arguments: Mapping[str, Any], now: float | None = None
    ) -> permits.Permit:
        """Raise a coded ``CmcpError`` unless ``token`` authorises exactly this call, once."""
        if not token:
            raise CmcpError(Code.PERMIT_MISSING, "tools/call without an enclave permit")
        permit = permits.verify(
            token,
            trusted_keys=self._keys(),
            audience=self.audience,
            tool=tool,
            args_digest=args_digest(arguments),
            allowed_bundles=self.allowed_bundles,
            now=now,
        )
        self.replay.use(permit.nonce, permit.exp, now=now)  # only a fully valid permit spends its nonce
        return permit
