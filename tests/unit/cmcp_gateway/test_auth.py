"""Agent identity: token file / mounted Secret, constant-time lookup, mTLS client certificates.

The mTLS test runs the real gateway under uvicorn with TLS and a client CA, an ``mcp`` SDK
client presenting a certificate, and checks the enclave decided for the certificate's identity.
"""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path

import httpx2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cmcp_core.errors import CmcpError
from cmcp_core.route_status import endpoints_from_status
from cmcp_devkit.enclave import EnclaveProcess
from cmcp_devkit.release import write_dev_release
from cmcp_devkit.upstream import free_port, run_upstream
from cmcp_gateway.app import build
from cmcp_gateway.auth import ANONYMOUS, TokenStore, authenticate, identity_from_cert
from cmcp_gateway.config import GatewayLimits, RouteConfig, TlsConfig, load
from cmcp_gateway.main import uvicorn_config
from tests.helpers.gateway_stack import AUDIENCE, gateway_config, make_guard, serve


def test_token_file_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("tok-a: alice\ntok-b: bob\n")
    (tmp_path / "t.json").write_text(json.dumps({"tok-a": "alice"}))
    for name in ("t.yaml", "t.json"):
        store = TokenStore.from_file(tmp_path / name)
        assert store.lookup("tok-a") == "alice"
        assert store.lookup("tok-a ") is None and store.lookup("tok-") is None and store.lookup("") is None


def test_token_dir_like_a_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "alice").write_text("s3cret-a\n")
    (tmp_path / "bob").write_text("s3cret-b")
    (tmp_path / "..data").mkdir()  # kubelet's atomic-writer bookkeeping is skipped
    store = TokenStore.from_dir(tmp_path)
    assert store.lookup("s3cret-a") == "alice" and store.lookup("s3cret-b") == "bob"
    assert store.lookup("alice") is None


def test_authenticate_rules() -> None:
    tokens = TokenStore({"tok-a": "alice"})
    assert authenticate({"authorization": "Bearer tok-a"}, None, tokens, False) == "alice"
    assert authenticate({}, None, tokens, True) == ANONYMOUS
    cert = {"subject": ((("commonName", "carol"),),)}
    assert authenticate({}, cert, tokens, False) == "carol"
    for headers, peer, open_route in (
        ({}, None, False),  # nothing presented
        ({"authorization": "Bearer nope"}, None, True),  # a presented credential must verify, open or not
        ({"authorization": "Basic tok-a"}, None, False),
        ({"authorization": "Bearer tok-a"}, cert, False),  # token and certificate disagree
    ):
        with pytest.raises(CmcpError) as exc:
            authenticate(headers, peer, tokens, open_route)
        assert exc.value.code.value == "UNAUTHENTICATED"


def test_identity_prefers_san_over_cn() -> None:
    cert = {"subject": ((("commonName", "cn-name"),),), "subjectAltName": (("DNS", "agent.example"),)}
    assert identity_from_cert(cert) == "agent.example"
    assert identity_from_cert({"subject": ()}) is None


def test_config_and_route_status(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(
        "allow_simulated: true\nlimits: {max_depth: 9}\nroutes:\n"
        "  - {name: demo, upstream: 'http://u/mcp', audience: a, enclaves: ['127.0.0.1:1'],\n"
        "     expected_bundle_hashes: ['sha256:" + "ab" * 32 + "']}\n"
        + yaml.safe_dump({"release": write_dev_release(tmp_path).config()})
    )
    config = load(tmp_path / "gw.yaml")
    assert config.limits.max_depth == 9 and config.routes[0].path == "/mcp/demo"
    status = {
        "pods": [
            {"address": "10.0.0.1", "attested": True},
            {"address": "10.0.0.2:7000", "attested": True},
            {"address": "10.0.0.3", "attested": False},
            {"attested": True},
        ]
    }
    assert endpoints_from_status(status) == ["10.0.0.1:50051", "10.0.0.2:7000"]
    assert endpoints_from_status(None) == []


# --- mTLS end to end ------------------------------------------------------------------------------


def _cert(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    issuer: x509.Name | None,
    ca: bool,
    san: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address(san))]), False
        )
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".pem"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


async def test_mtls_client_certificate_is_the_principal(tmp_path: Path, enclave: EnclaveProcess) -> None:
    ca, ca_key = _cert("test-ca", None, None, ca=True)
    server, server_key = _cert("gateway", ca_key, ca.subject, ca=False, san="127.0.0.1")
    client, client_key = _cert("carol", ca_key, ca.subject, ca=False)
    ca_path, _ = _write(tmp_path / "ca", ca, ca_key)
    server_cert, server_keyfile = _write(tmp_path / "server", server, server_key)
    client_cert, client_keyfile = _write(tmp_path / "client", client, client_key)
    port = free_port()
    async with run_upstream(make_guard([enclave], AUDIENCE)) as upstream:
        route = RouteConfig(name="t", upstream=upstream.url, audience=AUDIENCE, enclaves=(enclave.address,),
                            expected_bundle_hashes=frozenset({enclave.bundle_hash}))
        config = gateway_config(
            route,
            listen=f"127.0.0.1:{port}",
            limits=GatewayLimits(decide_timeout_seconds=15.0),
            tls=TlsConfig(cert=server_cert, key=server_keyfile, client_ca=ca_path, client_cert="optional"),
        )
        gateway, app = build(config, TokenStore({"tok-alice": "alice"}))
        async with serve(app, config=uvicorn_config(config, app)):
            context = ssl.create_default_context(cafile=ca_path)
            context.load_cert_chain(client_cert, client_keyfile)
            http = httpx2.AsyncClient(verify=context, timeout=30.0)
            url = f"https://127.0.0.1:{port}/mcp"
            async with Client(streamable_http_client(url, http_client=http), mode="legacy") as agent:
                await agent.call_tool("web.search", {"query": "q"})
                assert {s.agent for s in gateway.sessions.values()} == {"carol"}
                with pytest.raises(MCPError) as denied:
                    await agent.call_tool(
                        "payments.transfer", {"amount": 10**6, "currency": "EUR", "to": "x"}
                    )
                assert json.loads(denied.value.error.data["decision"]["document"])["principal"] == "carol"
            # no certificate and no token: refused
            anonymous = httpx2.AsyncClient(verify=ssl.create_default_context(cafile=ca_path), timeout=30.0)
            async with anonymous:
                resp = await anonymous.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
                assert resp.status_code == 401
        assert upstream.counter.total() == 1
