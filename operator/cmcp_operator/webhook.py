"""Serving certificate and server for the validating admission webhook.

Either the operator mints its own CA + serving certificate at start (kept in a private
temporary directory, handed to the apiserver as ``caBundle`` through the managed
ValidatingWebhookConfiguration) or it uses ``tls.crt``/``tls.key``/``ca.crt`` supplied in a
directory (a cert-manager or chart Secret mounted into the pod).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import kopf._core.engines.admission as kopf_admission
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import creating as kopf_creating
from kopf._cogs.clients import errors as kopf_errors

from cmcp_operator.config import OperatorConfig


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def mint_certificates(directory: Path, hosts: list[str], days: int = 365) -> tuple[Path, Path, Path]:
    """A fresh CA and a serving cert for ``hosts`` (first is the CN); returns (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmcp-operator webhook CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    unique = list(dict.fromkeys(hosts))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique[0][:64])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in unique]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class ServiceWebhookServer(kopf.WebhookServer):
    """Advertise ``clientConfig.service`` (in-cluster) instead of a URL."""

    def __init__(self, *, service_namespace: str, service_name: str, service_port: int,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = (service_namespace, service_name, service_port)

    async def __call__(self, fn: Any) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for cfg in super().__call__(fn):
            ns, name, port = self.service
            out = kopf.WebhookClientConfig(service=kopf.WebhookClientConfigService(
                namespace=ns, name=name, port=port, path=""))
            if "caBundle" in cfg:
                out["caBundle"] = cfg["caBundle"]
            yield out


def build_server(config: OperatorConfig) -> kopf.WebhookServer:
    assert config.webhook_port is not None
    host = config.webhook_host or "127.0.0.1"
    hosts = [host, "localhost", "127.0.0.1"]
    service: tuple[str, str, int] | None = None
    if config.webhook_service:
        ref, _, port = config.webhook_service.partition(":")
        ns, _, name = ref.partition("/")
        service = (ns, name, int(port or 443))
        hosts = [f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}", *hosts]
    if config.webhook_cert_dir:
        directory = Path(config.webhook_cert_dir)
        ca, cert, key = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
        if not ca.exists():
            ca = cert  # a self-signed serving cert is its own CA bundle
    else:
        ca, cert, key = mint_certificates(Path(tempfile.mkdtemp(prefix="cmcp-webhook-")), hosts)
    common: dict[str, Any] = {"addr": config.webhook_listen, "port": config.webhook_port, "host": host,
                              "cafile": str(ca), "certfile": str(cert), "pkeyfile": str(key)}
    if service:
        return ServiceWebhookServer(service_namespace=service[0], service_name=service[1],
                                    service_port=service[2], **common)
    return kopf.WebhookServer(**common)


async def _read_before_create(*, settings: Any, resource: Any, namespace: Any = None, name: str | None = None,
                              body: Any = None, logger: Any) -> Any:
    """Kopf's managed admission POSTs its webhook configuration at every start (a 409 meaning
    "exists"). RBAC cannot limit create by name, so that would take create on every webhook
    configuration in the cluster. The chart creates ours; reading it first (get on its one
    resourceName) means an installed operator never sends the create. Only when it is absent
    (an operator run outside the chart) does Kopf's create follow, and RBAC decides."""
    try:
        return await kopf_api.get(resource.get_url(namespace=namespace, name=name), settings=settings,
                                  logger=logger)
    except kopf_errors.APINotFoundError:
        return await kopf_creating.create_obj(settings=settings, resource=resource, namespace=namespace,
                                              name=name, body=body, logger=logger)
    except kopf_errors.APIForbiddenError as exc:
        logger.error(f"cannot read the webhook configuration {name!r}: {exc}")
        raise


class _AdmissionClients:
    """What Kopf's admission engine calls ``creating``: the same module, create replaced."""

    create_obj = staticmethod(_read_before_create)


def manage_existing_configuration() -> None:
    """Make Kopf's managed admission read its configuration before creating it (idempotent).

    Kopf 1.45 calls ``creating.create_obj`` from its admission engine and from nowhere else;
    tests/unit/cmcp_operator/test_webhook.py fails if a Kopf upgrade changes that."""
    kopf_admission.creating = _AdmissionClients  # type: ignore[assignment,attr-defined]
