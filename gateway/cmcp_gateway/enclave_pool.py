"""A route's enclave endpoints: membership, attestation by the gateway itself, and the calls.

Endpoints come and go with :meth:`EnclavePool.set_endpoints` (or, for an ``McpRoute``, its
status: :meth:`~EnclavePool.discover`); each is attested before use and re-attested on
:meth:`~EnclavePool.refresh` (with a fresh nonce) or as soon as it stops answering. A route
with no attested enclave, or a session whose enclave is not attested here, first catches up
(:meth:`~EnclavePool.catch_up`), so a restarted pod serves as soon as it is attested, not a
refresh period later. Sessions are pinned by :mod:`cmcp_gateway.pinning`; outcomes ride along as
:mod:`cmcp_gateway.outcomes` describes. ``close_session`` first waits for in-flight outcome
flushes, then carries the rest (or, to an enclave not yet known to carry, sends them first),
so the session's Trust Record covers every outcome reported before it; ``close`` flushes all.

Audit: every answer's ``audit_entries`` are written to the audit store (:mod:`cmcp_gateway.audit_writer`)
before the answer is used: a session id before it is handed out, a permit before it is used. Carried
outcomes are recorded before the decision that carries them, so their entries come with it; what
the enclave records on its own (idle closes) leaves with its next answer, and ``refresh`` drains
every enclave (``DrainAudit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import decide_frames, gateway_identity
from cmcp_core import session_id as session_ids
from cmcp_core.attestation import AttestedEnclave, AttestPolicy, attest
from cmcp_core.decision import verify_decision
from cmcp_core.errors import CmcpError, Code
from cmcp_core.mcp_target import INPUT_METHODS
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_core.route_status import RouteReader, RouteStatus
from cmcp_core.verify.gpu_requirement import GpuRequirement
from cmcp_gateway import enclave_rpc, pinning
from cmcp_gateway.audit_writer import AuditWriter
from cmcp_gateway.decide_hop import DecisionHop
from cmcp_gateway.decide_stream import DecisionStream
from cmcp_gateway.outcomes import OutcomeQueue, outcome_lost
from cmcp_gateway.pinning import Pin

log = logging.getLogger("cmcp.gateway")
MAX_DRAINS = 64  # DrainAudit answers one drain takes at most (the rest wait for the next)
CATCH_UP_SECONDS = 1.0  # a route catches up at most this often, however many agents ask


@dataclass
class Endpoint:
    address: str
    channel: Any
    stub: enclave_pb2_grpc.EnclaveStub
    decisions: DecisionStream = field(init=False, repr=False)
    hop: DecisionHop | None = field(default=None, repr=False)  # the lean hop, when Attest offers it
    outcomes: OutcomeQueue = field(init=False, repr=False)
    attested: AttestedEnclave | None = None
    error: CmcpError | None = None
    reattest: asyncio.Task[None] | None = field(default=None, repr=False)
    # the enclave's audit deliveries this gateway stored and has not yet acknowledged: they ride
    # on the next request to it (lost with that request, the enclave just carries them again)
    acks: list[int] = field(default_factory=list, repr=False)

    def stored(self, delivery: int) -> None:
        if delivery:
            self.acks.append(delivery)

    def take_acks(self) -> list[int]:
        acks, self.acks = self.acks, []
        return acks


@dataclass(frozen=True)
class Decision:
    document: dict[str, Any]
    decision_json: bytes
    signature: bytes
    permit: str


class EnclavePool:
    def __init__(self, route_name: str, policy: AttestPolicy, decide_timeout: float,
                 audit: AuditWriter, *, identity: Ed25519PrivateKey | None = None,
                 source: RouteReader | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.route_name = route_name
        self.policy = policy
        self.decide_timeout = decide_timeout
        self.audit = audit
        self.identity = identity  # signs every call to an attested enclave (cmcp_core.gateway_identity)
        self.source = source  # the McpRoute to follow; None: fixed endpoints (set_endpoints)
        self.clock = clock
        self.endpoints: dict[str, Endpoint] = {}
        self._caught_up_at = float("-inf")
        self._catching_up: asyncio.Task[None] | None = None

    def _attested_kid(self, address: str) -> str | None:
        endpoint = self.endpoints.get(address)
        return endpoint.attested.kid if endpoint is not None and endpoint.attested is not None else None

    # --- membership and attestation -------------------------------------------------------
    async def set_endpoints(self, addresses: Iterable[str]) -> None:
        """Make the endpoint set exactly ``addresses``; new ones are attested before use."""
        wanted = list(dict.fromkeys(addresses))
        for address in list(self.endpoints):
            if address not in wanted:
                await self._drop(address)
        fresh = [a for a in wanted if a not in self.endpoints]
        for address in fresh:
            proofs = (gateway_identity.proving(self.identity, functools.partial(self._attested_kid, address))
                      if self.identity is not None else None)
            channel = enclave_rpc.open_channel(address, proofs)
            endpoint = Endpoint(address, channel, enclave_pb2_grpc.EnclaveStub(channel))
            endpoint.decisions = DecisionStream(
                endpoint.stub, functools.partial(self._suspect, endpoint), self.decide_timeout
            )
            endpoint.outcomes = OutcomeQueue(
                functools.partial(self._send_alone, endpoint), self.route_name, address
            )
            self.endpoints[address] = endpoint
        await asyncio.gather(*(self._attest(self.endpoints[a]) for a in fresh))

    async def follow(self, status: RouteStatus) -> None:
        """Track an ``McpRoute``: its attested pods, pinned to the initdata of its target and, mid
        rollout, previous revision. Every endpoint is re-appraised against the new pins, so a pod
        of a revision the route left stops serving at once; likewise for the route's GPU
        requirement (``status.gpu``): each endpoint must then send good GPU evidence to this gateway
        too, not only to the operator."""
        expected = replace(self.policy.expected, initdata_digests=status.pinned_initdata())
        endpoints = status.attested_endpoints()
        try:
            gpu = GpuRequirement.from_spec(status.gpu)
        except ValueError as exc:  # fail closed: no endpoint of a route whose GPU requirement we cannot read
            log.warning("route GPU requirement unreadable",
                        extra={"route": self.route_name, "detail": str(exc)})
            gpu, endpoints = self.policy.gpu, []
        changed = expected != self.policy.expected or gpu != self.policy.gpu
        self.policy = replace(self.policy, expected=expected, gpu=gpu)
        await self.set_endpoints(endpoints)
        if changed:
            await self.refresh()

    async def discover(self) -> None:
        """Follow the route's status once (a pool without a source keeps its fixed endpoints)."""
        if self.source is not None:
            await self.follow(await self.source())

    async def catch_up(self) -> None:
        """Re-read the route's status and re-attest every endpoint not attested now, at once
        rather than at the next refresh: an enclave that restarted (a new pod, a new key) or
        whose attestation failed once serves as soon as it attests again.

        At most one round per ``CATCH_UP_SECONDS`` whatever the number of callers (concurrent
        ones share the round in flight), so agents flooding a closed route cannot turn the
        gateway into an attestation or API-server amplifier. A failed round leaves the pool as
        it was; the caller then fails closed with its own code."""
        if self._catching_up is None or self._catching_up.done():
            if self.clock() - self._caught_up_at < CATCH_UP_SECONDS:
                return
            self._caught_up_at = self.clock()
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up_round())
        await asyncio.shield(self._catching_up)  # a caller that gives up does not stop the round

    async def _catch_up_round(self) -> None:
        stale = [address for address, e in self.endpoints.items() if e.attested is None]
        try:
            await self.discover()
            again = [self.endpoints[a] for a in stale if a in self.endpoints]
            await asyncio.gather(*(self._attest(e) for e in again if e.attested is None))
        except Exception:  # the caller fails closed; this says why
            log.warning("catching up failed", exc_info=True, extra={"route": self.route_name})

    async def _drop(self, address: str) -> None:
        endpoint = self.endpoints.pop(address)
        if endpoint.reattest is not None:
            endpoint.reattest.cancel()
        await endpoint.outcomes.abandon()
        await endpoint.decisions.close()
        if endpoint.hop is not None:
            await endpoint.hop.close()
        await endpoint.channel.close()

    async def _attest(self, endpoint: Endpoint) -> None:
        try:
            attested = await attest(endpoint.stub, endpoint.address, self.policy)
            await self.audit.keep_attestation(attested.kid, attested.nonce, attested.response)
            await self._offer_hop(endpoint, enclave_pb2.AttestResponse.FromString(attested.response))
            endpoint.attested, endpoint.error = attested, None
        except CmcpError as exc:
            endpoint.attested, endpoint.error = None, exc
            log.warning(
                "enclave attestation failed",
                extra={
                    "route": self.route_name,
                    "endpoint": endpoint.address,
                    "code": str(exc.code),
                    "detail": exc.detail,
                },
            )

    async def _offer_hop(self, endpoint: Endpoint, response: Any) -> None:
        """Decide over the lean hop (:mod:`cmcp_gateway.decide_hop`) when the attested enclave
        offers a version this gateway speaks; otherwise over the gRPC stream."""
        port = response.decide_hop_port if response.decide_hop_version == decide_frames.VERSION else 0
        old = endpoint.hop
        if old is not None and old.port == port:
            return
        endpoint.hop = None
        if old is not None:
            await old.close()
        if port:
            endpoint.hop = DecisionHop(
                endpoint.address.rsplit(":", 1)[0].strip("[]"), port, self.identity,
                functools.partial(self._attested_kid, endpoint.address),
                functools.partial(self._suspect, endpoint), self.decide_timeout)

    async def refresh(self) -> None:
        """Re-attest every endpoint with a fresh nonce, and take the audit entries no answer
        carried (idle closes)."""
        await asyncio.gather(*(self._attest(e) for e in list(self.endpoints.values())))
        await asyncio.gather(*(self._drain(e) for e in self.attested()), return_exceptions=True)
        await self.audit.flush()

    def _suspect(self, endpoint: Endpoint) -> None:
        """The enclave stopped answering: distrust it now, re-attest in the background."""
        endpoint.attested = None
        endpoint.error = CmcpError(Code.TEE_UNAVAILABLE, "enclave stopped answering")
        if endpoint.reattest is None or endpoint.reattest.done():
            endpoint.reattest = asyncio.get_running_loop().create_task(self._attest(endpoint))

    def attested(self) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.attested is not None]

    # --- session pinning ------------------------------------------------------------------
    async def pick(self, principal: str) -> Pin:
        """The principal's enclave (:func:`pinning.pick`), after catching up if none is attested;
        then ``TEE_UNAVAILABLE``, naming the codes the others were refused with
        (``REFERENCE_VALUE_MISMATCH``, ``INITDATA_UNEXPECTED``, ...) but not their addresses: the
        agent learns why the route is closed, not the cluster's layout."""
        if not self.attested():
            await self.catch_up()
        candidates = self._candidates()
        if not candidates:
            refusals = sorted({str(e.error.code) for e in self.endpoints.values() if e.error is not None})
            why = f" (refused: {', '.join(refusals)})" if refusals else ""
            raise CmcpError(Code.TEE_UNAVAILABLE, f"route {self.route_name}: no attested enclave{why}")
        return pinning.pick(principal, candidates, self.route_name)

    async def owner(self, session_id: str, principal: str) -> Pin:
        """Where an existing session lives (:func:`pinning.owner`); if its enclave is not attested
        here, after catching up once (a replica that just started, a failed attestation), then
        ``SESSION_LOST``."""
        try:
            return pinning.owner(session_id, principal, self._candidates())
        except CmcpError:
            await self.catch_up()
            return pinning.owner(session_id, principal, self._candidates())

    def _candidates(self) -> list[AttestedEnclave]:
        return [e.attested for e in self.endpoints.values() if e.attested is not None]

    def resolve(self, pin: Pin) -> tuple[Endpoint, AttestedEnclave]:
        endpoint = self.endpoints.get(pin.address)
        attested = endpoint.attested if endpoint is not None else None
        if endpoint is None or attested is None or attested.kid != pin.kid:
            raise pinning.session_lost()
        return endpoint, attested

    # --- audit --------------------------------------------------------------------------
    async def _recorded(self, endpoint: Endpoint, resp: Any) -> None:
        """Store an answer's entries before anything uses it (fail closed); once they are stored,
        the enclave may forget them (the next request acknowledges the delivery)."""
        await self.audit.submit(resp.audit_entries)
        endpoint.stored(resp.audit_delivery)

    async def _drain(self, endpoint: Endpoint) -> None:
        """Ask the enclave for the entries no answer carried, and store them."""
        try:
            for _ in range(MAX_DRAINS):  # each answer is bounded; a long backlog takes several
                request = enclave_pb2.DrainAuditRequest(audit_acks=endpoint.take_acks())
                resp = await enclave_rpc.unary(endpoint.stub, "DrainAudit", request, self.decide_timeout,
                                               None)
                await self._recorded(endpoint, resp)
                if not resp.audit_entries:
                    break
        except CmcpError as exc:
            log.warning("audit drain failed", extra={"route": self.route_name, "endpoint": endpoint.address,
                                                     "code": str(exc.code)})

    async def drain(self) -> None:
        """Take every attested enclave's waiting entries now."""
        await asyncio.gather(*(self._drain(e) for e in self.attested()))

    # --- calls ----------------------------------------------------------------------------
    async def authenticate(self, access_token: str) -> tuple[str, float]:
        """The principal ``access_token`` proves and its expiry, asked of an attested enclave of the
        route (rendezvous on the token's digest); the enclave that decides checks it again."""
        endpoint, _ = self.resolve(await self.pick(hashlib.sha256(access_token.encode()).hexdigest()))
        request = enclave_pb2.AuthenticateRequest(access_token=access_token)
        resp = await self._rpc(endpoint, "Authenticate", request)
        return resp.principal, float(resp.expires_at)

    async def open_session(self, pin: Pin, agent: str, access_token: str = "") -> str:
        """A session opened for ``agent`` at the pinned enclave, under the id it minted; its
        ``open`` entries are stored before the id is handed out."""
        endpoint, attested = self.resolve(pin)
        try:
            resp = await self._rpc(endpoint, "OpenSession", enclave_pb2.OpenSessionRequest(
                principal=agent, access_token=access_token, audit_acks=endpoint.take_acks()))
        except CmcpError as exc:
            if exc.code is not Code.PRINCIPAL_NOT_HELD:
                raise
            # the principal moved here: its trail under this bundle, from the store
            trail = await self.audit.trail(agent, owner=attested.kid, bundle_hash=attested.bundle_hash)
            resp = await self._rpc(endpoint, "OpenSession",
                                   enclave_pb2.OpenSessionRequest(principal=agent, trail=trail,
                                                                  access_token=access_token))
        await self._recorded(endpoint, resp)
        if not session_ids.owned_by(resp.session_id, attested.kid):
            raise CmcpError(Code.DECISION_UNVERIFIED, "the enclave answered a session id it does not own")
        return str(resp.session_id)

    async def _rpc(self, endpoint: Endpoint, name: str, request: Any) -> Any:
        """One unary call; an enclave that does not answer is suspected (see :meth:`_suspect`)."""
        return await enclave_rpc.unary(
            endpoint.stub, name, request, self.decide_timeout, functools.partial(self._suspect, endpoint)
        )

    async def _send_alone(self, endpoint: Endpoint, request: Any) -> None:
        """One outcome as its own Complete. A failure here leaves the endpoint's state to the
        agent-facing calls, which then fail with their own code."""
        if self.endpoints.get(endpoint.address) is not endpoint:
            raise pinning.session_lost()
        resp = await enclave_rpc.unary(endpoint.stub, "Complete", request, self.decide_timeout, None)
        await self._recorded(endpoint, resp)

    def report(self, pin: Pin, session_id: str, call_id: str, result: Any, error_code: str) -> None:
        """Queue an allowed call's outcome for the pinned enclave (cheap: digests come later)."""
        endpoint = self.endpoints.get(pin.address)
        if endpoint is None:
            outcome_lost(session_id, call_id, Code.SESSION_LOST)
            return
        endpoint.outcomes.report(session_id, call_id, result, error_code)

    async def flush(self) -> None:
        """Send every queued outcome now and wait for all of them (shutdown)."""
        for endpoint in list(self.endpoints.values()):
            endpoint.outcomes.flush_now()
            await endpoint.outcomes.settle()

    async def decide(
        self,
        pin: Pin,
        *,
        session_id: str,
        call_id: str,
        principal: str,
        method: str,
        tool: str,
        arguments_json: bytes,
        args_digest: str,
        audience: str,
        access_token: str = "",
        input_json: bytes = b"",
    ) -> Decision:
        """Ask the pinned enclave and verify its signed answer echoes exactly this call (its
        ``args_digest`` binds ``input_json`` when there is one: a multi-round trip)."""
        with self.audit.call():  # from the request until its entries are stored
            endpoint, attested = self.resolve(pin)
            request = enclave_pb2.DecideRequest(
                session_id=session_id,
                call_id=call_id,
                principal=principal,
                method=method,
                tool=tool,
                arguments_json=arguments_json,
                arguments_digest=args_digest,
                audience=audience,
                access_token=access_token,
                input_json=input_json,
                audit_acks=endpoint.take_acks(),
            )
            queue = endpoint.outcomes
            carried = await queue.for_carrier()
            if carried:
                request.completes.extend(carried)
            streamed = request.ByteSize() <= decide_frames.STREAM_MESSAGE_MAX
            try:
                if not streamed:
                    resp = await self._rpc(endpoint, "Decide", request)
                else:
                    resp = await (endpoint.hop or endpoint.decisions).decide(request)
            except CmcpError as exc:
                if exc.code is Code.TEE_UNAVAILABLE:  # not known to have arrived
                    queue.requeue(carried)
                raise
            queue.acknowledged(carried, resp.completes_handled)
            stored = self.audit.submit(resp.audit_entries)  # the carried outcomes' entries too
            try:  # the signature is checked while the store commits; nothing is used before both
                document = _verified(resp, attested, expected={
                    "session_id": session_id,
                    "call_id": call_id,
                    "principal": principal,
                    "method": method,
                    "tool": tool,
                    "args_digest": args_digest,
                    "audience": audience,
                    "bundle_hash": attested.bundle_hash,
                })
            except Exception:
                with contextlib.suppress(CmcpError):  # the writer logs its own failure; this one is the cause
                    await stored
                raise
            await stored
            endpoint.stored(resp.audit_delivery)  # only a verified answer's: a doubtful one comes again
            return Decision(document, bytes(resp.decision_json), bytes(resp.signature), resp.permit)

    async def complete(self, pin: Pin, request: Any) -> None:
        endpoint, _ = self.resolve(pin)
        await self._recorded(endpoint, await self._rpc(endpoint, "Complete", request))

    async def list_tools(
        self, pin: Pin, session_id: str, principal: str, access_token: str = "",
        method: str = "tools/list",
    ) -> list[str]:
        """The names a list ``method`` may show this principal (tools, resources, prompts)."""
        endpoint, _ = self.resolve(pin)
        resp = await self._rpc(
            endpoint,
            "ListTools",
            enclave_pb2.ListToolsRequest(
                session_id=session_id, principal=principal, access_token=access_token, method=method
            ),
        )
        return list(resp.tools)

    async def close_session(self, pin: Pin, session_id: str, reason: str) -> Any:
        """Close at the enclave, after every outcome queued so far is recorded (carried along)."""
        endpoint, _ = self.resolve(pin)
        if endpoint.outcomes.carries is not True:  # not known to take them along: send them first
            endpoint.outcomes.flush_now()
        await endpoint.outcomes.settle()
        endpoint, _ = self.resolve(pin)
        queue = endpoint.outcomes
        request = enclave_pb2.CloseSessionRequest(session_id=session_id, reason=reason,
                                                  audit_acks=endpoint.take_acks())
        carried = queue.take(None) if queue.carries is True else []
        if carried:
            request.completes.extend(carried)
        try:
            resp = await self._rpc(endpoint, "CloseSession", request)
        except CmcpError as exc:
            if exc.code is Code.TEE_UNAVAILABLE:
                queue.requeue(carried)
            raise
        queue.closed_without(carried, resp.completes_handled)
        await self._recorded(endpoint, resp)
        return resp

    async def close(self) -> None:
        if self._catching_up is not None:
            self._catching_up.cancel()
        await self.flush()
        await self.drain()
        for address in list(self.endpoints):
            await self._drop(address)


def _verified(resp: Any, attested: AttestedEnclave, expected: dict[str, str]) -> dict[str, Any]:
    """The signed decision, checked to echo exactly this call and to have come with its entry."""
    _check_carried(resp)
    document = verify_decision(resp.decision_json, resp.signature, attested.key, expected=expected)
    if document["effective"] == "allow" and not resp.permit and document["method"] not in INPUT_METHODS:
        raise CmcpError(Code.DECISION_UNVERIFIED, "an allow without a permit")  # (an ask needs none)
    return document


def _check_carried(resp: Any) -> None:
    """The decision's own audit entry must have come (and been stored) with it: a host that
    strips entries from answers would otherwise get permits used with no durable trace."""
    if not any(raw.startswith(b'{"data":' + resp.decision_json) for raw in resp.audit_entries):
        raise CmcpError(Code.DECISION_UNVERIFIED, "the answer does not carry the decision's audit entry")


class Refresher:
    """Periodic jobs: re-attestation, endpoint discovery and idle-session reaping."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.jobs: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for job in self.jobs:
                try:
                    await job()
                except Exception:
                    log.exception("enclave refresh failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._task = None
