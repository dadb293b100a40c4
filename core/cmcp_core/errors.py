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
    RESOURCE_NOT_IN_CATALOG = "RESOURCE_NOT_IN_CATALOG"
    PROMPT_NOT_IN_CATALOG = "PROMPT_NOT_IN_CATALOG"
    METHOD_NOT_IN_MODEL = "METHOD_NOT_IN_MODEL"
    INPUT_NOT_ASKED = "INPUT_NOT_ASKED"
    POLICY_EVAL_ERROR = "POLICY_EVAL_ERROR"
    SESSION_CLOSED = "SESSION_CLOSED"
    SESSION_LIMIT = "SESSION_LIMIT"
    PRINCIPAL_STATE_FULL = "PRINCIPAL_STATE_FULL"
    PRINCIPAL_NOT_HELD = "PRINCIPAL_NOT_HELD"
    PRINCIPAL_TRAIL_INVALID = "PRINCIPAL_TRAIL_INVALID"
    # gateway front door
    MCP_PARSE_FAILURE = "MCP_PARSE_FAILURE"
    MCP_INVALID_REQUEST = "MCP_INVALID_REQUEST"
    HEADER_MISMATCH = "HEADER_MISMATCH"
    HOST_NOT_ALLOWED = "HOST_NOT_ALLOWED"
    ORIGIN_NOT_ALLOWED = "ORIGIN_NOT_ALLOWED"
    METHOD_NOT_FOUND = "METHOD_NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    JSON_TOO_DEEP = "JSON_TOO_DEEP"
    STRING_TOO_LONG = "STRING_TOO_LONG"
    TOO_MANY_CONCURRENT = "TOO_MANY_CONCURRENT"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    TEE_UNAVAILABLE = "TEE_UNAVAILABLE"
    DECISION_UNVERIFIED = "DECISION_UNVERIFIED"
    SESSION_LOST = "SESSION_LOST"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_REQUEST_NOT_RELAYED = "UPSTREAM_REQUEST_NOT_RELAYED"
    AGENT_GONE = "AGENT_GONE"
    # upstream guard
    PERMIT_MISSING = "PERMIT_MISSING"
    PERMIT_MALFORMED = "PERMIT_MALFORMED"
    PERMIT_BAD_SIGNATURE = "PERMIT_BAD_SIGNATURE"
    PERMIT_UNTRUSTED_KEY = "PERMIT_UNTRUSTED_KEY"
    PERMIT_EXPIRED = "PERMIT_EXPIRED"
    PERMIT_REPLAYED = "PERMIT_REPLAYED"
    PERMIT_ARGS_MISMATCH = "PERMIT_ARGS_MISMATCH"
    PERMIT_TOOL_MISMATCH = "PERMIT_TOOL_MISMATCH"
    PERMIT_METHOD_MISMATCH = "PERMIT_METHOD_MISMATCH"
    PERMIT_AUDIENCE_MISMATCH = "PERMIT_AUDIENCE_MISMATCH"
    PERMIT_BUNDLE_MISMATCH = "PERMIT_BUNDLE_MISMATCH"
    PERMIT_NOT_YET_VALID = "PERMIT_NOT_YET_VALID"
    PERMIT_LIFETIME_TOO_LONG = "PERMIT_LIFETIME_TOO_LONG"
    PERMIT_METHOD_UNSUPPORTED = "PERMIT_METHOD_UNSUPPORTED"
    SPENT_STORE_UNAVAILABLE = "SPENT_STORE_UNAVAILABLE"
    # enclave start-up
    INITDATA_MISMATCH = "INITDATA_MISMATCH"
    BUNDLE_HASH_MISMATCH = "BUNDLE_HASH_MISMATCH"
    BUNDLE_INVALID = "BUNDLE_INVALID"
    TEE_PROVIDER_FAILED = "TEE_PROVIDER_FAILED"
    # verifier (evidence, bindings, Trust Records)
    EVIDENCE_MALFORMED = "EVIDENCE_MALFORMED"
    EVIDENCE_UNSUPPORTED = "EVIDENCE_UNSUPPORTED"
    EVIDENCE_BAD_SIGNATURE = "EVIDENCE_BAD_SIGNATURE"
    EVIDENCE_CHAIN_INVALID = "EVIDENCE_CHAIN_INVALID"
    COLLATERAL_INVALID = "COLLATERAL_INVALID"
    COLLATERAL_EXPIRED = "COLLATERAL_EXPIRED"
    TCB_STATUS_REJECTED = "TCB_STATUS_REJECTED"
    TCB_MISMATCH = "TCB_MISMATCH"
    DEBUG_ENABLED = "DEBUG_ENABLED"
    SIMULATED_NOT_ALLOWED = "SIMULATED_NOT_ALLOWED"
    BINDING_NONCE_MISMATCH = "BINDING_NONCE_MISMATCH"
    BINDING_KEY_MISMATCH = "BINDING_KEY_MISMATCH"
    BINDING_BUNDLE_MISMATCH = "BINDING_BUNDLE_MISMATCH"
    BINDING_CATALOG_MISMATCH = "BINDING_CATALOG_MISMATCH"
    BINDING_MODE_MISMATCH = "BINDING_MODE_MISMATCH"
    BINDING_REPORT_DATA_MISMATCH = "BINDING_REPORT_DATA_MISMATCH"
    ATTESTED_BUNDLE_UNEXPECTED = "ATTESTED_BUNDLE_UNEXPECTED"
    REFERENCE_VALUE_MISMATCH = "REFERENCE_VALUE_MISMATCH"
    REFERENCE_VALUES_MISSING = "REFERENCE_VALUES_MISSING"
    RELEASE_MANIFEST_INVALID = "RELEASE_MANIFEST_INVALID"
    INITDATA_UNEXPECTED = "INITDATA_UNEXPECTED"
    VERIFY_INPUT_INVALID = "VERIFY_INPUT_INVALID"
    VERIFY_INTERNAL_ERROR = "VERIFY_INTERNAL_ERROR"
    RECORD_INVALID = "RECORD_INVALID"
    RECORD_STALE = "RECORD_STALE"
    RECORD_KEY_MISMATCH = "RECORD_KEY_MISMATCH"
    RECORD_BUNDLE_MISMATCH = "RECORD_BUNDLE_MISMATCH"
    RECORD_TRANSCRIPT_MISMATCH = "RECORD_TRANSCRIPT_MISMATCH"
    EVIDENCE_REJECTED = "EVIDENCE_REJECTED"
    # NVIDIA GPU evidence (cmcp_core.evidence.gpu, cmcp_core.verify.gpu)
    GPU_EVIDENCE_MISSING = "GPU_EVIDENCE_MISSING"
    GPU_EVIDENCE_MALFORMED = "GPU_EVIDENCE_MALFORMED"
    GPU_EVIDENCE_UNREFERENCED = "GPU_EVIDENCE_UNREFERENCED"
    GPU_EVIDENCE_BAD_SIGNATURE = "GPU_EVIDENCE_BAD_SIGNATURE"
    GPU_CHAIN_INVALID = "GPU_CHAIN_INVALID"
    GPU_CERT_EXPIRED = "GPU_CERT_EXPIRED"
    GPU_NONCE_MISMATCH = "GPU_NONCE_MISMATCH"
    GPU_RIM_INVALID = "GPU_RIM_INVALID"
    GPU_RIM_BAD_SIGNATURE = "GPU_RIM_BAD_SIGNATURE"
    GPU_RIM_CHAIN_INVALID = "GPU_RIM_CHAIN_INVALID"
    GPU_RIM_MISMATCH = "GPU_RIM_MISMATCH"
    GPU_MEASUREMENT_MISMATCH = "GPU_MEASUREMENT_MISMATCH"
    GPU_REVOCATION_UNSUPPORTED = "GPU_REVOCATION_UNSUPPORTED"
    GPU_OCSP_INVALID = "GPU_OCSP_INVALID"
    GPU_CERT_REVOKED = "GPU_CERT_REVOKED"
    # enclave decisions and audit chain (issue 2)
    AUDIENCE_MISMATCH = "AUDIENCE_MISMATCH"
    ARGS_DIGEST_MISMATCH = "ARGS_DIGEST_MISMATCH"
    ARGS_INVALID = "ARGS_INVALID"
    ARGS_TOO_LARGE = "ARGS_TOO_LARGE"
    PRINCIPAL_BUSY = "PRINCIPAL_BUSY"
    DECISION_WORKER_FAILED = "DECISION_WORKER_FAILED"
    GATEWAY_UNAUTHENTICATED = "GATEWAY_UNAUTHENTICATED"
    DECIDE_FRAME_INVALID = "DECIDE_FRAME_INVALID"
    DECIDE_HOP_BUSY = "DECIDE_HOP_BUSY"
    SESSION_PRINCIPAL_MISMATCH = "SESSION_PRINCIPAL_MISMATCH"
    SESSION_UNKNOWN = "SESSION_UNKNOWN"
    RESET_UNAUTHORIZED = "RESET_UNAUTHORIZED"
    AUDIT_MALFORMED = "AUDIT_MALFORMED"
    AUDIT_SEQ_GAP = "AUDIT_SEQ_GAP"
    AUDIT_CHAIN_BROKEN = "AUDIT_CHAIN_BROKEN"
    AUDIT_ENTRY_EDITED = "AUDIT_ENTRY_EDITED"
    AUDIT_BAD_SIGNATURE = "AUDIT_BAD_SIGNATURE"
    AUDIT_TRUNCATED = "AUDIT_TRUNCATED"
    AUDIT_STORE_UNAVAILABLE = "AUDIT_STORE_UNAVAILABLE"
    AUDIT_FORK = "AUDIT_FORK"
    AUDIT_WITHHELD = "AUDIT_WITHHELD"
    AUDIT_PRINCIPAL_WITHHELD = "AUDIT_PRINCIPAL_WITHHELD"
    AUDIT_OUTBOX_FULL = "AUDIT_OUTBOX_FULL"
    # agent identity (access tokens verified in the enclave, cmcp_core.identity)
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_MALFORMED = "TOKEN_MALFORMED"
    TOKEN_ISSUER_UNTRUSTED = "TOKEN_ISSUER_UNTRUSTED"
    TOKEN_KEY_UNTRUSTED = "TOKEN_KEY_UNTRUSTED"
    TOKEN_BAD_SIGNATURE = "TOKEN_BAD_SIGNATURE"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
    TOKEN_AUDIENCE_MISMATCH = "TOKEN_AUDIENCE_MISMATCH"
    TOKEN_CLAIMS_INVALID = "TOKEN_CLAIMS_INVALID"
    IDENTITY_MISMATCH = "IDENTITY_MISMATCH"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    AGENT_TOKEN_FORWARDED = "AGENT_TOKEN_FORWARDED"


@dataclass(frozen=True)
class CodeInfo:
    jsonrpc: int  # JSON-RPC error code the gateway answers with
    http: int  # HTTP status where the code travels over plain HTTP (guard, limits)
    summary: str


REGISTRY: dict[Code, CodeInfo] = {
    Code.POLICY_DENY: CodeInfo(-32000, 403, "A Cedar policy denied the call."),
    Code.TOOL_NOT_IN_CATALOG: CodeInfo(-32000, 403, "The tool is not in the measured catalog."),
    Code.RESOURCE_NOT_IN_CATALOG: CodeInfo(-32000, 403, "The resource is not in the measured catalog."),
    Code.PROMPT_NOT_IN_CATALOG: CodeInfo(-32000, 403, "The prompt is not in the measured catalog."),
    Code.METHOD_NOT_IN_MODEL: CodeInfo(-32000, 403, "The bundle's request model decides no such method."),
    Code.INPUT_NOT_ASKED: CodeInfo(
        -32000, 403, "The request answers an input request the enclave did not let reach the agent."),
    Code.POLICY_EVAL_ERROR: CodeInfo(-32000, 403, "A policy errored during evaluation; denied."),
    Code.SESSION_CLOSED: CodeInfo(-32000, 409, "The session was closed or expired."),
    Code.SESSION_LIMIT: CodeInfo(-32000, 429, "The enclave holds its maximum of sessions."),
    Code.PRINCIPAL_STATE_FULL: CodeInfo(
        -32000, 429, "The enclave's principal table is full of active principals."),
    Code.PRINCIPAL_NOT_HELD: CodeInfo(
        -32003, 503, "The enclave holds no state for this principal; the gateway hands over its trail."),
    Code.PRINCIPAL_TRAIL_INVALID: CodeInfo(
        -32000, 403, "The principal's trail does not verify or does not cover the window; refused."),
    Code.MCP_PARSE_FAILURE: CodeInfo(-32700, 400, "The body is not valid JSON."),
    Code.MCP_INVALID_REQUEST: CodeInfo(-32600, 400, "The body is not a JSON-RPC 2.0 request."),
    Code.HOST_NOT_ALLOWED: CodeInfo(-32600, 421, "The Host header names no host this route serves."),
    Code.ORIGIN_NOT_ALLOWED: CodeInfo(-32600, 403, "The Origin header names no origin this route serves."),
    Code.HEADER_MISMATCH: CodeInfo(
        -32020, 400, "The Mcp-Method / Mcp-Name headers are missing or disagree with the body."),
    Code.METHOD_NOT_FOUND: CodeInfo(-32601, 404, "The MCP method is not supported."),
    Code.UNAUTHENTICATED: CodeInfo(-32001, 401, "No valid agent credential."),
    Code.BODY_TOO_LARGE: CodeInfo(-32600, 413, "The request body exceeds the limit."),
    Code.JSON_TOO_DEEP: CodeInfo(-32600, 400, "The JSON nests deeper than the limit."),
    Code.STRING_TOO_LONG: CodeInfo(-32600, 400, "A JSON string exceeds the length limit."),
    Code.TOO_MANY_CONCURRENT: CodeInfo(-32002, 429, "Too many concurrent requests for this agent."),
    Code.HEADERS_TOO_LARGE: CodeInfo(-32600, 431, "The request line and headers exceed the limit."),
    Code.REQUEST_TIMEOUT: CodeInfo(-32600, 408, "The request's headers or body did not arrive in time."),
    Code.TEE_UNAVAILABLE: CodeInfo(-32003, 503, "No enclave answered; failed closed."),
    Code.DECISION_UNVERIFIED: CodeInfo(-32003, 502, "The enclave's signature did not verify."),
    Code.SESSION_LOST: CodeInfo(-32004, 410, "The enclave holding the session is gone."),
    Code.UPSTREAM_UNAVAILABLE: CodeInfo(-32005, 502, "The upstream MCP server did not answer."),
    Code.UPSTREAM_REQUEST_NOT_RELAYED: CodeInfo(
        -32005, 502, "The upstream asked the client something the gateway cannot relay."),
    Code.AGENT_GONE: CodeInfo(-32005, 499, "The agent left before the upstream's answer was relayed."),
    Code.PERMIT_MISSING: CodeInfo(-32010, 403, "The call carries no enclave permit."),
    Code.PERMIT_MALFORMED: CodeInfo(-32010, 403, "The permit is not a well-formed token."),
    Code.PERMIT_BAD_SIGNATURE: CodeInfo(-32010, 403, "The permit's signature does not verify."),
    Code.PERMIT_UNTRUSTED_KEY: CodeInfo(-32010, 403, "The permit's key is not attested."),
    Code.PERMIT_EXPIRED: CodeInfo(-32010, 403, "The permit has expired."),
    Code.PERMIT_REPLAYED: CodeInfo(-32010, 403, "The permit was already used."),
    Code.PERMIT_ARGS_MISMATCH: CodeInfo(-32010, 403, "The permit is for other arguments."),
    Code.PERMIT_TOOL_MISMATCH: CodeInfo(-32010, 403, "The permit is for another tool."),
    Code.PERMIT_METHOD_MISMATCH: CodeInfo(-32010, 403, "The permit is for another MCP method."),
    Code.PERMIT_AUDIENCE_MISMATCH: CodeInfo(-32010, 403, "The permit is for another upstream."),
    Code.PERMIT_BUNDLE_MISMATCH: CodeInfo(-32010, 403, "The permit names a bundle not allowed."),
    Code.PERMIT_NOT_YET_VALID: CodeInfo(-32010, 403, "The permit was issued in the guard's future."),
    Code.PERMIT_LIFETIME_TOO_LONG: CodeInfo(-32010, 403, "The permit lives longer than the guard allows."),
    Code.PERMIT_METHOD_UNSUPPORTED: CodeInfo(
        -32010, 403, "The guard admits this MCP message neither with a permit nor without; refused."),
    Code.SPENT_STORE_UNAVAILABLE: CodeInfo(-32010, 503, "The spent-permit store is unreachable."),
    Code.INITDATA_MISMATCH: CodeInfo(-32003, 503, "Initdata does not match the measurement."),
    Code.BUNDLE_HASH_MISMATCH: CodeInfo(-32003, 503, "The bundle is not the one initdata names."),
    Code.BUNDLE_INVALID: CodeInfo(-32003, 503, "The bundle does not load or validate."),
    Code.TEE_PROVIDER_FAILED: CodeInfo(-32003, 503, "The TEE could not produce evidence."),
    Code.EVIDENCE_MALFORMED: CodeInfo(-32003, 502, "Attestation evidence does not parse."),
    Code.EVIDENCE_UNSUPPORTED: CodeInfo(-32003, 502, "Evidence version or TEE type is not supported."),
    Code.EVIDENCE_BAD_SIGNATURE: CodeInfo(-32003, 502, "The evidence signature does not verify."),
    Code.EVIDENCE_CHAIN_INVALID: CodeInfo(-32003, 502, "The evidence's cert chain misses a pinned root."),
    Code.COLLATERAL_INVALID: CodeInfo(-32003, 502, "Collateral is missing, malformed or untrusted."),
    Code.COLLATERAL_EXPIRED: CodeInfo(-32003, 502, "Collateral or a certificate has expired."),
    Code.TCB_STATUS_REJECTED: CodeInfo(-32003, 502, "The TCB status is not accepted by policy."),
    Code.TCB_MISMATCH: CodeInfo(-32003, 502, "The signing key's TCB/chip id differs."),
    Code.DEBUG_ENABLED: CodeInfo(-32003, 502, "The TEE runs with debug enabled."),
    Code.SIMULATED_NOT_ALLOWED: CodeInfo(-32003, 502, "Simulated (software-only) evidence was not allowed."),
    Code.BINDING_NONCE_MISMATCH: CodeInfo(-32003, 502, "The evidence is bound to another nonce."),
    Code.BINDING_KEY_MISMATCH: CodeInfo(-32003, 502, "The evidence is bound to another enclave key."),
    Code.BINDING_BUNDLE_MISMATCH: CodeInfo(-32003, 502, "The evidence is bound to another bundle hash."),
    Code.BINDING_CATALOG_MISMATCH: CodeInfo(-32003, 502, "The evidence is bound to another catalog hash."),
    Code.BINDING_MODE_MISMATCH: CodeInfo(-32003, 502, "The evidence is bound to another enforcement mode."),
    Code.BINDING_REPORT_DATA_MISMATCH: CodeInfo(-32003, 502, "REPORT_DATA does not bind the claimed values."),
    Code.ATTESTED_BUNDLE_UNEXPECTED: CodeInfo(-32003, 502, "The attested bundle is not the expected one."),
    Code.REFERENCE_VALUE_MISMATCH: CodeInfo(-32003, 502, "A measurement differs from its reference value."),
    Code.REFERENCE_VALUES_MISSING: CodeInfo(-32003, 502, "No signed release manifest is configured."),
    Code.RELEASE_MANIFEST_INVALID: CodeInfo(
        -32003, 502, "A release manifest is malformed or not signed by a trusted key."),
    Code.INITDATA_UNEXPECTED: CodeInfo(
        -32003, 502, "The measured initdata is not what this relying party expects."),
    Code.VERIFY_INPUT_INVALID: CodeInfo(-32003, 400, "The verifier was given unusable input."),
    Code.VERIFY_INTERNAL_ERROR: CodeInfo(-32003, 500, "The verifier failed unexpectedly; failed closed."),
    Code.RECORD_INVALID: CodeInfo(-32003, 502, "The Trust Record fails schema or signature."),
    Code.RECORD_STALE: CodeInfo(-32003, 502, "The Trust Record is outside the freshness window."),
    Code.RECORD_KEY_MISMATCH: CodeInfo(-32003, 502, "The Trust Record's cnf.jwk is not the attested key."),
    Code.RECORD_BUNDLE_MISMATCH: CodeInfo(-32003, 502, "The Trust Record names another bundle hash."),
    Code.RECORD_TRANSCRIPT_MISMATCH: CodeInfo(-32003, 502, "Transcript hash is not the audit chain tip."),
    Code.EVIDENCE_REJECTED: CodeInfo(-32003, 502, "The evidence failed verification."),
    Code.GPU_EVIDENCE_MISSING: CodeInfo(-32003, 502, "GPU evidence is required but none was supplied."),
    Code.GPU_EVIDENCE_MALFORMED: CodeInfo(
        -32003, 502, "The GPU evidence (envelope, SPDM report, certificate) does not parse."),
    Code.GPU_EVIDENCE_UNREFERENCED: CodeInfo(
        -32003, 502, "The GPU evidence is not what the Trust Record names by digest."),
    Code.GPU_EVIDENCE_BAD_SIGNATURE: CodeInfo(
        -32003, 502, "The GPU's signature over its SPDM transcript does not verify."),
    Code.GPU_CHAIN_INVALID: CodeInfo(
        -32003, 502, "The GPU's certificate chain does not lead to the pinned NVIDIA device root."),
    Code.GPU_CERT_EXPIRED: CodeInfo(
        -32003, 502, "A GPU or RIM certificate is not valid at the verification time."),
    Code.GPU_NONCE_MISMATCH: CodeInfo(-32003, 502, "The GPU report answers another nonce."),
    Code.GPU_RIM_INVALID: CodeInfo(-32003, 502, "A RIM does not parse or is not a GPU RIM."),
    Code.GPU_RIM_BAD_SIGNATURE: CodeInfo(-32003, 502, "A RIM's XML signature does not verify."),
    Code.GPU_RIM_CHAIN_INVALID: CodeInfo(
        -32003, 502, "A RIM's signing chain does not lead to the pinned NVIDIA RIM root."),
    Code.GPU_RIM_MISMATCH: CodeInfo(-32003, 502, "The RIMs are not for this GPU's driver and VBIOS."),
    Code.GPU_MEASUREMENT_MISMATCH: CodeInfo(
        -32003, 502, "A GPU measurement differs from the RIMs' golden values."),
    Code.GPU_REVOCATION_UNSUPPORTED: CodeInfo(
        -32003, 400, "The GPU revocation policy is not one the verifier knows."),
    Code.GPU_OCSP_INVALID: CodeInfo(-32003, 502, "A stapled OCSP response is missing, unsigned or stale."),
    Code.GPU_CERT_REVOKED: CodeInfo(-32003, 502, "A GPU or RIM certificate is revoked."),
    Code.AUDIENCE_MISMATCH: CodeInfo(-32000, 403, "The call's upstream is not the measured audience."),
    Code.ARGS_DIGEST_MISMATCH: CodeInfo(-32602, 400, "arguments_digest is not the digest of the arguments."),
    Code.ARGS_INVALID: CodeInfo(-32602, 400, "The arguments are not a JSON object Cedar can take."),
    Code.ARGS_TOO_LARGE: CodeInfo(-32602, 413, "The arguments exceed the bundle's bound for this tool."),
    Code.PRINCIPAL_BUSY: CodeInfo(-32000, 429, "Too many of this principal's decisions wait in the enclave."),
    Code.DECISION_WORKER_FAILED: CodeInfo(-32603, 503, "A decision worker failed; nothing was decided."),
    Code.GATEWAY_UNAUTHENTICATED: CodeInfo(-32001, 403, "The caller is not a gateway the initdata names."),
    Code.DECIDE_FRAME_INVALID: CodeInfo(
        -32003, 400, "A decide hop frame is too long, undecodable, of another version or unexpected."),
    Code.DECIDE_HOP_BUSY: CodeInfo(
        -32003, 503, "Too many decide hop connections await a gateway proof; this one is refused."),
    Code.SESSION_PRINCIPAL_MISMATCH: CodeInfo(-32000, 403, "The session belongs to another principal."),
    Code.SESSION_UNKNOWN: CodeInfo(-32004, 404, "The enclave holds no such session."),
    Code.RESET_UNAUTHORIZED: CodeInfo(-32001, 403, "The session reset is not signed by an operator key."),
    Code.AUDIT_MALFORMED: CodeInfo(-32003, 400, "An audit entry is not a well-formed entry."),
    Code.AUDIT_SEQ_GAP: CodeInfo(-32003, 409, "Audit sequence numbers skip or repeat (deletion/reorder)."),
    Code.AUDIT_CHAIN_BROKEN: CodeInfo(-32003, 409, "An audit entry does not link to its predecessor."),
    Code.AUDIT_ENTRY_EDITED: CodeInfo(-32003, 409, "An audit entry's hash does not match its content."),
    Code.AUDIT_BAD_SIGNATURE: CodeInfo(-32003, 409, "An audit entry's signature does not verify."),
    Code.AUDIT_TRUNCATED: CodeInfo(-32003, 409, "The audit chain does not end at the expected tip."),
    Code.AUDIT_STORE_UNAVAILABLE: CodeInfo(-32010, 503, "The audit store cannot record the entries."),
    Code.AUDIT_FORK: CodeInfo(-32003, 409, "Two different audit entries claim one place in a chain."),
    Code.AUDIT_WITHHELD: CodeInfo(-32003, 409, "The ledger names a session the audit store lacks."),
    Code.AUDIT_PRINCIPAL_WITHHELD: CodeInfo(
        -32003, 409, "An enclave took a principal over from a trail that lacked decisions the store holds."),
    Code.AUDIT_OUTBOX_FULL: CodeInfo(-32010, 503, "Audit entries wait to leave the enclave; no new session."),
    Code.TOKEN_MISSING: CodeInfo(-32001, 401, "The route's bundle requires an access token; none was sent."),
    Code.TOKEN_MALFORMED: CodeInfo(-32001, 401, "The access token is not a well-formed JWT."),
    Code.TOKEN_ISSUER_UNTRUSTED: CodeInfo(-32001, 401, "The token's issuer is not one the bundle trusts."),
    Code.TOKEN_KEY_UNTRUSTED: CodeInfo(-32001, 401, "The token's signing key is not one the bundle pins."),
    Code.TOKEN_BAD_SIGNATURE: CodeInfo(
        -32001, 401, "The token's signature does not verify or uses an algorithm not allowed."),
    Code.TOKEN_EXPIRED: CodeInfo(-32001, 401, "The access token has expired."),
    Code.TOKEN_NOT_YET_VALID: CodeInfo(-32001, 401, "The access token is not valid yet (nbf)."),
    Code.TOKEN_AUDIENCE_MISMATCH: CodeInfo(
        -32001, 401, "The token was not issued for this route (RFC 8707)."),
    Code.TOKEN_CLAIMS_INVALID: CodeInfo(
        -32001, 401, "The token lacks a claim the bundle maps or lives longer than it allows."),
    Code.IDENTITY_MISMATCH: CodeInfo(-32001, 403, "The principal named is not the one the token proves."),
    Code.INSUFFICIENT_SCOPE: CodeInfo(-32000, 403, "The token lacks a scope the tool requires."),
    Code.AGENT_TOKEN_FORWARDED: CodeInfo(
        -32010, 403, "The guard got a request with an Authorization header; tokens are never passed on."),
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
