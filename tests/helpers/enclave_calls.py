"""Driving an in-process :class:`~cmcp_enclave.enclave.Enclave` the way the gateway does, for unit tests."""

from __future__ import annotations

import itertools
import json
from typing import Any

from cmcp_core.digest import json_digest
from cmcp_devkit.enclave import DEFAULT_AUDIENCE
from cmcp_enclave.enclave import DecideResult, Enclave

_calls = itertools.count()


def decide(enc: Enclave, tool: str, args: dict[str, Any] | None = None, *, session: str = "s1",
           principal: str = "agent-a", audience: str = DEFAULT_AUDIENCE,
           method: str = "tools/call") -> DecideResult:
    args = args or {}
    return enc.decide(session_id=session, call_id=f"c{next(_calls)}", principal=principal, method=method,
                      tool=tool, arguments_json=json.dumps(args).encode(),
                      arguments_digest=json_digest(args), audience=audience)
