"""JSON-RPC 2.0 response bodies with registered error codes, and the failure that carries one."""

from __future__ import annotations

from typing import Any

import orjson

from cmcp_core.errors import REGISTRY, Code
from cmcp_gateway.transport import Response

JSON = "application/json"


class FailedRequest(Exception):
    """A request that failed with its answer already built: ``response``, counted under ``code``."""

    def __init__(self, response: Response, code: str) -> None:
        super().__init__(code)
        self.response = response
        self.code = code


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
