"""The gateway assembled: routes, session table, MCP handler and ASGI front, and their lifetime.

:class:`Gateway` only wires the parts together: :mod:`~cmcp_gateway.transport` (HTTP),
:mod:`~cmcp_gateway.protocol` (MCP and JSON-RPC), :mod:`~cmcp_gateway.sessions`,
:mod:`~cmcp_gateway.pipeline` (the gated calls) and one
:mod:`~cmcp_gateway.enclave_pool` and upstream client per route. Start-up attests each route's
enclaves before serving; one refresher re-attests them, rediscovers Kubernetes endpoints and
reaps idle sessions.
"""

from __future__ import annotations

from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from cmcp_core import gateway_identity
from cmcp_core.attestation import AttestPolicy
from cmcp_core.audit_store import open_audit_store
from cmcp_core.route_source import McpRouteSource
from cmcp_gateway.audit_writer import AuditWriter
from cmcp_gateway.auth import TokenStore
from cmcp_gateway.config import GatewayConfig
from cmcp_gateway.enclave_pool import EnclavePool, Refresher
from cmcp_gateway.limits import ConcurrencyLimiter
from cmcp_gateway.protocol import LOOPBACK_HOSTS, McpHandler
from cmcp_gateway.routes import RouteRuntime, metadata_paths, served_paths
from cmcp_gateway.sessions import SessionTable
from cmcp_gateway.transport import AsgiFront
from cmcp_gateway.upstream import UpstreamClient


class Gateway:
    def __init__(self, config: GatewayConfig, tokens: TokenStore | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.limits = config.limits
        self.limiter = ConcurrencyLimiter(config.limits.max_concurrent_per_agent)
        self.sessions = SessionTable(
            config.limits.max_sessions, config.limits.session_idle_seconds, config.trust_record_dir,
            config.limits.max_sessions_per_agent,
        )
        self.routes: dict[str, RouteRuntime] = {}  # by path, filled at start-up
        self.audit = AuditWriter(open_audit_store(config.audit_store))  # every answer's entries, first
        self.refresher = Refresher(config.attest_refresh_seconds)
        # the key the enclaves' initdata pins; read once at start, a bad file stops the gateway
        self.identity = (gateway_identity.load_private_key(Path(config.identity_key_file))
                         if config.identity_key_file else None)
        metadata = metadata_paths(config)
        listen_host = config.listen.rpartition(":")[0].strip("[]")
        default_hosts = LOOPBACK_HOSTS if listen_host in ("127.0.0.1", "localhost", "::1") else ()
        self.mcp = McpHandler(self.routes, self.sessions, tokens, self.limits, self.limiter, metadata,
                              default_hosts)
        self.front = AsgiFront([*served_paths(config), *metadata], self.mcp.handle, self)

    async def startup(self) -> None:
        for route in self.config.routes:
            policy = AttestPolicy(appraisal=self.config.appraisal, expected=route.expected())
            source = McpRouteSource(route.kubernetes).read if route.kubernetes is not None else None
            pool = EnclavePool(route.name, policy, self.limits.decide_timeout_seconds, self.audit,
                               identity=self.identity, source=source)
            runtime = RouteRuntime(
                route, pool, UpstreamClient(route.upstream, self.limits.upstream_timeout_seconds)
            )
            self.routes[route.path] = runtime
            if source is not None:
                await pool.discover()
                self.refresher.jobs.append(pool.discover)
            else:
                await pool.set_endpoints(route.enclaves)
            self.refresher.jobs.append(pool.refresh)
        self.refresher.jobs.append(self.reap_idle)
        self.refresher.start()

    async def shutdown(self) -> None:
        await self.refresher.stop()
        await self.sessions.retry_closes(self.routes.values())  # a last time, while the pools are up
        self.sessions.give_up_closes()
        for runtime in self.routes.values():
            await runtime.pool.close()
        for runtime in self.routes.values():
            await runtime.upstream.aclose()
        await self.audit.flush()
        self.audit.store.close()

    async def reap_idle(self) -> None:
        """Close idle sessions, and ask again for the closes that failed."""
        await self.sessions.retry_closes(self.routes.values())
        await self.sessions.reap_idle(self.routes.values())

    def app(self) -> ASGIApp:
        """The ASGI app to serve (its lifespan runs :meth:`startup` and :meth:`shutdown`)."""
        return self.front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The gateway is also usable as the ASGI app itself."""
        await self.front(scope, receive, send)


def build(config: GatewayConfig, tokens: TokenStore | None = None) -> tuple[Gateway, ASGIApp]:
    gateway = Gateway(config, tokens)
    return gateway, gateway.app()
