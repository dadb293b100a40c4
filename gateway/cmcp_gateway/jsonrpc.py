"""JSON-RPC 2.0 response bodies with registered error codes, and the gateway's HTTP response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Send

from cmcp_core.errors import REGISTRY, Code

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Response:
    """One complete HTTP answer: the gateway never streams, so a status and one body suffice.

    Sent as ``http.response.start`` (``headers`` first, then content-length and content-type,
    the order Starlette's ``Response`` used) and a single ``http.response.body``. Header names
    in ``headers`` must be lower-case, as ASGI requires.
    """

    body: bytes = b""
    status: int = 200
    media_type: str | None = None
    headers: Mapping[str, str] | None = None

    async def send(self, send: Send) -> None:
        extra = self.headers or {}
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        if self.media_type is not None:
            raw.append((b"content-type", self.media_type.encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


def result_body(request_id: Any, result: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_body(
    request_id: Any, code: Code, message: str, data: dict[str, Any] | None = None, rpc_code: int | None = None
) -> bytes:
    payload: dict[str, Any] = {"error_code": str(code)}
    if data:
        payload.update(data)
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {
                "code": REGISTRY[code].jsonrpc if rpc_code is None else rpc_code,
                "message": message,
                "data": payload,
            },
        }
    )


def error_response(
    request_id: Any,
    code: Code,
    message: str,
    data: dict[str, Any] | None = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error at the HTTP status the registry gives the code (``status`` overrides)."""
    return Response(
        error_body(request_id, code, message, data),
        status=status or REGISTRY[code].http,
        media_type=JSON,
        headers=headers,
    )
