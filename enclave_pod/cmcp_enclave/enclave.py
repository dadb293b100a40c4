"""The enclave's trusted state machine: sessions, decisions, outcomes, audit chains and Trust Records.

Transport-free so tests and the in-process benchmark drive exactly what the gRPC server runs;
start-up checks are in :mod:`cmcp_enclave.startup`, per-session state in :mod:`cmcp_enclave.sessions`.
The enclave mints every session id (:meth:`Enclave.open_session`) and refuses any other, so an
id is never used twice. Audit entries are not kept: each leaves in the next answer
(:mod:`cmcp_enclave.outbox`); the enclave holds only chain tips and counters, per session and
for its ledger, one chain of every session open and close (``ledger:<kid>``), which a verifier
uses to find a session the store lacks (withheld) or holds twice (forked).
Problems with the *request* (malformed, unknown session, wrong digest) raise
:class:`RequestError` and never yield a decision; problems with the *call* (tool outside the
catalog, Cedar deny or error, wrong audience) yield a signed deny that is audited.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cmcp_core import initdata as initdata_mod
from cmcp_core import permit as permit_mod
from cmcp_core import session_id as session_ids
from cmcp_core.audit import GENESIS, decision_entry, entry_bytes, ledger_id, make_entry, reset_payload
from cmcp_core.binding import Binding, check_nonce
from cmcp_core.bundle import Bundle
from cmcp_core.crypto import public_bytes, public_jwk, thumbprint
from cmcp_core.decision import DECISION_VERSION, sign_decision
from cmcp_core.errors import CmcpError, Code
from cmcp_core.identity import Identity, IdentityConfigError, IdentityPolicy
from cmcp_core.mcp_target import INPUT_METHODS, LIST_METHODS, STATEFUL_METHODS, TOOL, TOOLS_CALL
from cmcp_core.trust_record import build_record, record_report_data
from cmcp_core.validation import state_window_seconds
from cmcp_core.verify.peer import appraise_peer
from cmcp_enclave import handover, judging
from cmcp_enclave.engine import CedarEngine, SessionView, StateFacts
from cmcp_enclave.gpu import gpu_evidence, gpus_of
from cmcp_enclave.judging import MAX_ID_LEN, Call, RequestError, Verdict, check_id
from cmcp_enclave.outbox import AuditOutbox, Delivery
from cmcp_enclave.principals import PrincipalState, PrincipalTable
from cmcp_enclave.sessions import ClosedSession, EnclaveLimits, PolicySession
from cmcp_enclave.tee import Report, TeeProvider

MAX_PENDING = 32  # allowed calls awaiting Complete, per session
# Reasons a Cedar-level deny may be softened in advisory/silent mode; everything else
# (tool outside the catalog, wrong audience, unusable arguments) is refused in every mode.
ADVISORY_SOFTENED = frozenset({Code.POLICY_DENY, Code.POLICY_EVAL_ERROR})


P = ParamSpec("P")
R = TypeVar("R")


def _settled(method: Callable[Concatenate[Enclave, P], R]) -> Callable[Concatenate[Enclave, P], R]:
    """Record queued outcomes first (:meth:`Enclave.complete_later`): no entry point may read or
    extend a chain without them."""
    @functools.wraps(method)
    def entry(self: Enclave, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._later:
            self.settle()
        return method(self, *args, **kwargs)
    return entry


@dataclass(frozen=True, slots=True)
class UpstreamOutcome:
    """What the upstream returned for an allowed call, as the gateway reports it (Complete)."""

    session_id: str
    call_id: str
    response_digest: str
    response_bytes: int
    error_code: str
    is_error: bool


@dataclass(frozen=True)
class DecideResult:
    decision_json: bytes
    signature: bytes
    permit: str
    document: dict[str, Any]


class Enclave:
    """One measured bundle, one key, many sessions."""

    def __init__(self, *, bundle: Bundle, initdata_bytes: bytes, provider: TeeProvider,
                 startup_report: Report, limits: EnclaveLimits | None = None,
                 operator_keys: list[Ed25519PublicKey] | None = None,
                 clock: Callable[[], float] = time.time,
                 on_audit: Callable[[dict[str, Any]], None] | None = None):
        self.bundle = bundle
        self.initdata_bytes = initdata_bytes
        self.initdata = initdata_mod.parse(initdata_bytes)
        self.entry = self.initdata.cmcp
        self.provider = provider
        self.gpus = gpus_of(provider)  # asked again at each close, for the record's own nonce
        self.startup_report = startup_report
        self.limits = limits or EnclaveLimits()
        self.operator_keys = operator_keys or []
        self.clock = clock
        self.on_audit = on_audit
        self.engine = CedarEngine(bundle)
        try:
            self.identity = IdentityPolicy.from_manifest(bundle.manifest)
        except IdentityConfigError as exc:
            raise CmcpError(Code.BUNDLE_INVALID, f"the manifest's identity section: {exc}") from exc
        self.bundle_hash = bundle.bundle_hash
        self.catalog_hash = bundle.catalog_hash
        self.mode = bundle.enforcement_mode
        self._key = Ed25519PrivateKey.generate()  # generated last, after every check passed
        self.public_key = self._key.public_key()
        self.kid = thumbprint(self.public_key)
        self.public_jwk = public_jwk(self.public_key)
        self.sessions: dict[str, PolicySession] = {}
        self.principals = PrincipalTable(state_window_seconds(bundle), self.limits.max_principals)
        self.closed: OrderedDict[str, ClosedSession] = OrderedDict()
        self.audit_entries_total = 0
        self.outbox = AuditOutbox(self.limits.outbox_bytes, redeliver_seconds=self.limits.redeliver_seconds)
        self.ledger_id = ledger_id(self.kid)
        self.ledger_seq = 0  # entries in the ledger chain (session opens and closes)
        self.ledger_tip = GENESIS
        self._later: list[UpstreamOutcome] = []  # outcomes to record before anything else (settle)
        self._trusted: dict[str, Ed25519PublicKey] = {self.kid: self.public_key}  # trail signers
        self.on_refused_outcome: Callable[[Code], None] | None = None
        self.stopping = False  # set by stop_accepting(): no new session from then on
        self.on_outbox_emptied: Callable[[], None] | None = None  # a stop waits for it (shutdown.py)

    # ---- attestation ---------------------------------------------------------------------

    def binding(self, nonce: bytes) -> Binding:
        return Binding(public_bytes(self.public_key), self.bundle_hash, self.catalog_hash,
                       self.mode, nonce)

    def attest(self, nonce: bytes) -> tuple[Report, bytes]:
        """Fresh evidence whose REPORT_DATA binds key, bundle, catalog, mode and ``nonce``."""
        try:
            check_nonce(nonce)
        except ValueError as exc:
            raise RequestError(Code.VERIFY_INPUT_INVALID, str(exc)) from exc
        report_data = self.binding(nonce).report_data()
        return self.provider.report(report_data), report_data

    # ---- identity ------------------------------------------------------------------------

    def authenticate(self, access_token: str) -> Identity:
        """What ``access_token`` proves, verified against the issuers the measured bundle trusts."""
        if self.identity is None:
            raise RequestError(Code.TOKEN_ISSUER_UNTRUSTED,
                               "this route's bundle trusts no token issuer (no identity section)")
        try:
            return self.identity.verify(access_token, self.clock())
        except CmcpError as exc:
            raise RequestError(exc.code, exc.detail) from exc

    def identify(self, principal: str, access_token: str) -> Identity | None:
        """The identity behind ``principal``: its token must prove exactly that principal, so a
        gateway cannot name another. ``None`` in development mode (the gateway's word is taken)."""
        if self.identity is None:
            return None
        identity = self.authenticate(access_token)
        if identity.principal != principal:
            raise RequestError(Code.IDENTITY_MISMATCH,
                               f"the token proves {identity.principal!r}, not {principal!r}")
        return identity

    # ---- sessions ------------------------------------------------------------------------

    @_settled
    def open_session(self, principal: str, trail: Any = None, access_token: str = "") -> str:
        """Open a session for ``principal`` under a fresh id this enclave mints (never reused).

        A principal the enclave does not hold is refused (``PRINCIPAL_NOT_HELD``) unless ``trail``
        (a ``PrincipalTrail`` from the audit store) is given: it is taken over from that
        (:mod:`cmcp_enclave.handover`), never started clean on its own."""
        check_id("principal", principal)
        if self.stopping:
            raise RequestError(Code.TEE_UNAVAILABLE, "this enclave is stopping; open the session on another")
        self.identify(principal, access_token)
        if self.outbox.full:
            raise RequestError(Code.AUDIT_OUTBOX_FULL,
                               "audit entries wait to leave the enclave; drain them first")
        if len(self.sessions) >= self.limits.max_sessions:
            self.expire_idle()
            if len(self.sessions) >= self.limits.max_sessions:
                raise RequestError(Code.SESSION_LIMIT,
                                   f"enclave holds its maximum of {self.limits.max_sessions} sessions")
        if principal in self.principals:
            self._principal(principal)
        elif trail is None:
            raise RequestError(Code.PRINCIPAL_NOT_HELD, f"this enclave holds no state for {principal!r}: "
                               "open its first session with its trail from the audit store")
        else:
            self._take_over(principal, trail)  # PRINCIPAL_STATE_FULL before anything is recorded
        session_id = session_ids.mint(self.kid)
        while session_id in self.sessions or session_id in self.closed:  # 2^-128, but never twice
            session_id = session_ids.mint(self.kid)
        session = PolicySession(session_id=session_id, principal=principal, last_used=self.clock())
        self.sessions[session_id] = session
        self._ledger("open", {"session_id": session_id, "principal": principal})
        self._append(session, "open", {"principal": principal})
        return session_id

    def _take_over(self, principal: str, trail: Any) -> None:
        """Start ``principal`` from its verified trail, replayed at the times its calls were made,
        and say in the ledger what it started from (the auditor's check on a withheld trail)."""
        window_ms = int(self.principals.window * 1000)
        try:
            takeover = handover.read_trail(trail, principal=principal, bundle_hash=self.bundle_hash,
                                           audience=self.entry.audience, keys=self._trusted,
                                           peer_key=self._appraise_peer,
                                           window_start_ms=int(self.clock() * 1000) - window_ms)
        except CmcpError as exc:
            raise RequestError(exc.code, exc.detail) from exc
        state, window = self._principal(principal), self.principals.window
        for call in takeover.calls:
            with contextlib.suppress(CmcpError):  # an entry this bundle no longer has taints nothing
                kind, name = self.engine.resolve(call.method, call.tool, {})
                _, rank = self.engine.tool_rank(name, kind)
                tags = self.engine.tool_tags(name, kind)
                if kind == TOOL:
                    state.record(name, rank, tags, call.at, window)
                else:
                    state.taint(rank, tags, call.at, window)
        self._ledger("adopt", {"principal": principal, "bundle_hash": self.bundle_hash,
                               "audience": self.entry.audience, "since_ms": takeover.since_ms,
                               "window_ms": window_ms, "entries": len(takeover.calls),
                               "newest": takeover.newest})

    def _appraise_peer(self, peer: Any) -> tuple[str, Ed25519PublicKey]:
        """Another enclave's key, if its evidence shows this very guest (cmcp_core.verify.peer)."""
        key = appraise_peer(self.startup_report.platform, self.startup_report.evidence,
                            self.initdata_bytes, peer.attestation, peer.nonce)
        return thumbprint(key), key

    def _ledger(self, kind: str, data: dict[str, Any]) -> None:
        """One entry in the enclave's own chain of session opens and closes."""
        entry = make_entry(self._key, session_id=self.ledger_id, seq=self.ledger_seq, prev=self.ledger_tip,
                           kind=kind, data=data, kid=self.kid, ts_ms=int(self.clock() * 1000))
        self.ledger_seq += 1
        self.ledger_tip = entry["hash"]
        self._emit(entry, entry_bytes(entry))

    def _session(self, session_id: str, principal: str) -> PolicySession:
        """A live session this enclave minted: ``SESSION_CLOSED`` while a closed one is
        remembered, ``SESSION_UNKNOWN`` for any other id (never created on the fly)."""
        session = self.sessions.get(session_id)
        if session is None:
            if session_id in self.closed:
                raise RequestError(Code.SESSION_CLOSED, f"session {session_id!r} is closed")
            raise RequestError(Code.SESSION_UNKNOWN, f"no session {session_id!r} in this enclave")
        if principal and session.principal != principal:
            raise RequestError(Code.SESSION_PRINCIPAL_MISMATCH,
                               f"session {session_id!r} belongs to another principal")
        session.last_used = self.clock()
        return session

    def _view(self, session: PolicySession, principal: PrincipalState,
              identity: Identity | None = None) -> SessionView:
        """What Cedar sees: the principal's windowed state (no new session sheds it), and this
        session's own. The principal's includes every call of this session still in the window."""
        levels, now = self.engine.levels, self.clock()
        held = principal.view(now, self.principals.window)
        return SessionView(
            session_id=session.session_id,
            principal=StateFacts(max_sensitivity=levels[held.max_rank], max_rank=held.max_rank,
                                 tags=held.tags, call_count=held.call_count,
                                 tools_called=held.tools_called, previous_tool=held.previous_tool),
            session=StateFacts(max_sensitivity=levels[session.max_rank], max_rank=session.max_rank,
                               tags=session.tags, call_count=session.call_count,
                               tools_called=session.tools_called, previous_tool=session.previous_tool),
            identity=identity,
        )

    def _principal(self, principal: str) -> PrincipalState:
        try:
            return self.principals.get(principal, self.clock())
        except CmcpError as exc:
            raise RequestError(exc.code, exc.detail) from exc

    def _append(self, session: PolicySession, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        entry = make_entry(self._key, session_id=session.session_id, seq=session.seq,
                           prev=session.tip, kind=kind, data=data, kid=self.kid,
                           ts_ms=int(self.clock() * 1000))
        self._store(session, entry, entry_bytes(entry))
        return entry

    def _store(self, session: PolicySession, entry: dict[str, Any], raw: bytes) -> None:
        session.seq += 1
        session.tip = entry["hash"]
        self._emit(entry, raw)

    def _emit(self, entry: dict[str, Any], raw: bytes) -> None:
        """The entry leaves with the next answer; the enclave keeps only the tip."""
        self.outbox.put(raw)
        self.audit_entries_total += 1
        if self.on_audit is not None:
            self.on_audit(entry)

    def audit_mark(self) -> int:
        """A mark for :meth:`take_audit`: entries queued after it are the current call's own."""
        return self.outbox.appended

    def take_audit(self, since: int | None = None) -> Delivery:
        """The entries the next answer carries, as one delivery (see :mod:`cmcp_enclave.outbox`)."""
        taken = self.outbox.take(since)
        if self.on_outbox_emptied is not None and not len(self.outbox):
            self.on_outbox_emptied()
        return taken

    def acknowledge_audit(self, deliveries: Collection[int]) -> None:
        """The gateway stored these deliveries; they will not be carried again."""
        if deliveries:
            self.outbox.acknowledge(deliveries)

    # ---- decisions -----------------------------------------------------------------------
    # A decision is admit (stateless checks) -> prepare (state read) -> judge (Cedar) -> commit
    # (state change, signature, chain). admit and judge touch no enclave state, so a scheduler may
    # run them off the event loop (cmcp_enclave.scheduler); prepare and commit must run where every
    # other entry point runs, and no other decision of the same principal may commit in between.

    @_settled
    def decide(self, *, session_id: str, call_id: str, principal: str, method: str, tool: str,
               arguments_json: bytes, arguments_digest: str, audience: str,
               access_token: str = "", input_json: bytes = b"") -> DecideResult:
        call, arguments = judging.admit(
            self.engine, session_id=session_id, call_id=call_id, principal=principal, method=method,
            tool=tool, arguments_json=arguments_json, arguments_digest=arguments_digest,
            audience=audience, input_json=input_json)
        view = self.prepare(session_id=session_id, principal=principal, call_id=call_id,
                            access_token=access_token)
        return self.commit(call, judging.judge(self.engine, self.entry.audience, call, arguments, view))

    @_settled
    def prepare(self, *, session_id: str, principal: str, call_id: str,
                access_token: str = "") -> SessionView:
        """The state Cedar sees for this call, and who the token proves is calling."""
        identity = self.identify(principal, access_token)
        held = self._principal(principal)
        session = self._session(session_id, principal)
        if session.pending and call_id in session.pending:
            raise RequestError(Code.MCP_INVALID_REQUEST, f"call_id {call_id!r} already decided")
        return self._view(session, held, identity)

    @_settled
    def commit(self, call: Call, verdict: Verdict) -> DecideResult:
        """Sign the decision, chain it, and on allow record the call and mint its permit."""
        held = self._principal(call.principal)
        session = self._session(call.session_id, call.principal)
        if session.pending and call.call_id in session.pending:
            raise RequestError(Code.MCP_INVALID_REQUEST, f"call_id {call.call_id!r} already decided")
        reason = verdict.reason
        if reason is None and call.answered and not _was_asked(session, call):
            reason = Code.INPUT_NOT_ASKED  # never softened: the answer would reach the upstream
        decision = "allow" if reason is None else "deny"
        advisory = reason in ADVISORY_SOFTENED and self.mode in ("advisory", "silent")
        effective = "allow" if decision == "allow" or advisory else "deny"
        document = {
            "v": DECISION_VERSION, "decision": decision, "effective": effective,
            "advisory_deny": advisory, "mode": self.mode,
            "reason_code": reason.value if reason else None,
            "policy_ids": list(verdict.policy_ids), "errors": list(verdict.errors),
            "session_id": call.session_id, "call_id": call.call_id, "principal": call.principal,
            "method": call.method, "tool": call.tool, "args_digest": call.arguments_digest,
            "audience": call.audience, "bundle_hash": self.bundle_hash, "seq": session.seq,
            "prev": session.tip, "kid": self.kid, "ts": int(self.clock() * 1000),
        }
        decision_json, signature = sign_decision(self._key, document)
        entry, raw = decision_entry(decision_json, signature, document)
        self._store(session, entry, raw)
        token = ""
        if effective == "allow" and call.method in INPUT_METHODS:
            _ask(session, call)  # the agent may now answer it; nothing goes upstream on this decision
        elif effective == "allow":
            if call.answered and session.asked:
                for key in call.answered:
                    session.asked.pop((call.method, call.tool, key), None)
            if call.method == TOOLS_CALL:
                self._record_call(session, held, call.tool)
            elif call.method in STATEFUL_METHODS and verdict.entry is not None:
                self._record_taint(session, held, verdict.entry)
            token = permit_mod.mint(self._key, session_id=call.session_id, call_id=call.call_id,
                                    tool=call.tool, args_digest=call.arguments_digest,
                                    audience=call.audience, bundle_hash=self.bundle_hash,
                                    ttl_seconds=self.limits.permit_ttl, now=self.clock(),
                                    kid=self.kid, method=call.method)
            if session.pending is None:
                session.pending = {}
            session.pending[call.call_id] = call.tool
            if len(session.pending) > MAX_PENDING:  # bounded: the oldest outcome is never reported
                del session.pending[next(iter(session.pending))]
        return DecideResult(decision_json, signature, token, document)

    def _record_taint(self, session: PolicySession, principal: PrincipalState,
                      entry: tuple[str, str]) -> None:
        """A resource read or a prompt let through taints like a tool call (from the *measured*
        catalog entry it resolved to), without counting as a call."""
        kind, name = entry
        _, rank = self.engine.tool_rank(name, kind)
        tags = self.engine.tool_tags(name, kind)
        principal.taint(rank, tags, self.clock(), self.principals.window)
        _taint_session(session, rank, tags)

    def _record_call(self, session: PolicySession, principal: PrincipalState, tool: str) -> None:
        """Taint from the *measured* catalog only, applied when a call is let through: monotone for
        the session, held for the bundle's window for the principal."""
        _, rank = self.engine.tool_rank(tool)
        tags = self.engine.tool_tags(tool)
        principal.record(tool, rank, tags, self.clock(), self.principals.window)
        _taint_session(session, rank, tags)
        if tool not in session.tools_called:
            session.tools_called = session.tools_called | {tool}
        session.previous_tool = tool
        session.call_count += 1

    @_settled
    def complete(self, *, session_id: str, call_id: str, response_digest: str, response_bytes: int,
                 error_code: str, is_error: bool) -> str:
        return self._complete(UpstreamOutcome(session_id, call_id, response_digest, response_bytes,
                                              error_code, is_error))

    def complete_later(self, outcomes: list[UpstreamOutcome]) -> None:
        """Queue carried outcomes; the next entry point records them before it runs.

        Every entry point settles the queue first, so nothing that reads or extends a
        chain ever sees it without them; a refused one goes to ``on_refused_outcome``.
        """
        self._later.extend(outcomes)

    def settle(self) -> None:
        """Record the queued outcomes, in order."""
        while self._later:
            queued, self._later = self._later, []
            for outcome in queued:
                try:
                    self._complete(outcome)
                except RequestError as exc:
                    if self.on_refused_outcome is not None:
                        self.on_refused_outcome(exc.code)

    def _complete(self, outcome: UpstreamOutcome) -> str:
        session = self._session(outcome.session_id, "")
        call_id = outcome.call_id
        tool = session.pending.pop(call_id, None) if session.pending else None
        if tool is None:
            raise RequestError(Code.MCP_INVALID_REQUEST, f"call_id {call_id!r} has no allowed decision")
        if (len(outcome.response_digest) > MAX_ID_LEN or len(outcome.error_code) > MAX_ID_LEN
                or outcome.response_bytes < 0):
            raise RequestError(Code.MCP_INVALID_REQUEST, "outcome fields out of range")
        entry = self._append(session, "complete", {
            "call_id": call_id, "tool": tool, "response_digest": outcome.response_digest,
            "response_bytes": outcome.response_bytes, "error_code": outcome.error_code or None,
            "is_error": outcome.is_error})
        return str(entry["hash"])

    @_settled
    def list_tools(self, *, session_id: str, principal: str, access_token: str = "",
                   method: str = "tools/list") -> list[str]:
        """The catalog entries a list ``method`` may show this principal (tools, resources and
        templates, or prompts), each decided by Cedar; an entry outside the catalog never shows."""
        check_id("session_id", session_id)
        check_id("principal", principal)
        if method not in LIST_METHODS:
            raise RequestError(Code.MCP_INVALID_REQUEST, f"{method!r} is not a list method")
        identity = self.identify(principal, access_token)
        session = self._session(session_id, principal)
        kind = LIST_METHODS[method][0]
        names = sorted(name for k, name in self.engine.entries if k == kind)
        if self.engine.model == "phase1":
            return names if method == "tools/list" else []  # the origin filtered by catalog only
        view = self._view(session, self._principal(principal), identity)
        results = self.engine.evaluate_many(method, principal, names, view, kind)
        return [t for t, r in zip(names, results, strict=True) if r.allowed]

    @_settled
    def reset(self, *, session_id: str, actor: str, reason: str, signature: bytes) -> str:
        """Operator reset of taint state, the session's and its principal's (every session of that
        principal sees it): signed by a configured operator key, itself audited."""
        session = self._session(session_id, "")
        payload = reset_payload(session_id=session_id, actor=actor, reason=reason, seq=session.seq)
        if not any(_verifies(k, signature, payload) for k in self.operator_keys):
            raise RequestError(Code.RESET_UNAUTHORIZED, "reset is not signed by an operator key")
        held = self._principal(session.principal).view(self.clock(), self.principals.window)
        entry = self._append(session, "reset", {
            "actor": actor, "reason": reason, "cleared": {
                "max_sensitivity": self.engine.levels[session.max_rank], "tags": sorted(session.tags),
                "call_count": session.call_count},
            "principal_cleared": {
                "principal": session.principal, "max_sensitivity": self.engine.levels[held.max_rank],
                "tags": sorted(held.tags), "call_count": held.call_count}})
        session.max_rank, session.call_count, session.previous_tool = 0, 0, ""
        session.tags = session.tools_called = frozenset()
        self.principals.reset(session.principal)
        return str(entry["hash"])

    @_settled
    def close(self, session_id: str, reason: str = "closed") -> ClosedSession:
        """End the session (its close entry, the ledger's), then issue its Trust Record.

        Beside GPUs the record is signed only with every GPU's evidence for its own REPORT_DATA;
        when a GPU cannot answer, ``RequestError`` with the provider's code (as Attest fails), the
        session stays closed (no call is decided in it again) and its record pending: a later
        ``CloseSession`` asks the GPUs again for the same record. Never a record without them."""
        check_id("session_id", session_id)
        done = self.closed.get(session_id)
        if done is None:
            session = self._session(session_id, "")
            self._append(session, "close", {"reason": reason[:MAX_ID_LEN], "call_count": session.call_count})
            self._ledger("close", {"session_id": session_id, "tip": session.tip, "entries": session.seq})
            done = ClosedSession(tip=session.tip, entries=session.seq, call_count=session.call_count,
                                 data_class=self.engine.levels[session.max_rank],
                                 ledger=(self.ledger_id, self.ledger_seq, self.ledger_tip))
            del self.sessions[session_id]
            self.closed[session_id] = done
            while len(self.closed) > self.limits.closed_kept:
                self.closed.popitem(last=False)
        if done.record is None:
            self._issue_record(session_id, done)
        return done

    def _issue_record(self, session_id: str, done: ClosedSession) -> None:
        report_data = record_report_data(public_bytes(self.public_key), self.bundle_hash,
                                         self.catalog_hash, self.mode, done.tip)
        evidence: tuple[bytes, ...] = ()
        if self.gpus is not None:
            try:
                evidence = gpu_evidence(self.gpus, report_data)
            except CmcpError as exc:
                raise RequestError(exc.code, f"no Trust Record without the GPU evidence for it: "
                                   f"{exc.detail}") from exc
        done.record = build_record(
            self._key, platform=self.startup_report.platform, initdata_bytes=self.initdata_bytes,
            initdata_algorithm=self.initdata.algorithm, bundle_hash=self.bundle_hash,
            catalog_hash=self.catalog_hash, enforcement_mode=self.mode,
            bundle_version=str(self.bundle.manifest.get("version", "")) or None,
            chain_tip=done.tip, call_count=done.call_count, route=self.entry.route,
            session_id=session_id, data_class=done.data_class, ledger=done.ledger,
            iat=int(self.clock()), gpu_evidence=evidence)
        done.gpu_evidence = evidence

    def stop_accepting(self) -> None:
        """Open no new session (shutdown): the gateway opens its next one on another enclave."""
        self.stopping = True

    @_settled
    def close_all(self, reason: str = "shutdown") -> int:
        """Close every open session (shutdown), each with its close entry and Trust Record; a later
        ``CloseSession`` still returns the record while the process lives. Unlike idle closes this
        does not wait for a full outbox: the process is ending, memory is not the concern."""
        open_ids = list(self.sessions)
        for session_id in open_ids:
            with contextlib.suppress(RequestError):  # closed; its record waits for its GPUs
                self.close(session_id, reason)
        return len(open_ids)

    @_settled
    def expire_idle(self) -> list[str]:
        """Close sessions idle past the timeout (their records stay retrievable)."""
        cutoff = self.clock() - self.limits.idle_timeout
        idle = [sid for sid, s in self.sessions.items() if s.last_used < cutoff]
        closed = []
        for sid in idle:
            if self.outbox.full:  # the rest wait until the entries so far have left
                break
            with contextlib.suppress(RequestError):  # closed; its record waits for its GPUs
                self.close(sid, "idle-timeout")
            closed.append(sid)
        return closed


def _verifies(key: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _taint_session(session: PolicySession, rank: int, tags: frozenset[str]) -> None:
    """Raise the session's sensitivity and add its tags (monotone within the session)."""
    session.max_rank = max(session.max_rank, rank)
    if not tags <= session.tags:
        session.tags = session.tags | tags


def _ask(session: PolicySession, call: judging.Call) -> None:
    """Remember that ``call``'s input request may reach the agent (bounded like pending calls)."""
    assert call.input is not None
    if session.asked is None:
        session.asked = {}
    session.asked[(call.asking, call.tool, str(call.input["key"]))] = None
    if len(session.asked) > MAX_PENDING:
        del session.asked[next(iter(session.asked))]


def _was_asked(session: PolicySession, call: judging.Call) -> bool:
    """Whether every input request a repeated request answers was let through in this session."""
    asked = session.asked or {}
    return all((call.method, call.tool, key) in asked for key in call.answered)
