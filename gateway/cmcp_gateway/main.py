"""``cmcp-gateway --config gateway.yaml [--listen HOST:PORT]``."""

from __future__ import annotations

import argparse
import dataclasses
import ssl

import uvicorn
from prometheus_client import start_http_server
from starlette.types import ASGIApp

from cmcp_core import logs
from cmcp_core.errors import CmcpError
from cmcp_core.http_front import bounded
from cmcp_core.stop_signals import GRACE_SECONDS, exit_on_stop_signals
from cmcp_gateway.app import build
from cmcp_gateway.auth import PeerCertHttpToolsProtocol, TokenStore
from cmcp_gateway.config import GatewayConfig, load
from cmcp_gateway.metrics import FRONT_DOOR_REFUSALS

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _tokens(config: GatewayConfig) -> TokenStore | None:
    if config.tokens_file:
        return TokenStore.from_file(config.tokens_file)
    if config.tokens_dir:
        return TokenStore.from_dir(config.tokens_dir)
    return None


def _count_refusal(reason: str) -> None:
    FRONT_DOOR_REFUSALS.labels(reason).inc()


def uvicorn_config(config: GatewayConfig, app: ASGIApp, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn on uvloop with our httptools protocol (peer certificates reach the app) and optional (m)TLS.

    ``proxy_headers=False``: the gateway never reads the client address, so uvicorn's
    X-Forwarded-* middleware would only add a layer to every request. On SIGTERM uvicorn stops
    accepting, lets in-flight requests finish for at most ``GRACE_SECONDS`` (an agent's open GET
    stream would otherwise hold the stop forever), then runs the app's shutdown, which sends the
    queued outcomes and drains the enclaves' audit entries into the store.
    """
    host, _, port = config.listen.rpartition(":")
    tls = config.tls
    front = config.limits.front_door()
    return uvicorn.Config(
        app,
        host=host,
        port=int(port),
        loop="uvloop",  # docs/adr/0015-uvloop-gateway.md
        log_level=log_level,
        http=bounded(PeerCertHttpToolsProtocol, front, _count_refusal),
        limit_concurrency=front.max_connections,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_SECONDS,
        access_log=False,
        proxy_headers=False,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        ssl_ca_certs=tls.client_ca if tls else None,
        ssl_cert_reqs=_CERT_REQS[tls.client_cert] if tls else ssl.CERT_NONE,
    )


def main(argv: list[str] | None = None) -> None:
    exit_on_stop_signals()  # a stop during start-up ends the process, also as a container's PID 1
    parser = argparse.ArgumentParser(prog="cmcp-gateway", description="cMCP gateway (MCP streamable HTTP)")
    parser.add_argument("--config", required=True, help="YAML/JSON gateway config")
    parser.add_argument("--listen", help="override the config's HOST:PORT")
    parser.add_argument("--metrics-listen", help="override the config's metrics HOST:PORT")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except CmcpError as exc:  # no release manifest, or one that does not verify: refuse to start
        parser.error(f"{args.config}: {exc.code.value}: {exc.detail}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"{args.config}: {exc}")
    if args.listen:
        config = dataclasses.replace(config, listen=args.listen)
    if args.metrics_listen:
        config = dataclasses.replace(config, metrics_listen=args.metrics_listen)
    logs.setup(args.log_level)
    if config.metrics_listen:
        mhost, _, mport = config.metrics_listen.rpartition(":")
        start_http_server(int(mport), addr=mhost)
    _, app = build(config, _tokens(config))
    uvicorn.Server(uvicorn_config(config, app)).run()


if __name__ == "__main__":
    main()
