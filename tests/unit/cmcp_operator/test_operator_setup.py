"""Operator start-up pieces: CLI validation, the webhook's minted certificates, the RBAC list."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from cmcp_devkit.release import DevRelease, write_dev_release
from cmcp_operator import rbac
from cmcp_operator.main import parse_args
from cmcp_operator.webhook import mint_certificates


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> DevRelease:
    return write_dev_release(tmp_path_factory.mktemp("release"))


def test_cli_requires_scope_and_explicit_simulation(release: DevRelease) -> None:
    with pytest.raises(SystemExit):
        parse_args(release.argv())
    with pytest.raises(SystemExit):
        parse_args(["-n", "a", "--simulate-tee", *release.argv()])
    cfg = parse_args(["-n", "a", "-n", "b", "--allow-simulated", "--simulate-tee", "--runtime-class-tdx", "x",
                      "--reattest-interval", "7", "--priority", "5", *release.argv()])
    assert cfg.namespaces == ("a", "b") and cfg.simulate_tee and cfg.reattest_interval == 7
    assert cfg.runtime_class("tdx", None) == "x" and cfg.priority == 5
    assert cfg.allow_simulated and cfg.appraisal.releases == (release.release,)
    assert parse_args(["-A", *release.argv()]).all_namespaces


def test_cli_takes_the_appraisal_settings(release: DevRelease, tmp_path: Path) -> None:
    cfg = parse_args(["-A", *release.argv(), "--acceptable-tcb", "UpToDate", "--tdx-collateral-dir",
                      str(tmp_path), "--pccs-url", "https://pccs.example/"])
    policy = cfg.appraisal
    assert policy.accepted_tcb_statuses == frozenset({"UpToDate"}) and not policy.allow_simulated
    assert (policy.collateral_dir, policy.pccs_url) == (str(tmp_path), "https://pccs.example/")
    assert parse_args(["-A", *release.argv()]).appraisal.accepted_tcb_statuses == frozenset(
        {"UpToDate", "SWHardeningNeeded"})


def test_cli_refuses_to_start_without_a_verified_release(release: DevRelease, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """No manifest, or one signed by another key, is a usage error (exit 2) naming its code."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(["-A"])
    assert exit_.value.code == 2 and "REFERENCE_VALUES_MISSING" in capsys.readouterr().err
    stranger = write_dev_release(tmp_path, name="stranger")
    with pytest.raises(SystemExit) as exit_:
        parse_args(["-A", "--release-manifest", str(release.manifest), "--release-key", str(stranger.key)])
    assert exit_.value.code == 2 and "RELEASE_MANIFEST_INVALID" in capsys.readouterr().err
    # The same manifest with the key that signed it starts.
    assert parse_args(["-A", *release.argv()]).appraisal.releases


def test_cli_refuses_an_enclave_image_by_tag(release: DevRelease) -> None:
    with pytest.raises(SystemExit):
        parse_args(["-A", "--enclave-image", "ghcr.io/cmcp-k8s/cmcp-enclave:0.1.0", *release.argv()])
    pinned = "r/e@sha256:" + "1" * 64
    assert parse_args(["-A", "--enclave-image", pinned, *release.argv()]).enclave_image == pinned


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


def test_rbac_is_explicit_and_printable(capsys: pytest.CaptureFixture[str]) -> None:
    for rule in rbac.rules():
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    pod_rules = [r for r in rbac.rules() if "pods" in r["resources"]]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in pod_rules)  # never write pods
    assert any(r["resources"] == ["pods/status"] and r["verbs"] == ["patch"] for r in rbac.rules())
    rbac.main([])
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["kind"] == "ClusterRole" and doc["rules"] == rbac.rules()


async def test_service_mode_webhook_advertises_the_service() -> None:
    """In-cluster the apiserver reaches the webhook through a Service, not a URL."""
    import base64
    import socket

    from cmcp_operator.config import OperatorConfig
    from cmcp_operator.webhook import build_server

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
