"""The conformance catalogue: every requirement ID, its level, and what it demands.

IDs are stable and never reused: a withdrawn requirement keeps its row with
``withdrawn=True`` so an old report can still be read. ``conformance/README.md`` is the
human form of this table and a unit test keeps the two in step (same IDs, same levels).
The suite marks each test with ``@pytest.mark.conformance("<ID>")``; the runner reports
per ID, and a MUST that fails (or has no test) makes ``cmcpctl conformance`` exit non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    MUST = "MUST"
    SHOULD = "SHOULD"


@dataclass(frozen=True)
class Requirement:
    id: str
    level: Level
    title: str
    checks: str  # what the suite does to attack the property, in one or two sentences
    withdrawn: bool = False


_M, _S = Level.MUST, Level.SHOULD

REQUIREMENTS: tuple[Requirement, ...] = (
    # --- attestation -------------------------------------------------------------------
    Requirement(
        "ATTEST-001",
        _M,
        "Evidence binds key, bundle, catalog, mode and nonce",
        "Attest with a fresh nonce; recompute REPORT_DATA from the enclave's public key, "
        "bundle hash, catalog hash, mode and our nonce and require the quote to carry "
        "exactly it; the same evidence must fail binding against another key or bundle.",
    ),
    Requirement(
        "ATTEST-002",
        _M,
        "Evidence is fresh: the verifier's nonce is required",
        "Two Attest calls with different nonces give different REPORT_DATA; evidence for "
        "one nonce fails appraisal against another; a too-short nonce is refused.",
    ),
    Requirement(
        "ATTEST-003",
        _M,
        "Simulated evidence is trusted only when explicitly allowed",
        "The verifier rejects simulated evidence by default (SIMULATED_NOT_ALLOWED) and "
        "accepts it only when allowed, labelled software-only; hardware targets must "
        "not present simulated evidence.",
    ),
    Requirement(
        "ATTEST-004",
        _M,
        "Tampered evidence is rejected",
        "Flip single bytes in the signed part of the quote (REPORTDATA, MRCONFIGID, "
        "header) and require appraisal to fail with a coded error.",
    ),
    Requirement(
        "ATTEST-005",
        _M,
        "The key that signs decisions is the attested key",
        "A signed decision returned to the agent (deny error data) must verify with the "
        "key bound in fresh evidence, and its kid must be that key's thumbprint.",
    ),
    Requirement(
        "ATTEST-006",
        _M,
        "A forged guest is refused",
        "Boot an enclave on the genuine bundle and initdata as another guest (other launch "
        "measurements); its evidence must fail appraisal against the target's signed releases "
        "with REFERENCE_VALUE_MISMATCH.",
    ),
    Requirement(
        "ATTEST-007",
        _M,
        "GPU evidence is bound to the enclave's attestation",
        "For a target that must prove GPUs: every Attest carries one GPU envelope per GPU whose "
        "SPDM nonce is derived from that Attest's REPORT_DATA and which appraises; GPU evidence "
        "replayed from another attestation, or stripped, fails the whole attestation with its GPU code; "
        "a session's Trust Record names by digest GPU evidence answering the nonce derived from the "
        "record's REPORT_DATA, and an Attest's GPU evidence in its place is GPU_EVIDENCE_UNREFERENCED.",
    ),
    # --- policy ------------------------------------------------------------------------
    Requirement(
        "POLICY-001",
        _M,
        "A tool outside the measured catalog is refused, never forwarded",
        "tools/call of an unknown tool gives -32000 with data.error_code "
        "TOOL_NOT_IN_CATALOG, and the upstream's call counter does not move.",
    ),
    Requirement(
        "POLICY-002",
        _M,
        "A Cedar deny is a coded JSON-RPC error; an allow is forwarded",
        "A forbidden call gives -32000 / POLICY_DENY with call_id and the signed "
        "decision and never reaches the upstream; an allowed call returns the "
        "upstream's structured result with isError preserved.",
    ),
    Requirement(
        "POLICY-003",
        _M,
        "State from the measured catalog drives policy",
        "An external send by an agent the suite has not tainted yet is allowed; after a "
        "PHI-labelled read, the same send is denied.",
    ),
    Requirement(
        "POLICY-004",
        _M,
        "Advisory mode forwards and records advisory_deny",
        "On an advisory route a call Cedar denies is forwarded, marked would_have_denied, "
        "and the enclave's signed decision records advisory_deny.",
    ),
    Requirement(
        "POLICY-005",
        _M,
        "An invalid bundle never serves",
        "An enclave given a bundle whose policy fails schema validation (initdata naming that "
        "very bundle) refuses to start with BUNDLE_INVALID, while the valid bundle starts (local). "
        "On a cluster (--kubeconfig, --route) the same bundle submitted as a PolicyBundle is "
        "rejected at admission naming the file, or marked Valid=False; the valid one is accepted.",
    ),
    # --- audit -------------------------------------------------------------------------
    Requirement(
        "AUDIT-001",
        _M,
        "Every call is audited, allowed or denied",
        "Make allowed, denied and not-in-catalog calls; the exported chain holds one "
        "signed decision entry per call with the matching call id and outcome.",
    ),
    Requirement(
        "AUDIT-002",
        _M,
        "The chain starts at genesis and ends at the Trust Record's tip",
        "The first entry links to 'genesis', each links to its predecessor, and the "
        "last hash equals the Trust Record's tool_transcript.hash.",
    ),
    Requirement(
        "AUDIT-003",
        _M,
        "Every decision entry is signed by the attested enclave key",
        "Each entry's kid is the attested key's thumbprint and its signature verifies; "
        "the chain does not verify under any other key.",
    ),
    Requirement(
        "AUDIT-004",
        _S,
        "Outcomes are recorded, arguments are digested",
        "For an allowed call the chain records a completion whose response digest "
        "matches the result; argument values do not appear in clear in the export.",
    ),
    Requirement(
        "AUDIT-005",
        _M,
        "Exports verify offline with cmcpctl",
        "`cmcpctl audit verify` exits 0 on the exported chain and non-zero on a host-edited copy.",
    ),
    Requirement(
        "AUDIT-006",
        _M,
        "The audit store holds every entry; a withheld session is reported",
        "Each call's decision entry is in the store when the call returns and every outcome "
        "follows; the ledger and the session verify from the store, and a copy without the "
        "session is reported AUDIT_WITHHELD.",
    ),
    # --- failure handling ----------------------------------------------------------------
    Requirement(
        "FAIL-001",
        _M,
        "Enclave unavailable fails closed",
        "With the enclave stopped, tools/call gives TEE_UNAVAILABLE (or SESSION_LOST) "
        "and the upstream counter does not move; after a restart the old session ends with "
        "an explicit error instead of moving silently to an enclave without its state.",
    ),
    Requirement(
        "FAIL-002",
        _M,
        "A parse error is coded and the session survives",
        "A non-JSON body gives -32700 with MCP_PARSE_FAILURE and a payload hash; the "
        "same MCP session then completes a normal call.",
    ),
    Requirement(
        "FAIL-003",
        _M,
        "Bad requests get coded errors, never a forward",
        "Unauthenticated, unknown-method and oversized requests get their coded errors "
        "and the upstream counter does not move.",
    ),
    # --- gateway replicas ---------------------------------------------------------------
    Requirement(
        "REPLICA-001",
        _M,
        "Any gateway replica serves any session and sheds nothing",
        "A session opened and tainted (PHI read) on one replica continues on another, where the "
        "external send stays denied, as in a new session and a stateless request there; another "
        "agent presenting the session id there gets 404; a DELETE there closes it everywhere.",
    ),
    # --- principal state ----------------------------------------------------------------
    Requirement(
        "STATE-001",
        _M,
        "No new session, connection or stateless request sheds a principal's state",
        "After a PHI read in one session, an external send in a new session on a new connection "
        "and in a stateless request is still denied (POLICY_DENY).",
    ),
    # --- agent identity ----------------------------------------------------------------
    Requirement(
        "IDENT-001",
        _M,
        "The enclave decides only for the principal the agent's token proves",
        "Playing the gateway, open a session and ask a decision naming a principal with another "
        "principal's valid token, and with no token: each is refused (IDENTITY_MISMATCH, "
        "TOKEN_MISSING), never decided.",
    ),
    Requirement(
        "IDENT-002",
        _M,
        "A missing or bad token gets 401 with a challenge, and nothing runs",
        "No token, a tampered signature, alg none and an opaque token each get 401 with an RFC 6750 "
        "challenge naming the route's RFC 9728 metadata (invalid_token for a bad one); the metadata "
        "names the route's resource; the upstream runs nothing; a valid token is served.",
    ),
    Requirement(
        "IDENT-003",
        _M,
        "No agent token reaches the upstream",
        "A request carrying an Authorization header sent straight to the guarded upstream is refused "
        "(AGENT_TOKEN_FORWARDED); the same request without it is served.",
    ),
    # --- MCP methods ----------------------------------------------------------------------
    Requirement(
        "METHOD-001",
        _M,
        "Resources and prompts are decided by the enclave like tools",
        "Through the gateway, resources/list and prompts/list show only catalogued entries; reading "
        "an uncatalogued resource is denied with an enclave-signed decision "
        "(RESOURCE_NOT_IN_CATALOG) and the upstream reads nothing; a catalogued resource and "
        "prompt are served exactly once each.",
    ),
    Requirement(
        "METHOD-002",
        _M,
        "Every gated method needs its own permit at the guard",
        "Straight to the guarded upstream, resources/read, prompts/get, completion/complete, "
        "logging/setLevel and subscriptions/listen without a permit are refused (PERMIT_MISSING), "
        "and a resources/read carrying a tool call's permit is refused (PERMIT_METHOD_MISMATCH); "
        "nothing runs.",
    ),
    Requirement(
        "METHOD-003",
        _M,
        "An answer reaches the upstream only for a question the enclave let through",
        "Through the gateway, a tools/call of an allowed tool carrying (2026-07-28) inputResponses "
        "for a question nobody asked is denied with an enclave-signed decision (INPUT_NOT_ASKED) "
        "and the upstream runs nothing; straight to the guarded upstream, the permit for the "
        "plain call does not admit the same call carrying answers (PERMIT_ARGS_MISMATCH).",
    ),
    # --- Trust Records -------------------------------------------------------------------
    Requirement(
        "TRACE-001",
        _M,
        "Closing a session yields a Trust Record that verifies",
        "agentrust_trace.verify_record accepts the record with the attested key pinned, "
        "and rejects it with another key pinned or after any field is edited.",
    ),
    Requirement(
        "TRACE-002",
        _M,
        "The Trust Record states the measured facts",
        "policy.bundle_hash is the measured hash, cnf.jwk is the attested key, "
        "runtime.platform matches the evidence (software-only when simulated).",
    ),
    Requirement(
        "TRACE-003",
        _M,
        "Non-ASCII tool names survive end to end",
        "A session calling a tool with a non-ASCII name yields a chain and a record that "
        "verify, naming the tool exactly.",
    ),
    # --- the enclave architecture --------------------------------------------------------
    Requirement(
        "POLICY-TEE-001",
        _M,
        "Cedar runs in the enclave",
        "The gateway holds no policy and no authorising key: with the enclave unreachable "
        "every call fails closed, and a decision not signed by an attested enclave key "
        "is refused (the guard rejects a permit from an unattested key).",
    ),
    Requirement(
        "POLICY-TEE-002",
        _M,
        "The bundle is measured",
        "The evidence's measured field equals the digest of the initdata naming the "
        "bundle_hash; a one-byte change to any policy changes the hash and the enclave "
        "refuses to serve it under the old initdata.",
    ),
    Requirement(
        "POLICY-TEE-003",
        _M,
        "Trust Records name the measured bundle for the enclave's life",
        "policy.bundle_hash in every record equals the hash measured at load and bound "
        "in the evidence, across sessions and re-attestation.",
    ),
    Requirement(
        "POLICY-TEE-004",
        _M,
        "enforce cannot be bypassed by the host",
        "Straight at the guarded upstream: no permit, a forged permit, a replayed one, "
        "one for other arguments, another upstream, an expired one, one signed by an "
        "unattested key — all rejected; the tool never runs.",
    ),
    Requirement(
        "POLICY-TEE-005",
        _M,
        "Audit integrity",
        "The exported chain verifies offline; deleting, reordering or editing any entry "
        "is detected; decision signatures verify back to a key bound in the evidence.",
    ),
    Requirement(
        "POLICY-TEE-006",
        _M,
        "The launch policy refuses injection",
        "Evaluate the attested initdata's launch policy with regorus: the pod it pins is admitted; "
        "added env (LD_PRELOAD, PYTHONPATH, PATH, CMCP_*), a host mount, another container, a "
        "capability, a sandbox-labelled image, CopyFile traversal or symlink escape, guest hooks, "
        "kernel modules and exec are refused.",
    ),
)

BY_ID: dict[str, Requirement] = {r.id: r for r in REQUIREMENTS}


def get(requirement_id: str) -> Requirement:
    """Look up an ID; ``KeyError`` names the unknown ID so a typo in a marker is loud."""
    try:
        return BY_ID[requirement_id]
    except KeyError:
        raise KeyError(f"unknown conformance ID {requirement_id!r}") from None


def active() -> tuple[Requirement, ...]:
    return tuple(r for r in REQUIREMENTS if not r.withdrawn)
