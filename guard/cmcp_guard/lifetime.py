"""A permit's lifetime judged on the guard's own clock, never on the enclave's.

In a confidential VM the host sets the guest's wall clock, so ``iat`` and ``exp`` are only
claims: an enclave a year ahead would mint permits that stay "valid" for a year. The guard
accepts a permit only if it was issued near its own now and lives no longer than its own TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmcp_core.errors import CmcpError, Code
from cmcp_core.permit import Permit

DEFAULT_CLOCK_SKEW_SECONDS = 30
DEFAULT_MAX_TTL_SECONDS = 60  # cmcp-enclave --permit-ttl default


@dataclass(frozen=True)
class LifetimePolicy:
    """``max_ttl``: longest ``exp - iat`` accepted; ``skew``: tolerated clock difference, both ways."""

    max_ttl: int = DEFAULT_MAX_TTL_SECONDS
    skew: int = DEFAULT_CLOCK_SKEW_SECONDS

    def check(self, permit: Permit, now: float) -> None:
        """Raise a coded ``CmcpError`` unless ``permit`` is live on the guard's clock ``now``."""
        if permit.iat > now + self.skew:
            raise CmcpError(
                Code.PERMIT_NOT_YET_VALID,
                f"permit issued at {permit.iat}, {permit.iat - now:.0f} s in the future",
            )
        if permit.exp - permit.iat > self.max_ttl:
            raise CmcpError(
                Code.PERMIT_LIFETIME_TOO_LONG,
                f"permit lives {permit.exp - permit.iat} s; this guard allows {self.max_ttl} s",
            )
        # with exp - iat bounded above, exp > now also bounds the age of iat
        if permit.exp <= now:
            raise CmcpError(Code.PERMIT_EXPIRED, f"permit expired at {permit.exp} (guard clock {now:.0f})")

    @property
    def retention_seconds(self) -> int:
        """How long after ``exp`` a spent nonce must be remembered: a permit is refused after that anyway."""
        return self.skew
