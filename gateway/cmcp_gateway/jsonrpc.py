"""JSON-RPC 2.0 response bodies with registered error codes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from cmcp_core.errors import REGISTRY, Code

JSON = "application/json"


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
        status_code=status or REGISTRY[code].http,
        media_type=JSON,
        headers=headers,
    )
