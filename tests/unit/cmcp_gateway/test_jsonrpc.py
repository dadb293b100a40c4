"""JSON-RPC bodies: results, and errors carrying the registry's JSON-RPC code and HTTP status."""

from __future__ import annotations

import json

from cmcp_core.errors import REGISTRY, Code
from cmcp_gateway.jsonrpc import JSON, FailedRequest, error_body, error_response, result_body


def test_result_body() -> None:
    assert json.loads(result_body(7, {"ok": True})) == {"jsonrpc": "2.0", "id": 7, "result": {"ok": True}}


def test_error_body_carries_the_registered_code_and_data() -> None:
    doc = json.loads(error_body("r1", Code.POLICY_DENY, "denied", {"call_id": "c"}))
    assert doc["id"] == "r1" and doc["error"]["code"] == REGISTRY[Code.POLICY_DENY].jsonrpc
    assert doc["error"]["data"] == {"error_code": "POLICY_DENY", "call_id": "c"}
    assert json.loads(error_body(None, Code.POLICY_DENY, "m", rpc_code=-32600))["error"]["code"] == -32600


def test_error_response_uses_the_registry_status_unless_overridden() -> None:
    response = error_response(1, Code.TOO_MANY_CONCURRENT, "slow down", headers={"retry-after": "1"})
    assert response.status == REGISTRY[Code.TOO_MANY_CONCURRENT].http == 429
    assert response.media_type == JSON
    assert error_response(1, Code.POLICY_DENY, "x", status=200).status == 200


def test_a_failed_request_carries_its_answer() -> None:
    response = error_response(1, Code.POLICY_DENY, "x")
    failure = FailedRequest(response, "POLICY_DENY")
    assert failure.response is response and failure.code == "POLICY_DENY" and str(failure) == "POLICY_DENY"
