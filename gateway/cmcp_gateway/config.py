"""Gateway configuration: listeners, identity sources, limits and routes (YAML or JSON).

Example::

    listen: 127.0.0.1:8080
    metrics_listen: 127.0.0.1:9464      # separate listener: metrics never share the agent port
    trust_record_dir: /var/lib/cmcp/records   # optional: each closed session's signed Trust Record
    identity: {key_file: gateway-key.pem}   # Ed25519 key the enclaves' initdata pins (gateway_keys)
    state_dir: /var/lib/cmcp-gateway     # default ~/.local/state/cmcp-gateway
    audit: {store: "sqlite:/var/lib/cmcp-gateway/audit.sqlite"}   # default sqlite:<state_dir>/audit.sqlite;
                                         # several replicas: postgresql://... (one store they share),
                                         # or {store_from_env: VAR}: the DSN from the environment
    release: {manifests: [enclave-release.json], keys: [release-key.pem]}   # required
    allow_simulated: true                # accept software-only (simulated) enclave evidence
    tdx_collateral_dir: /var/cache/cmcp/tdx   # optional; pccs_url: https://pccs.example/...
    auth: {tokens_file: tokens.yaml}     # or tokens_dir: /var/run/secrets/cmcp-agents
    tls: {cert: gw.pem, key: gw.key, client_ca: ca.pem, client_cert: optional}
    limits: {max_body_bytes: 1048576, max_depth: 32, max_string: 65536, max_concurrent_per_agent: 32,
             max_sessions: 10000, max_sessions_per_agent: 256, max_header_bytes: 32768, max_headers: 100,
             header_timeout_seconds: 10, body_timeout_seconds: 30, max_connections: 1000}
    routes:
      - name: demo                       # served at /mcp/demo (and /mcp when it is the only route)
        upstream: http://127.0.0.1:9001/mcp
        audience: demo-upstream
        enclaves: [127.0.0.1:50051]      # static endpoints (local demo) ...
        kubernetes: {namespace: cmcp, name: demo}   # ... or the operator's McpRoute status
        expected_bundle_hashes: [sha256:...]   # required unless `kubernetes` is followed
        expected_catalog_hashes: [sha256:...]  # the bundle hash leaves the catalog out: pin it too
        enforcement_modes: [enforce]     # the default; add advisory only for an advisory route
        open: false                      # true: no agent credential needed (principal "anonymous")
        authorization:                   # OAuth 2.1 resource server (MCP authorization): agents send
          resource: https://gw.example/mcp/demo   # JWT access tokens for this resource (RFC 8707),
          authorization_servers: [https://issuer.example]   # which the enclave verifies against the
          scopes_supported: [mail:send]  # bundle's identity section; advertised per RFC 9728
        allowed_hosts: [gw.example, "gw.example:*"]   # Host values served (DNS rebinding); default:
                                         # loopback names when listening on loopback, else any
        allowed_origins: [https://app.example]   # browser Origins served; any other Origin is 403
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cmcp_core import appraisal_options
from cmcp_core.attestation import ENFORCE_ONLY, Expected
from cmcp_core.http_front import FrontDoorLimits
from cmcp_core.route_status import RouteRef
from cmcp_core.verify import AppraisalPolicy


@dataclass(frozen=True)
class GatewayLimits:
    max_body_bytes: int = 1024 * 1024
    max_depth: int = 32
    max_string: int = 64 * 1024
    max_concurrent_per_agent: int = 64
    decide_timeout_seconds: float = 2.0
    upstream_timeout_seconds: float = 30.0
    session_idle_seconds: float = 900.0
    max_sessions: int = 10_000
    max_sessions_per_agent: int = 256  # one agent's flood of initialize cannot fill the table
    # the HTTP front door (cmcp_core.http_front)
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_connections: int = 1000

    def front_door(self) -> FrontDoorLimits:
        return FrontDoorLimits(max_header_bytes=self.max_header_bytes, max_headers=self.max_headers,
                               header_timeout_seconds=self.header_timeout_seconds,
                               body_timeout_seconds=self.body_timeout_seconds,
                               max_connections=self.max_connections)


WELL_KNOWN_RESOURCE = "/.well-known/oauth-protected-resource"


@dataclass(frozen=True)
class Authorization:
    """A route as an OAuth 2.1 protected resource: what RFC 9728 metadata advertises. Tokens are
    verified by the enclave against the measured bundle, never here; ``resource`` must be one of
    the bundle's ``identity.audiences``."""

    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()

    @property
    def metadata_path(self) -> str:
        """Where RFC 9728 puts the metadata: the well-known prefix before the resource's path."""
        return WELL_KNOWN_RESOURCE + urlsplit(self.resource).path.rstrip("/")

    @property
    def metadata_url(self) -> str:
        parts = urlsplit(self.resource)
        return f"{parts.scheme}://{parts.netloc}{self.metadata_path}"

    def metadata(self) -> dict[str, Any]:
        document: dict[str, Any] = {"resource": self.resource,
                                    "authorization_servers": list(self.authorization_servers),
                                    "bearer_methods_supported": ["header"]}
        if self.scopes_supported:
            document["scopes_supported"] = list(self.scopes_supported)
        return document


def _authorization(raw: Any, route: str) -> Authorization | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("resource"), str):
        raise ValueError(f"route {route!r}: authorization needs a resource URI")
    parts = urlsplit(raw["resource"])
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise ValueError(f"route {route!r}: authorization.resource must be an absolute http(s) URI "
                         "without a fragment (RFC 8707)")
    servers = raw.get("authorization_servers") or []
    if not isinstance(servers, list) or not servers:
        raise ValueError(f"route {route!r}: authorization.authorization_servers must list the issuers")
    return Authorization(raw["resource"], tuple(str(s) for s in servers),
                         tuple(str(s) for s in raw.get("scopes_supported") or ()))


@dataclass(frozen=True)
class RouteConfig:
    name: str
    upstream: str
    audience: str
    enclaves: tuple[str, ...] = ()
    kubernetes: RouteRef | None = None
    expected_bundle_hashes: frozenset[str] = frozenset()
    expected_catalog_hashes: frozenset[str] = frozenset()
    enforcement_modes: frozenset[str] = ENFORCE_ONLY
    open: bool = False
    authorization: Authorization | None = None  # agents present OAuth access tokens
    allowed_hosts: tuple[str, ...] = ()  # Host header values served ("host", "host:port", "host:*")
    allowed_origins: tuple[str, ...] = ()  # Origin header values served; a request without one passes

    @property
    def path(self) -> str:
        return f"/mcp/{self.name}"

    def expected(self) -> Expected:
        """What this route's enclaves must be measured for: its pinned bundles (a followed route
        adds its status initdata digests at run time), its audience, its modes and, when followed,
        its ``namespace/name``."""
        return Expected(
            bundle_hashes=self.expected_bundle_hashes,
            catalog_hashes=self.expected_catalog_hashes,
            route=str(self.kubernetes) if self.kubernetes is not None else None,
            audience=self.audience,
            modes=self.enforcement_modes,
        )


@dataclass(frozen=True)
class TlsConfig:
    cert: str
    key: str
    client_ca: str | None = None
    client_cert: str = "none"  # none | optional | required


@dataclass(frozen=True)
class GatewayConfig:
    routes: tuple[RouteConfig, ...]
    appraisal: AppraisalPolicy
    listen: str = "127.0.0.1:8080"
    metrics_listen: str | None = None
    tokens_file: str | None = None
    tokens_dir: str | None = None
    tls: TlsConfig | None = None
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    attest_refresh_seconds: float = 30.0
    trust_record_dir: str | None = None  # write each closed session's Trust Record here
    identity_key_file: str | None = None  # signs every call to an enclave (cmcp_core.gateway_identity)
    audit_store: str = ""  # sqlite:PATH | postgresql://... (cmcp_core.audit_store); parse() fills the default


AUDIT_FILE = "audit.sqlite"


def default_state_dir() -> Path:
    """Where the gateway keeps local state unless ``state_dir`` says (the chart always says)."""
    return Path.home() / ".local" / "state" / "cmcp-gateway"


def _audit_store(raw: dict[str, Any]) -> str:
    """``audit.store``, or SQLite under ``state_dir``: every answer's entries go somewhere durable."""
    audit = raw.get("audit") or {}
    if not isinstance(audit, dict):
        raise ValueError("audit must be a mapping, e.g. {store: 'sqlite:/var/lib/cmcp-gateway/audit.sqlite'}")
    store = audit.get("store")
    if store:
        return str(store)
    if audit.get("store_from_env"):  # a DSN with a password: from a Secret, never in the config file
        name = str(audit["store_from_env"])
        if not os.environ.get(name):
            raise ValueError(f"audit.store_from_env names {name}, which is not set")
        return os.environ[name]
    state_dir = Path(str(raw["state_dir"])) if raw.get("state_dir") else default_state_dir()
    return f"sqlite:{state_dir / AUDIT_FILE}"


def parse_route(raw: dict[str, Any]) -> RouteConfig:
    """One entry of ``routes``; ``ValueError`` (or ``KeyError``) on a malformed one."""
    kube = raw.get("kubernetes")
    route = RouteConfig(
        name=str(raw["name"]),
        upstream=str(raw["upstream"]),
        audience=str(raw["audience"]),
        enclaves=tuple(str(e) for e in raw.get("enclaves", ())),
        kubernetes=RouteRef(**kube) if kube else None,
        expected_bundle_hashes=frozenset(str(h) for h in raw.get("expected_bundle_hashes") or ()),
        expected_catalog_hashes=frozenset(str(h) for h in raw.get("expected_catalog_hashes") or ()),
        enforcement_modes=frozenset(str(m) for m in raw.get("enforcement_modes") or ENFORCE_ONLY),
        open=bool(raw.get("open", False)),
        authorization=_authorization(raw.get("authorization"), str(raw["name"])),
        allowed_hosts=tuple(str(h).lower() for h in raw.get("allowed_hosts") or ()),
        allowed_origins=tuple(str(o).lower().rstrip("/") for o in raw.get("allowed_origins") or ()),
    )
    if not route.expected_bundle_hashes and route.kubernetes is None:
        raise ValueError(f"route {route.name!r} pins nothing: give expected_bundle_hashes or kubernetes")
    if route.open and route.authorization is not None:
        raise ValueError(f"route {route.name!r} cannot be open and require access tokens")
    if not route.enforcement_modes <= {"enforce", "advisory"}:
        raise ValueError(f"route {route.name!r}: enforcement_modes may be enforce and advisory")
    return route


def parse(raw: dict[str, Any]) -> GatewayConfig:
    """Build a config from a decoded document; ``KeyError``/``TypeError`` on a malformed one,
    ``CmcpError`` when the release manifests are missing or do not verify."""
    auth = raw.get("auth") or {}
    tls = raw.get("tls")
    routes = tuple(parse_route(r) for r in raw.get("routes", ()))
    if not routes:
        raise ValueError("config names no routes")
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise ValueError("route names must be unique")
    return GatewayConfig(
        routes=routes,
        listen=str(raw.get("listen", "127.0.0.1:8080")),
        metrics_listen=raw.get("metrics_listen"),
        appraisal=appraisal_options.from_mapping(raw),
        tokens_file=auth.get("tokens_file"),
        tokens_dir=auth.get("tokens_dir"),
        tls=TlsConfig(**tls) if tls else None,
        limits=GatewayLimits(**(raw.get("limits") or {})),
        attest_refresh_seconds=float(raw.get("attest_refresh_seconds", 30.0)),
        trust_record_dir=raw.get("trust_record_dir"),
        identity_key_file=(raw.get("identity") or {}).get("key_file"),
        audit_store=_audit_store(raw),
    )


def load(path: str | Path) -> GatewayConfig:
    text = Path(path).read_text(encoding="utf-8")
    raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping")
    return parse(raw)
