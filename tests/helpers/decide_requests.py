"""One ``DecideRequest`` for the minimal bundle's ``echo`` tool, as a gateway would send it: the
decision-transport tests (the gRPC stream and the lean hop) build their calls with it."""

from __future__ import annotations

import json
import uuid
from typing import Any

from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2
from cmcp_devkit.enclave import DEFAULT_AUDIENCE


def decide_request(session_id: str = "s", text: str = "hi", digest: str | None = None) -> Any:
    """A fresh call id each time; ``digest`` overrides the arguments' (a lying gateway)."""
    args = {"text": text}
    return enclave_pb2.DecideRequest(
        session_id=session_id, call_id=uuid.uuid4().hex, principal="agent", method="tools/call",
        tool="echo", arguments_json=json.dumps(args).encode(),
        arguments_digest=digest or json_digest(args), audience=DEFAULT_AUDIENCE)
