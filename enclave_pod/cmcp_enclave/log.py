"""Structured JSON logs on stderr. Never pass secrets, arguments or permits here."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "component": "cmcp-enclave",
              "event": event, **fields}
    sys.stderr.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    sys.stderr.flush()
