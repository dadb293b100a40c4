"""The permit check itself, shared by the ASGI middleware and the reverse proxy.

The (tool, arguments) parsing and digest live in :mod:`cmcp_core.mcp_target`, shared with the
gateway, so both ends bind exactly the same pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cmcp_core import permit as permits
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import TOOLS_CALL, args_digest
from cmcp_guard.lifetime import LifetimePolicy
from cmcp_guard.replay import ReplayCache
from cmcp_guard.spent import SpentPermits


class PermitChecker:
    """Permit verification, lifetime on the guard's clock, and spending the nonce, for one audience."""

    def __init__(
        self,
        *,
        audience: str,
        keys: Callable[[], Mapping[str, Ed25519PublicKey]],
        allowed_bundles: frozenset[str] | None = None,
        replay: SpentPermits | None = None,
        lifetime: LifetimePolicy | None = None,
    ) -> None:
        self.audience = audience
        self._keys = keys
        self.allowed_bundles = allowed_bundles
        self.lifetime = lifetime or LifetimePolicy()
        self.replay: SpentPermits = replay if replay is not None else ReplayCache()

    def check(
        self, token: str | None, tool: str, arguments: Mapping[str, Any], now: float | None = None,
        method: str = TOOLS_CALL, digest: str | None = None,
    ) -> permits.Permit:
        """Raise a coded ``CmcpError`` unless ``token`` authorises exactly this request (``method``
        on ``tool``, the target's name, with these arguments), once, now. ``digest`` is the
        target's when it binds more than the arguments (a multi-round trip's answers)."""
        current = time.time() if now is None else now
        if not token:
            raise CmcpError(Code.PERMIT_MISSING, f"{method} without an enclave permit")
        permit = permits.verify(
            token,
            trusted_keys=self._keys(),
            audience=self.audience,
            tool=tool,
            args_digest=args_digest(arguments) if digest is None else digest,
            allowed_bundles=self.allowed_bundles,
            now=current,
            method=method,
        )
        self.lifetime.check(permit, current)
        self.replay.use(permit.nonce, permit.exp, now=current)  # only a fully valid permit spends its nonce
        return permit
