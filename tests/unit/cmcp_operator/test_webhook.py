"""The admission webhook's serving identity (:mod:`cmcp_operator.webhook`): minted or supplied
certificates, and URL or in-cluster Service mode."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import tempfile
from pathlib import Path

import kopf
import pytest
from cryptography import x509

from cmcp_operator import webhook
from cmcp_operator.config import OperatorConfig
from cmcp_operator.webhook import ServiceWebhookServer, build_server, mint_certificates


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """build_server mints into a fresh temporary directory: keep those under this test's tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_minted_serving_certificate_chains_to_its_ca(tmp_path: Path) -> None:
    ca, cert, key = mint_certificates(tmp_path, ["op.ns.svc", "127.0.0.1"])
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    root = x509.load_pem_x509_certificate(ca.read_bytes())
    leaf.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "op.ns.svc" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert key.stat().st_mode & 0o077 == 0  # private key not readable by others
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)  # the pair loads as a TLS server identity


async def test_service_mode_webhook_advertises_the_service() -> None:
    """In-cluster the apiserver reaches the webhook through a Service, not a URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = build_server(OperatorConfig(webhook_port=port, webhook_listen="127.0.0.1",
                                         webhook_service="cmcp-system/cmcp-webhook:443"))

    async def fn(*_: object, **__: object) -> dict[str, object]:
        return {}

    configs = server(fn)
    cfg = await configs.__anext__()
    try:
        assert cfg["service"] == {"namespace": "cmcp-system", "name": "cmcp-webhook", "port": 443, "path": ""}
        assert "url" not in cfg
        ca = x509.load_pem_x509_certificate(base64.b64decode(cfg["caBundle"]))
        with open(server.certfile, "rb") as fh:  # noqa: ASYNC230 - a tiny local file in a test
            leaf = x509.load_pem_x509_certificate(fh.read())
        leaf.verify_directly_issued_by(ca)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "cmcp-webhook.cmcp-system.svc" in names.get_values_for_type(x509.DNSName)
    finally:
        await configs.aclose()

def test_minted_ca_is_a_ca_and_the_leaf_is_a_server_cert(tmp_path: Path) -> None:
    ca, cert, _ = mint_certificates(tmp_path / "new", ["hook.example", "hook.example", "::1"])
    root = x509.load_pem_x509_certificate(ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "hook.example"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hook.example"]  # duplicates dropped
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


def test_url_mode_mints_for_the_advertised_host() -> None:
    server = build_server(OperatorConfig(webhook_port=_free_port(), webhook_host="10.1.2.3",
                                         webhook_listen="127.0.0.1"))
    assert type(server) is kopf.WebhookServer
    assert server.host == "10.1.2.3"
    leaf = x509.load_pem_x509_certificate(Path(str(server.certfile)).read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.1.2.3") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_supplied_certificates_are_used_and_a_self_signed_cert_is_its_own_ca(tmp_path: Path) -> None:
    ca, cert, key = mint_certificates(tmp_path, ["hook.example"])
    config = OperatorConfig(webhook_port=_free_port(), webhook_cert_dir=str(tmp_path))
    server = build_server(config)
    assert (server.cafile, server.certfile, server.pkeyfile) == (str(ca), str(cert), str(key))
    ca.unlink()  # a chart Secret with only tls.crt/tls.key
    server = build_server(config)
    assert server.cafile == str(cert) and server.pkeyfile == str(key)


def test_service_reference_without_port_defaults_to_443() -> None:
    server = build_server(OperatorConfig(webhook_port=_free_port(), webhook_service="ns/hook"))
    assert isinstance(server, ServiceWebhookServer)
    assert server.service == ("ns", "hook", 443)
    leaf = x509.load_pem_x509_certificate(Path(str(server.certfile)).read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    assert {"hook.ns.svc", "hook.ns.svc.cluster.local", "hook.ns"} <= dns


def test_kopf_admission_reads_the_configuration_before_any_create() -> None:
    """The chart-owned configuration is read (get on its name), so an installed operator needs
    no create on webhook configurations. Guards the Kopf call site a Kopf upgrade could move."""
    import inspect

    import kopf._core.engines.admission as kopf_admission
    from kopf._cogs.clients import creating

    assert "creating.create_obj(" in inspect.getsource(kopf_admission.configuration_manager)
    original = creating.create_obj
    webhook.manage_existing_configuration()
    webhook.manage_existing_configuration()  # idempotent
    assert kopf_admission.creating.create_obj is webhook._read_before_create  # type: ignore[attr-defined]
    assert creating.create_obj is original  # nothing else in Kopf is changed
