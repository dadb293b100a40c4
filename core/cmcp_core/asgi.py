"""Reading an ASGI request body under a size limit: the gateway's front door and the guard's.

Both refuse a body over the limit with ``BODY_TOO_LARGE`` as soon as they know (a declared
Content-Length first, else while it streams) and stop answering a client that went away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cmcp_core.errors import CmcpError, Code

if TYPE_CHECKING:  # a type only: cmcp-core depends on no HTTP server framework
    from starlette.types import Receive


class ClientGone(Exception):
    """The client disconnected before its body was complete: there is no one left to answer."""


async def read_body(receive: Receive, limit: int, declared_length: str | None = None) -> bytes:
    """The whole body, or ``CmcpError(BODY_TOO_LARGE)`` past ``limit`` bytes, or ``ClientGone``."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise CmcpError(Code.BODY_TOO_LARGE, f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise CmcpError(Code.BODY_TOO_LARGE, f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
