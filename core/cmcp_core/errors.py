"""The one registry of error codes cMCP emits, with the JSON-RPC / HTTP status each maps to.

Every component raises or returns codes from here; ``docs/errors.md`` documents each one and a
unit test keeps the two in step. Add a code here first, then use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    # decisions (enclave)
    POLICY_DENY = "POLICY_DENY"
    TOOL_NOT_IN_CATALOG = "TOOL_NOT_IN_CATALOG"
    POLICY_EVAL_ERROR = "POLICY_EVAL_ERROR"
    SESSION_CLOSED = "SESSION_CLOSED"
    SESSION_LIMIT = "SESSION_LIMIT"
    # gateway front door
    MCP_PARSE_FAILURE = "MCP_PARSE_FAILURE"
    MCP_INVALID_REQUEST = "MCP_INVALID_REQUEST"
    METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    JSON_TOO_DEEP = "JSON_TOO_DEEP"
    STRING_TOO_LONG = "STRING_TOO_LONG"
    TOO_MANY_CONCURRENT = "TOO_MANY_CONCURRENT"
    TEE_UNAVAILABLE = "TEE_UNAVAILABLE"
    DECISION_UNVERIFIED = "DECISION_UNVERIFIED"
    SESSION_LOST = "SESSION_LOST"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    # upstream guard
    PERMIT_MISSING = "PERMIT_MISSING"
    PERMIT_MALFORMED = "PERMIT_MALFORMED"
    PERMIT_BAD_SIGNATURE = "PERMIT_BAD_SIGNATURE"
    PERMIT_UNTRUSTED_KEY = "PERMIT_UNTRUSTED_KEY"
    PERMIT_EXPIRED = "PERMIT_EXPIRED"
    PERMIT_REPLAYED = "PERMIT_REPLAYED"
    PERMIT_ARGS_MISMATCH = "PERMIT_ARGS_MISMATCH"
    PERMIT_TOOL_MISMATCH = "PERMIT_TOOL_MISMATCH"
    PERMIT_AUDIENCE_MISMATCH = "PERMIT_AUDIENCE_MISMATCH"
    PERMIT_BUNDLE_MISMATCH = "PERMIT_BUNDLE_MISMATCH"
    # enclave start-up
    INITDATA_MISMATCH = "INITDATA_MISMATCH"
    BUNDLE_HASH_MISMATCH = "BUNDLE_HASH_MISMATCH"
    BUNDLE_INVALID = "BUNDLE_INVALID"
    TEE_PROVIDER_FAILED = "TEE_PROVIDER_FAILED"


@dataclass(frozen=True)
class CodeInfo:
    jsonrpc: int  # JSON-RPC error code the gateway answers with
    http: int  # HTTP status where the code travels over plain HTTP (guard, limits)
    summary: str


REGISTRY: dict[Code, CodeInfo] = {
    Code.POLICY_DENY: CodeInfo(-32000, 403, "A Cedar policy denied the call."),
    Code.TOOL_NOT_IN_CATALOG: CodeInfo(-32000, 403, "The tool is not in the measured catalog."),
    Code.POLICY_EVAL_ERROR: CodeInfo(-32000, 403, "A policy errored during evaluation; denied."),
    Code.SESSION_CLOSED: CodeInfo(-32000, 409, "The session was closed or expired."),
    Code.SESSION_LIMIT: CodeInfo(-32000, 429, "The enclave holds its maximum of sessions."),
    Code.MCP_PARSE_FAILURE: CodeInfo(-32700, 400, "The body is not valid JSON."),
    Code.MCP_INVALID_REQUEST: CodeInfo(-32600, 400, "The body is not a JSON-RPC 2.0 request."),
    Code.METHOD_NOT_FOUND: CodeInfo(-32601, 404, "The MCP method is not supported."),
    Code.UNAUTHENTICATED: CodeInfo(-32001, 401, "No valid agent credential."),
    Code.BODY_TOO_LARGE: CodeInfo(-32600, 413, "The request body exceeds the limit."),
    Code.JSON_TOO_DEEP: CodeInfo(-32600, 400, "The JSON nests deeper than the limit."),
    Code.STRING_TOO_LONG: CodeInfo(-32600, 400, "A JSON string exceeds the length limit."),
    Code.TOO_MANY_CONCURRENT: CodeInfo(-32002, 429, "Too many concurrent requests for this agent."),
    Code.TEE_UNAVAILABLE: CodeInfo(-32003, 503, "No enclave answered; failed closed."),
    Code.DECISION_UNVERIFIED: CodeInfo(-32003, 502, "The enclave's signature did not verify."),
    Code.SESSION_LOST: CodeInfo(-32004, 410, "The enclave holding the session is gone."),
    Code.UPSTREAM_UNAVAILABLE: CodeInfo(-32005, 502, "The upstream MCP server did not answer."),
    Code.PERMIT_MISSING: CodeInfo(-32010, 403, "The call carries no enclave permit."),
    Code.PERMIT_MALFORMED: CodeInfo(-32010, 403, "The permit is not a well-formed token."),
    Code.PERMIT_BAD_SIGNATURE: CodeInfo(-32010, 403, "The permit's signature does not verify."),
    Code.PERMIT_UNTRUSTED_KEY: CodeInfo(-32010, 403, "The permit's key is not attested."),
    Code.PERMIT_EXPIRED: CodeInfo(-32010, 403, "The permit has expired."),
    Code.PERMIT_REPLAYED: CodeInfo(-32010, 403, "The permit was already used."),
    Code.PERMIT_ARGS_MISMATCH: CodeInfo(-32010, 403, "The permit is for other arguments."),
    Code.PERMIT_TOOL_MISMATCH: CodeInfo(-32010, 403, "The permit is for another tool."),
    Code.PERMIT_AUDIENCE_MISMATCH: CodeInfo(-32010, 403, "The permit is for another upstream."),
    Code.PERMIT_BUNDLE_MISMATCH: CodeInfo(-32010, 403, "The permit names a bundle not allowed."),
    Code.INITDATA_MISMATCH: CodeInfo(-32003, 503, "Initdata does not match the measurement."),
    Code.BUNDLE_HASH_MISMATCH: CodeInfo(-32003, 503, "The bundle is not the one initdata names."),
    Code.BUNDLE_INVALID: CodeInfo(-32003, 503, "The bundle does not load or validate."),
    Code.TEE_PROVIDER_FAILED: CodeInfo(-32003, 503, "The TEE could not produce evidence."),
}


class CmcpError(Exception):
    """An error carrying a registered code; ``str()`` is the human-readable detail."""

    def __init__(self, code: Code, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail

    @property
    def info(self) -> CodeInfo:
        return REGISTRY[self.code]
