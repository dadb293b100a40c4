"""``cmcp-operator``'s command line (:mod:`cmcp_operator.main`): scope, simulation, the pinned
enclave image and the signed release are checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cmcp_core.gateway_identity import initdata_value
from cmcp_devkit.release import DevRelease, write_dev_release
from cmcp_operator.config import DEFAULT_IMAGE, OperatorConfig
from cmcp_operator.main import main, parse_args


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> DevRelease:
    return write_dev_release(tmp_path_factory.mktemp("release"))


def test_cli_requires_a_scope_and_reads_its_flags(release: DevRelease) -> None:
    with pytest.raises(SystemExit):
        parse_args(release.argv())
    cfg = parse_args(["-n", "a", "-n", "b", "--allow-simulated", "--runtime-class-tdx", "x",
                      "--reattest-interval", "7", "--priority", "5", *release.argv()])
    assert cfg.namespaces == ("a", "b") and cfg.reattest_interval == 7
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


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``parse_args`` expecting argparse's usage error; return its stderr."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cmcp-operator")
    for flag in ("--namespace", "--all-namespaces", "--release-manifest", "--enclave-image", "--peering"):
        assert flag in out


def test_usage_errors_say_what_is_wrong(release: DevRelease, capsys: pytest.CaptureFixture[str]) -> None:
    assert "give --namespace NS (repeatable) or --all-namespaces" in _usage_error(release.argv(), capsys)
    err = _usage_error(["-A", "--enclave-image", "img:latest", *release.argv()], capsys)
    assert "'img:latest' must be pinned by digest" in err
    # A namespace list and the whole cluster are exclusive scopes.
    assert "not allowed with argument" in _usage_error(["-n", "a", "-A", *release.argv()], capsys)
    assert "invalid choice: 'md5'" in _usage_error(["-A", "--initdata-algorithm", "md5", *release.argv()],
                                                   capsys)
    assert "invalid int value" in _usage_error(["-A", "--webhook-port", "x", *release.argv()], capsys)


def test_an_old_command_line_with_the_retired_tee_flag_fails_at_start(
        release: DevRelease, capsys: pytest.CaptureFixture[str]) -> None:
    """The flag that started enclaves with the simulated provider is gone (ADR 0028: on a cluster the
    evidence comes from the node's TSM, a stand-in's on dev clusters): an operator still given it
    must stop with a usage error naming it, not run as if it were honoured."""
    err = _usage_error(["-A", "--allow-simulated", "--simulate-tee", *release.argv()], capsys)
    assert "cmcp-operator: error: unrecognized arguments: --simulate-tee" in err
    # The control: the same command line without it starts (--allow-simulated stays).
    assert parse_args(["-A", "--allow-simulated", *release.argv()]).allow_simulated


def test_defaults_match_the_config_defaults(release: DevRelease) -> None:
    """Flags left out give the same settings as a bare :class:`OperatorConfig` (one source of truth)."""
    cfg = parse_args(["-A", *release.argv()])
    bare = OperatorConfig()
    assert cfg.enclave_image == DEFAULT_IMAGE
    assert cfg.runtime_classes == bare.runtime_classes
    assert (cfg.reattest_interval, cfg.attest_timeout) == (bare.reattest_interval, bare.attest_timeout)
    assert cfg.initdata_algorithm == bare.initdata_algorithm
    assert (cfg.webhook_port, cfg.webhook_listen, cfg.metrics_port, cfg.peering) == (
        None, "0.0.0.0", None, None)
    assert not cfg.allow_simulated and not cfg.verbose
    assert 0 <= cfg.priority < 2**31


def test_webhook_metrics_and_peering_flags_reach_the_config(release: DevRelease) -> None:
    cfg = parse_args(["-n", "team-a", *release.argv(), "--webhook-port", "8443", "--webhook-host", "10.0.0.5",
                      "--webhook-service", "sys/hook:9443", "--webhook-cert-dir", "/certs", "--metrics-port",
                      "9100", "--peering", "cmcp", "--liveness", "http://0.0.0.0:8080/healthz",
                      "--initdata-algorithm", "sha512", "--runtime-class-simulated", "sim", "-v"])
    assert cfg.namespaces == ("team-a",) and not cfg.all_namespaces
    assert (cfg.webhook_port, cfg.webhook_host, cfg.webhook_service, cfg.webhook_cert_dir) == (
        8443, "10.0.0.5", "sys/hook:9443", "/certs")
    assert (cfg.metrics_port, cfg.peering, cfg.liveness_endpoint) == (9100, "cmcp", "http://0.0.0.0:8080/healthz")
    assert cfg.initdata_algorithm == "sha512" and cfg.verbose
    assert cfg.runtime_class("simulated", None) == "sim"


@pytest.mark.parametrize("pattern", ["team-*", "!kube-system", "a,b", "Team"])
def test_namespace_patterns_are_refused(pattern: str, release: DevRelease,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Kopf would need to list namespaces to expand a glob (a cluster-wide read the operator is
    not granted) and with scanning off would silently watch nothing: refuse instead."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(["-n", pattern, *release.argv()])
    assert exit_.value.code == 2
    assert "--namespace takes exact namespace names" in capsys.readouterr().err


def test_main_stops_on_a_usage_error_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` parses first: without a release it exits 2 and never reaches Kopf."""
    with pytest.raises(SystemExit) as exit_:
        main(["-A"])
    assert exit_.value.code == 2 and "REFERENCE_VALUES_MISSING" in capsys.readouterr().err


def test_cli_takes_gateway_keys_and_refuses_a_key_that_is_not_ed25519(release: DevRelease,
                                                                       tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "gateway.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    cfg = parse_args(["-A", "--gateway-key-file", str(pem), *release.argv()])
    assert cfg.gateway_keys == (initdata_value(key),)
    rsa = tmp_path / "rsa.pem"
    rsa_key = generate_private_key(65537, 2048)
    rsa.write_bytes(rsa_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    for bad in (rsa, tmp_path / "absent.pem"):
        with pytest.raises(SystemExit):
            parse_args(["-A", "--gateway-key-file", str(bad), *release.argv()])


def test_gpu_flags_reach_the_config_and_a_simulated_gpu_needs_allow_simulated(
        release: DevRelease, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_args(["-n", "team-a", *release.argv(), "--runtime-class-gpu-tdx", "gpu-tdx",
                      "--gpu-resource", "nvidia.com/GH100_H100_PCIE"])
    assert cfg.gpu_provider == "nvidia" and cfg.gpu_resource == "nvidia.com/GH100_H100_PCIE"
    assert cfg.runtime_class("tdx", None, gpu=True) == "gpu-tdx"
    assert cfg.runtime_class("snp", None, gpu=True) == "kata-qemu-nvidia-gpu-snp"
    assert cfg.runtime_class("tdx", None) == "kata-qemu-tdx"
    with pytest.raises(SystemExit) as exit_:
        parse_args(["-n", "team-a", *[a for a in release.argv() if a != "--allow-simulated"],
                    "--gpu-provider", "simulated"])
    assert exit_.value.code == 2
    assert "--gpu-provider simulated needs --allow-simulated" in capsys.readouterr().err
