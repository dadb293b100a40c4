"""The in-memory spent-permit store: one process only, forgotten on restart (dev and tests).

A bounded cache whose entries live exactly as long as the permit.

A nonce only needs remembering until its permit expires (an expired permit is refused on its
own), so memory is bounded by the permit rate times the TTL, and a hard cap fails closed.
"""

from __future__ import annotations

import heapq
import time

from cmcp_core.errors import CmcpError, Code
from cmcp_core.permit import CLOCK_SKEW_SECONDS


class ReplayCache:
    """Remembers every nonce seen until its expiry; ``use`` raises on a second sighting."""

    def __init__(self, max_entries: int = 1_000_000, retention_seconds: int = CLOCK_SKEW_SECONDS) -> None:
        self._seen: dict[str, int] = {}
        self._expiry: list[tuple[int, str]] = []
        self._max = max_entries
        self._retention = retention_seconds

    def __len__(self) -> int:
        return len(self._seen)

    def _evict(self, now: float) -> None:
        horizon = now - self._retention
        while self._expiry and self._expiry[0][0] < horizon:
            exp, nonce = heapq.heappop(self._expiry)
            if self._seen.get(nonce) == exp:
                del self._seen[nonce]

    def use(self, nonce: str, exp: int, now: float | None = None) -> None:
        """Record ``nonce`` as spent; ``PERMIT_REPLAYED`` if it was spent before (or the cache is full)."""
        current = time.time() if now is None else now
        self._evict(current)
        if nonce in self._seen:
            raise CmcpError(Code.PERMIT_REPLAYED, "permit nonce already used")
        if len(self._seen) >= self._max:
            # Cannot remember another nonce, so cannot prove this one is fresh: fail closed.
            raise CmcpError(Code.PERMIT_REPLAYED, "replay cache full; refusing until permits expire")
        self._seen[nonce] = exp
        heapq.heappush(self._expiry, (exp, nonce))
