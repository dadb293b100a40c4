from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("platform", "evidence", "aux", "initdata", "public_key_jwk", "bundle_hash", "catalog_hash", "enforcement_mode", "report_data", "decide_hop_port", "decide_hop_version", "gpu_evidence")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    AUX_FIELD_NUMBER: _ClassVar[int]
    INITDATA_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_JWK_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_HASH_FIELD_NUMBER: _ClassVar[int]
    CATALOG_HASH_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_MODE_FIELD_NUMBER: _ClassVar[int]
    REPORT_DATA_FIELD_NUMBER: _ClassVar[int]
    DECIDE_HOP_PORT_FIELD_NUMBER: _ClassVar[int]
    DECIDE_HOP_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    platform: str
    evidence: bytes
    aux: bytes
    initdata: bytes
    public_key_jwk: str
    bundle_hash: str
    catalog_hash: str
    enforcement_mode: str
    report_data: bytes
    decide_hop_port: int
    decide_hop_version: int
    gpu_evidence: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, platform: _Optional[str] = ..., evidence: _Optional[bytes] = ..., aux: _Optional[bytes] = ..., initdata: _Optional[bytes] = ..., public_key_jwk: _Optional[str] = ..., bundle_hash: _Optional[str] = ..., catalog_hash: _Optional[str] = ..., enforcement_mode: _Optional[str] = ..., report_data: _Optional[bytes] = ..., decide_hop_port: _Optional[int] = ..., decide_hop_version: _Optional[int] = ..., gpu_evidence: _Optional[_Iterable[bytes]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("principal", "access_token", "trail", "audit_acks")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRAIL_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ACKS_FIELD_NUMBER: _ClassVar[int]
    principal: str
    access_token: str
    trail: PrincipalTrail
    audit_acks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, principal: _Optional[str] = ..., access_token: _Optional[str] = ..., trail: _Optional[_Union[PrincipalTrail, _Mapping]] = ..., audit_acks: _Optional[_Iterable[int]] = ...) -> None: ...

class PrincipalTrail(_message.Message):
    __slots__ = ("entries", "peers", "since_ms")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    peers: _containers.RepeatedCompositeFieldContainer[PeerAttestation]
    since_ms: int
    def __init__(self, entries: _Optional[_Iterable[bytes]] = ..., peers: _Optional[_Iterable[_Union[PeerAttestation, _Mapping]]] = ..., since_ms: _Optional[int] = ...) -> None: ...

class PeerAttestation(_message.Message):
    __slots__ = ("nonce", "attestation")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    attestation: AttestResponse
    def __init__(self, nonce: _Optional[bytes] = ..., attestation: _Optional[_Union[AttestResponse, _Mapping]] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("access_token",)
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    def __init__(self, access_token: _Optional[str] = ...) -> None: ...

class AuthenticateResponse(_message.Message):
    __slots__ = ("principal", "expires_at", "scopes")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    principal: str
    expires_at: int
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principal: _Optional[str] = ..., expires_at: _Optional[int] = ..., scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "audit_entries", "audit_delivery")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    audit_entries: _containers.RepeatedScalarFieldContainer[bytes]
    audit_delivery: int
    def __init__(self, session_id: _Optional[str] = ..., audit_entries: _Optional[_Iterable[bytes]] = ..., audit_delivery: _Optional[int] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("session_id", "call_id", "principal", "method", "tool", "arguments_json", "arguments_digest", "audience", "completes", "access_token", "input_json", "audit_acks")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    COMPLETES_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ACKS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    call_id: str
    principal: str
    method: str
    tool: str
    arguments_json: bytes
    arguments_digest: str
    audience: str
    completes: _containers.RepeatedCompositeFieldContainer[CompleteRequest]
    access_token: str
    input_json: bytes
    audit_acks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., call_id: _Optional[str] = ..., principal: _Optional[str] = ..., method: _Optional[str] = ..., tool: _Optional[str] = ..., arguments_json: _Optional[bytes] = ..., arguments_digest: _Optional[str] = ..., audience: _Optional[str] = ..., completes: _Optional[_Iterable[_Union[CompleteRequest, _Mapping]]] = ..., access_token: _Optional[str] = ..., input_json: _Optional[bytes] = ..., audit_acks: _Optional[_Iterable[int]] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_json", "signature", "permit", "completes_handled", "audit_entries", "audit_delivery")
    DECISION_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PERMIT_FIELD_NUMBER: _ClassVar[int]
    COMPLETES_HANDLED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    decision_json: bytes
    signature: bytes
    permit: str
    completes_handled: int
    audit_entries: _containers.RepeatedScalarFieldContainer[bytes]
    audit_delivery: int
    def __init__(self, decision_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., permit: _Optional[str] = ..., completes_handled: _Optional[int] = ..., audit_entries: _Optional[_Iterable[bytes]] = ..., audit_delivery: _Optional[int] = ...) -> None: ...

class DecideReply(_message.Message):
    __slots__ = ("call_id", "response", "error_code", "error_detail")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    response: DecideResponse
    error_code: str
    error_detail: str
    def __init__(self, call_id: _Optional[str] = ..., response: _Optional[_Union[DecideResponse, _Mapping]] = ..., error_code: _Optional[str] = ..., error_detail: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("session_id", "call_id", "response_digest", "response_bytes", "error_code", "is_error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    call_id: str
    response_digest: str
    response_bytes: int
    error_code: str
    is_error: bool
    def __init__(self, session_id: _Optional[str] = ..., call_id: _Optional[str] = ..., response_digest: _Optional[str] = ..., response_bytes: _Optional[int] = ..., error_code: _Optional[str] = ..., is_error: _Optional[bool] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("entry_hash", "audit_entries", "audit_delivery")
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    entry_hash: str
    audit_entries: _containers.RepeatedScalarFieldContainer[bytes]
    audit_delivery: int
    def __init__(self, entry_hash: _Optional[str] = ..., audit_entries: _Optional[_Iterable[bytes]] = ..., audit_delivery: _Optional[int] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ("session_id", "principal", "access_token", "method")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    principal: str
    access_token: str
    method: str
    def __init__(self, session_id: _Optional[str] = ..., principal: _Optional[str] = ..., access_token: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools", "catalog_json")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_JSON_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedScalarFieldContainer[str]
    catalog_json: bytes
    def __init__(self, tools: _Optional[_Iterable[str]] = ..., catalog_json: _Optional[bytes] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id", "reason", "completes", "audit_acks")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COMPLETES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ACKS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    completes: _containers.RepeatedCompositeFieldContainer[CompleteRequest]
    audit_acks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ..., completes: _Optional[_Iterable[_Union[CompleteRequest, _Mapping]]] = ..., audit_acks: _Optional[_Iterable[int]] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("trust_record_json", "chain_tip", "entries", "completes_handled", "audit_entries", "gpu_evidence", "audit_delivery")
    TRUST_RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    CHAIN_TIP_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMPLETES_HANDLED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    GPU_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    trust_record_json: bytes
    chain_tip: str
    entries: int
    completes_handled: int
    audit_entries: _containers.RepeatedScalarFieldContainer[bytes]
    gpu_evidence: _containers.RepeatedScalarFieldContainer[bytes]
    audit_delivery: int
    def __init__(self, trust_record_json: _Optional[bytes] = ..., chain_tip: _Optional[str] = ..., entries: _Optional[int] = ..., completes_handled: _Optional[int] = ..., audit_entries: _Optional[_Iterable[bytes]] = ..., gpu_evidence: _Optional[_Iterable[bytes]] = ..., audit_delivery: _Optional[int] = ...) -> None: ...

class DrainAuditRequest(_message.Message):
    __slots__ = ("audit_acks",)
    AUDIT_ACKS_FIELD_NUMBER: _ClassVar[int]
    audit_acks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, audit_acks: _Optional[_Iterable[int]] = ...) -> None: ...

class DrainAuditResponse(_message.Message):
    __slots__ = ("audit_entries", "audit_delivery")
    AUDIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    audit_entries: _containers.RepeatedScalarFieldContainer[bytes]
    audit_delivery: int
    def __init__(self, audit_entries: _Optional[_Iterable[bytes]] = ..., audit_delivery: _Optional[int] = ...) -> None: ...

class ResetSessionRequest(_message.Message):
    __slots__ = ("session_id", "actor", "reason", "operator_signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    actor: str
    reason: str
    operator_signature: bytes
    def __init__(self, session_id: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., operator_signature: _Optional[bytes] = ...) -> None: ...

class ResetSessionResponse(_message.Message):
    __slots__ = ("entry_hash", "audit_entries", "audit_delivery")
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    entry_hash: str
    audit_entries: _containers.RepeatedScalarFieldContainer[bytes]
    audit_delivery: int
    def __init__(self, entry_hash: _Optional[str] = ..., audit_entries: _Optional[_Iterable[bytes]] = ..., audit_delivery: _Optional[int] = ...) -> None: ...
