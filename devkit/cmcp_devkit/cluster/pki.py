"""Per-run PKI for the local control plane: a CA, serving and client certs, SA signing keys.

Why generated per run: nothing long-lived to leak or expire, and every identity the
apiserver sees (admin in system:masters, each node as system:node:<name>, the controller
manager and scheduler) is a real client certificate checked by the real authenticator.
EC P-256 keys keep generation fast on two cores.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


class ClusterPKI:
    """A CA plus helpers that issue certs signed by it into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmcp-e2e-ca")])
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = CertPair(
            _write(self.dir / "ca.crt", self._ca_cert.public_bytes(serialization.Encoding.PEM), 0o644),
            _write(self.dir / "ca.key", _key_pem(self._ca_key)),
        )

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> CertPair:
        """Issue a client (or serving, with SANs) certificate; O= values become k8s groups."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    if server
                    else [ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if dns or ips:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return CertPair(
            _write(self.dir / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644),
            _write(self.dir / f"{name}.key", _key_pem(key)),
        )

    def service_account_keys(self) -> CertPair:
        """Key pair the apiserver signs SA tokens with (cert field holds the public key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return CertPair(_write(self.dir / "sa.pub", pub, 0o644), _write(self.dir / "sa.key", _key_pem(key)))


def kubeconfig_yaml(server: str, ca: Path, client: CertPair, user: str, *, embed: bool = True) -> str:
    """A one-context kubeconfig; embedded data so the file is self-contained and portable."""
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    if embed:
        cluster_ca = f"certificate-authority-data: {b64(ca)}"
        user_cert = f"client-certificate-data: {b64(client.cert)}\n    client-key-data: {b64(client.key)}"
    else:
        cluster_ca = f"certificate-authority: {ca}"
        user_cert = f"client-certificate: {client.cert}\n    client-key: {client.key}"
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: cmcp-e2e\n  cluster:\n    server: {server}\n    {cluster_ca}\n"
        f"users:\n- name: {user}\n  user:\n    {user_cert}\n"
        f"contexts:\n- name: cmcp-e2e\n  context:\n    cluster: cmcp-e2e\n    user: {user}\n"
        "current-context: cmcp-e2e\n"
    )
