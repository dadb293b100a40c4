"""The enclave's structured log events. Never pass secrets, arguments or permits here."""

from __future__ import annotations

import logging
from typing import Any

_logger = logging.getLogger("cmcp.enclave")


def log(event: str, level: str = "info", **fields: Any) -> None:
    """One JSON line on stderr (via :mod:`cmcp_core.logs`) with ``event`` and ``fields``."""
    _logger.log(logging.getLevelName(level.upper()), event, extra={"event": event, **fields})
