"""cmcp_devkit.cluster.pki: the per-run CA, its serving and client certificates, and kubeconfigs."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cmcp_devkit.cluster.pki import ClusterPKI, kubeconfig_yaml


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return ClusterPKI(tmp_path_factory.mktemp("pki") / "nested")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_a_self_signed_ca(pki: ClusterPKI) -> None:
    ca = _cert(pki.ca.cert)
    assert ca.subject == ca.issuer
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    ca.verify_directly_issued_by(ca)
    assert ca.not_valid_after_utc > ca.not_valid_before_utc


def test_private_keys_are_owner_only(pki: ClusterPKI) -> None:
    pair = pki.issue("client-mode", "someone")
    assert pki.ca.key.stat().st_mode & 0o777 == 0o600
    assert pair.key.stat().st_mode & 0o777 == 0o600
    assert pair.cert.stat().st_mode & 0o777 == 0o644


def test_client_cert_names_user_and_groups(pki: ClusterPKI) -> None:
    pair = pki.issue("node", "system:node:n1", organizations=("system:nodes",))
    cert = _cert(pair.cert)
    cert.verify_directly_issued_by(_cert(pki.ca.cert))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    groups = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in groups] == ["system:nodes"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_serving_cert_carries_its_sans(pki: ClusterPKI) -> None:
    pair = pki.issue("apiserver", "kube-apiserver", server=True, dns=("localhost",), ips=("127.0.0.1",))
    cert = _cert(pair.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_each_pki_has_its_own_ca(pki: ClusterPKI, tmp_path: Path) -> None:
    other = ClusterPKI(tmp_path)
    with pytest.raises(InvalidSignature):  # same CA name, another CA key
        _cert(other.issue("x", "x").cert).verify_directly_issued_by(_cert(pki.ca.cert))


def test_service_account_keys_are_a_matching_pair(pki: ClusterPKI) -> None:
    pair = pki.service_account_keys()
    private = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    public = serialization.load_pem_public_key(pair.cert.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert private.public_key().public_numbers() == public.public_numbers()


def test_embedded_kubeconfig_is_self_contained(pki: ClusterPKI) -> None:
    client = pki.issue("admin", "admin", organizations=("system:masters",))
    doc = yaml.safe_load(kubeconfig_yaml("https://127.0.0.1:6443", pki.ca.cert, client, "admin"))
    assert doc["current-context"] == "cmcp-e2e"
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == pki.ca.cert.read_bytes()
    user = doc["users"][0]
    assert user["name"] == "admin" and doc["contexts"][0]["context"]["user"] == "admin"
    assert base64.b64decode(user["user"]["client-key-data"]) == client.key.read_bytes()


def test_path_kubeconfig_points_at_the_files(pki: ClusterPKI) -> None:
    client = pki.issue("viewer", "viewer")
    doc = yaml.safe_load(kubeconfig_yaml("https://h:1", pki.ca.cert, client, "viewer", embed=False))
    assert doc["clusters"][0]["cluster"]["certificate-authority"] == str(pki.ca.cert)
    assert doc["users"][0]["user"] == {"client-certificate": str(client.cert), "client-key": str(client.key)}
