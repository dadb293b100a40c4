"""A fake of a route's enclave pool that holds sessions as real enclaves do, for session-table and
MCP-handler unit tests of adoption (a session another gateway replica opened)."""

from __future__ import annotations

import json
from typing import Any

from cmcp_core.errors import CmcpError, Code
from cmcp_core.proto import enclave_pb2
from cmcp_core.session_id import mint
from cmcp_gateway import pinning
from cmcp_gateway.pinning import Pin
from cmcp_gateway.sessions import McpSession

ENCLAVES = [Pin(f"127.0.0.1:5005{i}", f"kid{i}" * 4 + "-rest-of-a-thumbprint") for i in range(3)]


class FakePool:
    """Attested enclaves that hold sessions as a real one does: by id, each for one principal.

    ``list_tools`` answers as the enclave would (``SESSION_UNKNOWN`` for an id it does not hold,
    ``SESSION_PRINCIPAL_MISMATCH`` for another principal's, ``SESSION_CLOSED`` after a close);
    ``asked`` records which enclave was asked about which session."""

    def __init__(self, enclaves: list[Pin] | None = None) -> None:
        self.enclaves = list(ENCLAVES[:1] if enclaves is None else enclaves)
        self.held: dict[str, tuple[Pin, str]] = {}  # session id -> (enclave, principal)
        self.closed: list[tuple[str, str]] = []
        self.asked: list[tuple[Pin, str]] = []

    async def pick(self, key: str) -> Pin:
        return pinning.pick(key, self.enclaves, "demo")

    async def owner(self, session_id: str, principal: str) -> Pin:
        return pinning.owner(session_id, principal, self.enclaves)

    async def list_tools(self, pin: Pin, session_id: str, principal: str, _token: str = "") -> list[str]:
        self.asked.append((pin, session_id))
        if session_id in {sid for sid, _ in self.closed}:
            raise CmcpError(Code.SESSION_CLOSED, "closed")
        held = self.held.get(session_id)
        if held is None or held[0] != pin:
            raise CmcpError(Code.SESSION_UNKNOWN, "no such session")
        if held[1] != principal:
            raise CmcpError(Code.SESSION_PRINCIPAL_MISMATCH, "another principal's")
        return ["echo"]

    async def close_session(self, pin: Pin, session_id: str, reason: str) -> Any:
        self.closed.append((session_id, reason))
        record = json.dumps({"session": session_id}).encode()
        return enclave_pb2.CloseSessionResponse(trust_record_json=record, chain_tip="tip", entries=2)

    async def open_session(self, pin: Pin, principal: str, access_token: str = "") -> str:
        """OpenSession: the enclave mints the id and holds the session from then on."""
        session_id = mint(pin.kid)
        self.held[session_id] = (pin, principal)
        return session_id

    def opened(self, session: McpSession) -> McpSession:
        """The enclave now holds ``session`` (a real one does from OpenSession or the first call)."""
        self.held[session.id] = (session.pin, session.agent)
        return session
