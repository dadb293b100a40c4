"""In-process gateway + guarded upstream on loopback, for gateway/guard tests and the bench.

API:
  * ``async with run_gateway(config, tokens) as gw:`` — uvicorn on a free port; ``gw.url``
    (route ``/mcp``), ``gw.gateway`` (the :class:`cmcp_gateway.app.Gateway`).
  * ``async with run_stack(enclaves, audience=..., tokens={"tok-alice": "alice"}) as stack:`` —
    guard (attesting ``enclaves`` itself) + upstream (:mod:`cmcp_devkit.upstream`) + gateway;
    ``stack.url``, ``stack.upstream`` (``.url``, ``.counter``), ``stack.gateway``, ``stack.guard``.
    Both relying parties trust the dev kit's signed development release and pin the bundles and
    modes of the ``EnclaveProcess`` entries; a bare address (a proxy, a dead port) needs
    ``bundle_hashes``.
  * ``agent(url, token=None, mode="auto") -> mcp.Client`` with the bearer token set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from cmcp_core import decide_frames
from cmcp_core.attestation import ENFORCE_ONLY, AttestPolicy, Expected
from cmcp_core.audit_store import open_audit_store
from cmcp_core.digest import json_digest
from cmcp_core.proto import enclave_pb2, enclave_pb2_grpc
from cmcp_devkit.enclave import NO_TRAIL, EnclaveProcess
from cmcp_devkit.ports import free_port
from cmcp_devkit.release import dev_appraisal
from cmcp_devkit.serving import server_config, serving
from cmcp_devkit.upstream import RunningUpstream, run_upstream
from cmcp_gateway.app import Gateway, build
from cmcp_gateway.audit_writer import AuditWriter
from cmcp_gateway.auth import PeerCertHttpToolsProtocol, TokenStore
from cmcp_gateway.config import Authorization, GatewayConfig, GatewayLimits, RouteConfig
from cmcp_guard.main import build_guard
from cmcp_guard.middleware import Guard


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway


@contextlib.asynccontextmanager
async def serve(
    app: Any, port: int = 0, config: uvicorn.Config | None = None
) -> AsyncIterator[uvicorn.Server]:
    """Run an ASGI app under uvicorn in this loop until the block exits (``config`` overrides)."""
    config = config or server_config(
        app, "127.0.0.1", port, http=PeerCertHttpToolsProtocol, access_log=False
    )
    async with serving(config) as server:
        yield server


@contextlib.asynccontextmanager
async def run_gateway(config: GatewayConfig, tokens: TokenStore | None) -> AsyncIterator[RunningGateway]:
    gateway, app = build(config, tokens)
    port = free_port()
    async with serve(app, port):
        yield RunningGateway(url=f"http://127.0.0.1:{port}/mcp", gateway=gateway)


@dataclass
class Stack:
    url: str
    gateway: Gateway
    upstream: RunningUpstream
    guard: Guard | None


Endpoint = EnclaveProcess | str


def addresses(enclaves: Sequence[Endpoint]) -> list[str]:
    return [e.address if isinstance(e, EnclaveProcess) else e for e in enclaves]


def pins(enclaves: Sequence[Endpoint], bundle_hashes: Sequence[str] = ()) -> Expected:
    """What the test's relying parties expect: the enclaves' own bundles and modes, plus any given."""
    procs = [e for e in enclaves if isinstance(e, EnclaveProcess)]
    hashes = frozenset(bundle_hashes) | {p.bundle_hash for p in procs}
    if not hashes:
        raise ValueError("pinning is mandatory: pass EnclaveProcess entries or bundle_hashes")
    modes = frozenset(str(p.ready["enforcement_mode"]) for p in procs) or ENFORCE_ONLY
    return Expected(bundle_hashes=hashes, modes=modes)


def attest_policy(*bundle_hashes: str) -> AttestPolicy:
    """What a gateway pool pinned to these bundles appraises with (the dev release trusted)."""
    return AttestPolicy(appraisal=dev_appraisal(), expected=Expected(bundle_hashes=frozenset(bundle_hashes)))


def make_guard(enclaves: Sequence[Endpoint], audience: str, *, bundle_hashes: Sequence[str] = ()) -> Guard:
    return build_guard(audience, addresses(enclaves), appraisal=dev_appraisal(),
                       expected=pins(enclaves, bundle_hashes), refresh_seconds=3600.0)


def gateway_config(route: RouteConfig, **settings: Any) -> GatewayConfig:
    """A config whose appraisal trusts the dev kit's development release (its audit store a
    fresh SQLite file unless ``audit_store`` is given)."""
    fresh = Path(tempfile.mkdtemp(prefix="cmcp-audit-")) / "audit.sqlite"
    settings.setdefault("audit_store", f"sqlite:{fresh}")
    return GatewayConfig(routes=(route,), appraisal=dev_appraisal(), **settings)


def audit_writer(directory: Path | None = None) -> AuditWriter:
    """A gateway audit writer on a fresh SQLite store in ``directory`` (for pools built by hand)."""
    where = directory or Path(tempfile.mkdtemp(prefix="cmcp-audit-"))
    return AuditWriter(open_audit_store(f"sqlite:{where / 'audit.sqlite'}"))


@contextlib.asynccontextmanager
async def run_stack(
    enclaves: Sequence[Endpoint],
    *,
    audience: str,
    tokens: dict[str, str] | None = None,
    guard: bool = True,
    limits: GatewayLimits | None = None,
    open_route: bool = False,
    guard_enclaves: Sequence[Endpoint] | None = None,
    bundle_hashes: Sequence[str] = (),
    refresh_seconds: float = 3600.0,
    upstream_sse: bool = False,
    authorization: Authorization | None = None,
) -> AsyncIterator[Stack]:
    guarded = guard_enclaves if guard_enclaves is not None else enclaves
    expected = pins([*enclaves, *guarded], bundle_hashes)
    the_guard = make_guard(guarded, audience, bundle_hashes=sorted(expected.bundle_hashes)) if guard else None
    async with run_upstream(the_guard, json_response=not upstream_sse) as upstream:
        route = RouteConfig(
            name="test", upstream=upstream.url, audience=audience, enclaves=tuple(addresses(enclaves)),
            expected_bundle_hashes=expected.bundle_hashes, enforcement_modes=expected.modes, open=open_route,
            authorization=authorization,
        )
        config = gateway_config(
            route,
            limits=limits or GatewayLimits(decide_timeout_seconds=15.0),
            attest_refresh_seconds=refresh_seconds,
        )
        store = TokenStore(tokens if tokens is not None else {"tok-alice": "alice", "tok-bob": "bob"})
        async with run_gateway(config, store) as gw:
            yield Stack(url=gw.url, gateway=gw.gateway, upstream=upstream, guard=the_guard)


def agent(url: str, token: str | None = "tok-alice", mode: str = "auto", **kwargs: Any) -> Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "RunningGateway",
    "Stack",
    "addresses",
    "agent",
    "attest_policy",
    "audit_writer",
    "dataclasses",
    "gateway_config",
    "make_guard",
    "pins",
    "run_gateway",
    "run_stack",
    "serve",
]


# --- enclave processes and test-built enclave servicers ---------------------------------------

AUDIENCE = "urn:cmcp:test-upstream"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
PERMIT_TOOL = "payments.transfer"
PERMIT_ARGS = {"amount": 100, "currency": "EUR", "to": "acct-1"}


async def get_permit(
    address: str, tool: str = PERMIT_TOOL, arguments: dict[str, Any] | None = None, audience: str = AUDIENCE,
    method: str = "tools/call",
) -> str:
    """What a hostile host can do: ask the enclave for a decision on a request it is allowed to make
    (``tool``: the target, a tool name or a resource URI)."""
    arguments = PERMIT_ARGS if arguments is None else arguments
    async with grpc.aio.insecure_channel(address) as channel:
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        opened = await stub.OpenSession(enclave_pb2.OpenSessionRequest(principal="alice", trail=NO_TRAIL))
        resp = await stub.Decide(
            enclave_pb2.DecideRequest(
                session_id=opened.session_id,
                call_id=uuid.uuid4().hex,
                principal="alice",
                method=method,
                tool=tool,
                arguments_json=json.dumps(arguments).encode(),
                arguments_digest=json_digest(arguments),
                audience=audience,
            )
        )
    assert resp.permit, "the enclave must allow the baseline call"
    return str(resp.permit)


class MitmEnclave:
    """A test-built gRPC Enclave servicer in front of a real enclave: the hostile host.

    It relays ``Attest`` (so attestation of the real enclave still verifies) and everything
    else, except what ``tamper`` says: ``"slow"`` (Decide sleeps ``delay`` seconds),
    ``"bad-signature"`` (one signature bit flipped), ``"other-call"`` (answers with the first
    decision it ever relayed, validly signed but for another call), ``"no-permit"`` (strips the
    permit from an allow), ``"strip-audit"`` (drops the audit entries the answer carries),
    ``"foreign-id"`` (OpenSession answers an id whose owner part names another enclave),
    ``"drop-close"`` (the first CloseSession never reaches the enclave: ``UNAVAILABLE``).
    ``decide_seen`` is set when a Decide arrives. The real enclave's lean decision hop is relayed
    frame by frame (``Attest`` advertises the relay's port), with the same tampering.
    """

    def __init__(self, target: str, tamper: str | None = None, delay: float = 30.0) -> None:
        self.target = target
        self.tamper = tamper
        self.delay = delay
        self.decide_seen = asyncio.Event()
        self.first_decision: Any = None
        self.real_hop_port = 0  # the real enclave's lean hop (learned from its Attest)
        self.hop_port = 0  # this host's relay of it
        self.hop_decides = 0  # DECIDE frames relayed (the gateway used the hop, not gRPC)
        self.closes_seen = 0  # CloseSession calls that reached this host
        self.server: Any = None
        self.address = ""

    async def start(self) -> MitmEnclave:
        channel = grpc.aio.insecure_channel(self.target)
        stub = enclave_pb2_grpc.EnclaveStub(channel)
        outer = self

        async def relay(request: Any) -> Any:
            outer.decide_seen.set()
            if outer.tamper == "slow":
                await asyncio.sleep(outer.delay)
            return outer.tampered(await stub.Decide(request))

        class Servicer(enclave_pb2_grpc.EnclaveServicer):  # type: ignore[misc]
            async def Attest(self, request: Any, context: Any) -> Any:
                resp = await stub.Attest(request)
                if resp.decide_hop_port:  # the lean hop goes through this host too
                    outer.real_hop_port = resp.decide_hop_port
                    resp.decide_hop_port = outer.hop_port
                return resp

            async def OpenSession(self, request: Any, context: Any) -> Any:
                try:
                    resp = await stub.OpenSession(request)
                except grpc.aio.AioRpcError as exc:  # a refusal (PRINCIPAL_NOT_HELD): relayed as is
                    await context.abort(exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ()))
                    raise
                if outer.tamper == "foreign-id":  # an id another enclave would own
                    resp.session_id = "A" * 16 + resp.session_id[16:]
                return resp

            async def DrainAudit(self, request: Any, context: Any) -> Any:
                return await stub.DrainAudit(request)

            async def Authenticate(self, request: Any, context: Any) -> Any:
                try:
                    return await stub.Authenticate(request)
                except grpc.aio.AioRpcError as exc:  # a refused token: relayed as is
                    await context.abort(exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ()))
                    raise

            async def Decide(self, request: Any, context: Any) -> Any:
                return await relay(request)

            async def DecideStream(self, requests: Any, context: Any) -> Any:
                # Relayed one at a time, in order, as the real enclave decides them; the
                # slow tamper then stalls the stream like an enclave that stops answering.
                async for request in requests:
                    try:
                        response = await relay(request)
                    except grpc.aio.AioRpcError as exc:  # a refusal: as the enclave's reply
                        code = dict(exc.trailing_metadata() or ()).get("cmcp-error-code", "")
                        yield enclave_pb2.DecideReply(call_id=request.call_id, error_code=code,
                                                      error_detail=exc.details() or "")
                        continue
                    yield enclave_pb2.DecideReply(call_id=request.call_id, response=response)

            async def Complete(self, request: Any, context: Any) -> Any:
                return await stub.Complete(request)

            async def ListTools(self, request: Any, context: Any) -> Any:
                return await stub.ListTools(request)

            async def CloseSession(self, request: Any, context: Any) -> Any:
                outer.closes_seen += 1
                if outer.tamper == "drop-close" and outer.closes_seen == 1:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the host dropped this close")
                return await stub.CloseSession(request)

        self.hop = await asyncio.start_server(self._relay_hop, "127.0.0.1", 0)
        self.hop_port = self.hop.sockets[0].getsockname()[1]
        self.server = grpc.aio.server()
        enclave_pb2_grpc.add_EnclaveServicer_to_server(Servicer(), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        self._channel = channel
        return self

    def tampered(self, resp: Any) -> Any:
        """A real enclave's ``DecideResponse`` as ``tamper`` changes it (gRPC and hop alike)."""
        if self.first_decision is None:
            self.first_decision = resp
        if self.tamper == "bad-signature":
            sig = bytearray(resp.signature)
            sig[0] ^= 1
            resp.signature = bytes(sig)
        elif self.tamper == "other-call":
            return self.first_decision
        elif self.tamper == "no-permit":
            resp.permit = ""
        elif self.tamper == "strip-audit":
            del resp.audit_entries[:]
        return resp

    async def _relay_hop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The lean hop, frame by frame, to the real enclave's; decisions as ``tamper`` says."""
        host = self.target.rsplit(":", 1)[0]
        up_reader, up_writer = await asyncio.open_connection(host, self.real_hop_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_gateway: bool) -> None:
            try:
                while True:
                    header = await src.readexactly(decide_frames.HEADER.size)
                    length, kind = decide_frames.HEADER.unpack(header)
                    payload = await src.readexactly(length - 1)
                    if kind == decide_frames.Kind.DECIDE:
                        self.hop_decides += 1
                        self.decide_seen.set()
                        if self.tamper == "slow":
                            await asyncio.sleep(self.delay)
                    elif kind == decide_frames.Kind.REPLY and to_gateway:
                        reply = enclave_pb2.DecideReply.FromString(payload)
                        if reply.HasField("response"):
                            reply.response.CopyFrom(self.tampered(reply.response))
                        payload = reply.SerializeToString()
                    dst.write(decide_frames.frame(decide_frames.Kind(kind), payload))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    async def stop(self) -> None:
        self.hop.close()
        await self.server.stop(0)
        await self._channel.close()
