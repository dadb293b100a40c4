"""The confidential-node stand-in, mounted for real (FUSE) without a cluster: the enclave's
production ``tdx`` and ``snp`` providers and start-up check run against it, and an attacker who hands the
enclave other initdata than the registered (annotation) one is refused. A weakened stand-in that
measures the container's own file instead shows the test would catch that hole."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cmcp_core import initdata
from cmcp_core.errors import Code
from cmcp_core.evidence.simulated import SIMULATED_QE_VENDOR_ID, SIMULATED_RTMRS
from cmcp_core.evidence.simulated_snp import (
    SIMULATED_SNP_MEASUREMENT,
    is_simulated_report,
    verify_simulated_report,
)
from cmcp_core.evidence.snp import parse_report
from cmcp_core.evidence.tdx import parse_quote
from cmcp_core.verify import AppraisalPolicy
from cmcp_core.verify.appraise import appraise_response
from cmcp_devkit.cluster.tsm_hook import register
from cmcp_devkit.cluster.tsm_standin import guest_rtmrs, guest_snp_measurement
from cmcp_devkit.enclave import render_initdata
from cmcp_devkit.release import dev_appraisal
from cmcp_enclave.server import attest_response
from cmcp_enclave.startup import StartupError, start
from cmcp_enclave.tee import ConfigfsTsmProvider
from tests.paths import EXAMPLES

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/fuse").exists() or not ctypes.util.find_library("fuse3"),
    reason="the stand-in is a FUSE file system: needs root, /dev/fuse and libfuse3",
)
BUNDLE = EXAMPLES / "realistic"
CID = "c0ffee" * 10


def _mounted(mount: Path) -> bool:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(mount) for line in lines)


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``standin(module="cmcp_devkit.cluster.tsm_standin", *extra)`` -> the mount point."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(module: str = "cmcp_devkit.cluster.tsm_standin", *extra: str) -> Path:
        mount, registry = tmp_path / "tsm", tmp_path / "registry"
        registry.mkdir(exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", module, "--mount", str(mount), "--registry",
                                 str(registry), *extra], stderr=subprocess.PIPE)
        procs.append((proc, mount))
        deadline = time.monotonic() + 60
        while not (mount.exists() and _mounted(mount)):
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
            assert time.monotonic() < deadline, "the stand-in did not mount"
            time.sleep(0.05)
        return mount

    yield run
    for proc, mount in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if _mounted(mount):
            ctypes.CDLL(None, use_errno=True).umount2(str(mount).encode(), 2)


def _report_dir(mount: Path, cid: str = CID) -> Path:
    return mount / cid / "config" / "tsm" / "report"


def _annotation_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "cc_init_data"
    path.write_text(initdata.encode_annotation(data))
    return path


def test_enclave_starts_on_the_annotations_initdata_and_attests_software_only(
    standin: Callable[..., Path], tmp_path: Path
) -> None:
    data = render_initdata(BUNDLE)
    mount = standin()
    register(tmp_path / "registry", CID, "tdx", data)
    enc = start(bundle_dir=BUNDLE, initdata_path=_annotation_file(tmp_path, data), initdata_annotation=True,
                provider=ConfigfsTsmProvider("tdx", str(_report_dir(mount))))
    nonce = os.urandom(32)
    report, report_data = enc.attest(nonce)
    quote = parse_quote(report.evidence)
    assert report.platform == "simulated" and quote.header.qe_vendor_id == SIMULATED_QE_VENDOR_ID
    assert quote.body.mrconfigid == initdata.tdx_mrconfigid(data) and quote.body.report_data == report_data
    response = attest_response(enc, nonce)
    verdict = appraise_response(response, nonce, dev_appraisal(), expected_initdata=data)
    assert verdict.ok and verdict.assurance == "software-only", verdict.message
    strict = appraise_response(response, nonce, AppraisalPolicy(releases=dev_appraisal().releases))
    assert not strict.ok and strict.code == Code.SIMULATED_NOT_ALLOWED.value
    assert list(_report_dir(mount).iterdir()) == []  # each report's entry was removed after use


def test_snp_enclave_starts_on_the_annotations_initdata_and_attests_software_only(
    standin: Callable[..., Path], tmp_path: Path
) -> None:
    """The production ``snp`` provider: a simulated SNP report with HOST_DATA of the registered
    initdata and the simulator's certificate table as ``auxblob``, labelled ``simulated-snp``."""
    data = render_initdata(BUNDLE)
    mount = standin()
    register(tmp_path / "registry", CID, "snp", data)
    enc = start(bundle_dir=BUNDLE, initdata_path=_annotation_file(tmp_path, data), initdata_annotation=True,
                provider=ConfigfsTsmProvider("snp", str(_report_dir(mount))))
    nonce = os.urandom(32)
    report, report_data = enc.attest(nonce)
    parsed = verify_simulated_report(report.evidence, report.aux)
    assert report.platform == "simulated-snp" and is_simulated_report(parsed)
    assert parsed.host_data == initdata.snp_host_data(data) and parsed.report_data == report_data
    assert parsed.measurement == SIMULATED_SNP_MEASUREMENT
    response = attest_response(enc, nonce)
    verdict = appraise_response(response, nonce, dev_appraisal(), expected_initdata=data)
    assert verdict.ok and verdict.assurance == "software-only", verdict.message
    strict = appraise_response(response, nonce, AppraisalPolicy(releases=dev_appraisal().releases))
    assert not strict.ok and strict.code == Code.SIMULATED_NOT_ALLOWED.value


@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_initdata_other_than_the_annotation_is_refused_at_start(platform: str, standin: Callable[..., Path],
                                                                tmp_path: Path) -> None:
    """The attacker: the pod's annotation (what the hook registered) says one thing, the file
    the enclave is handed says another."""
    measured, handed = render_initdata(BUNDLE), render_initdata(BUNDLE, audience="urn:attacker")
    mount = standin()
    register(tmp_path / "registry", CID, platform, measured)
    with pytest.raises(StartupError) as err:
        start(bundle_dir=BUNDLE, initdata_path=_annotation_file(tmp_path, handed), initdata_annotation=True,
              provider=ConfigfsTsmProvider(platform, str(_report_dir(mount))))
    assert err.value.code == Code.INITDATA_MISMATCH


@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_a_stand_in_that_measures_the_handed_file_would_let_the_attacker_in(
    platform: str, standin: Callable[..., Path], tmp_path: Path
) -> None:
    """Weakened component: the same attack starts an enclave, so the test above catches the hole."""
    measured, handed = render_initdata(BUNDLE), render_initdata(BUNDLE, audience="urn:attacker")
    handed_file = _annotation_file(tmp_path, handed)
    mount = standin("tests.helpers.weakened_tsm_standin", "--handed-file", str(handed_file))
    register(tmp_path / "registry", CID, platform, measured)
    enc = start(bundle_dir=BUNDLE, initdata_path=handed_file, initdata_annotation=True,
                provider=ConfigfsTsmProvider(platform, str(_report_dir(mount))))
    assert enc.entry.audience == "urn:attacker"


def test_a_guest_booted_with_extra_kernel_params_is_refused_by_the_releases_rtmr2(
    standin: Callable[..., Path], tmp_path: Path
) -> None:
    """The host boots another guest (adds kernel parameters): every initdata check passes, the
    quote's RTMR2 is no longer the release's, and only that refuses it. The same enclave on the
    genuine guest (no parameters added) is accepted, so the refusal is the RTMR2's alone."""
    data = render_initdata(BUNDLE)
    mount = standin()
    verdicts = {}
    for cid, params in ((CID, "init=/bin/sh"), ("5a" * 32, "")):
        register(tmp_path / "registry", cid, "tdx", data, params)
        provider = ConfigfsTsmProvider("tdx", str(_report_dir(mount, cid)))
        enc = start(bundle_dir=BUNDLE, initdata_path=_annotation_file(tmp_path, data),
                    initdata_annotation=True, provider=provider)
        nonce = os.urandom(32)
        response = attest_response(enc, nonce)
        assert parse_quote(response.evidence).body.rtmrs == guest_rtmrs(params)
        verdicts[params] = appraise_response(response, nonce, dev_appraisal(), expected_initdata=data)
    assert guest_rtmrs("")[:3] == SIMULATED_RTMRS  # the genuine guest is the release's
    forged = verdicts["init=/bin/sh"]
    assert not forged.ok and forged.code == Code.REFERENCE_VALUE_MISMATCH.value
    assert "RTMR2" in forged.message, forged.message
    assert verdicts[""].ok, verdicts[""].message


def test_an_snp_guest_booted_with_extra_kernel_params_is_refused_by_the_releases_measurement(
    standin: Callable[..., Path], tmp_path: Path
) -> None:
    """SNP's launch digest covers the kernel command line: the host's added parameters give
    another MEASUREMENT, which only the release refuses; the genuine guest is accepted."""
    data = render_initdata(BUNDLE)
    mount = standin()
    verdicts = {}
    for cid, params in ((CID, "init=/bin/sh"), ("5a" * 32, "")):
        register(tmp_path / "registry", cid, "snp", data, params)
        provider = ConfigfsTsmProvider("snp", str(_report_dir(mount, cid)))
        enc = start(bundle_dir=BUNDLE, initdata_path=_annotation_file(tmp_path, data),
                    initdata_annotation=True, provider=provider)
        nonce = os.urandom(32)
        response = attest_response(enc, nonce)
        assert parse_report(response.evidence).measurement == guest_snp_measurement(params)
        verdicts[params] = appraise_response(response, nonce, dev_appraisal(), expected_initdata=data)
    assert guest_snp_measurement("") == SIMULATED_SNP_MEASUREMENT  # the genuine guest is the release's
    forged = verdicts["init=/bin/sh"]
    assert not forged.ok and forged.code == Code.REFERENCE_VALUE_MISMATCH.value
    assert "MEASUREMENT" in forged.message, forged.message
    assert verdicts[""].ok, verdicts[""].message


def test_a_container_reaches_only_a_registered_tree(standin: Callable[..., Path], tmp_path: Path) -> None:
    mount = standin()
    register(tmp_path / "registry", CID, "tdx", render_initdata(BUNDLE))
    register(tmp_path / "registry", "5a" * 32, "snp", render_initdata(BUNDLE))
    register(tmp_path / "registry", "6b" * 32, "sgx", render_initdata(BUNDLE))
    assert os.listdir(mount) == []  # containers are not listed
    assert not (mount / "unregistered").exists()
    assert not (mount / ("6b" * 32)).exists()  # a platform the stand-in does not serve: no TSM
    assert sorted(os.listdir(mount / CID)) == sorted(os.listdir(mount / ("5a" * 32))) == ["config"]


def test_configfs_rules_for_entries(standin: Callable[..., Path], tmp_path: Path) -> None:
    mount = standin()
    register(tmp_path / "registry", CID, "tdx", render_initdata(BUNDLE))
    entry = _report_dir(mount) / "e1"
    entry.mkdir()
    assert sorted(os.listdir(entry)) == ["generation", "inblob", "outblob", "provider"]
    assert (entry / "provider").read_text() == "tdx_guest\n"
    assert (entry / "outblob").read_bytes() == b""  # no report before inblob
    with pytest.raises(OSError) as err:
        (entry / "inblob").write_bytes(bytes(65))
    assert err.value.errno == errno.EINVAL
    (entry / "inblob").write_bytes(b"\x01" * 64)
    assert parse_quote((entry / "outblob").read_bytes()).body.report_data == b"\x01" * 64
    assert (entry / "generation").read_text() == "1\n"
    with pytest.raises(OSError) as err:
        (mount / CID / "config" / "elsewhere").mkdir()
    assert err.value.errno == errno.EPERM
    entry.rmdir()
    assert not entry.exists()
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "registry" / CID).unlink()
    assert not (mount / CID).exists()  # unregistered (poststop): the tree is gone


def test_configfs_rules_for_snp_entries(standin: Callable[..., Path], tmp_path: Path) -> None:
    mount = standin()
    register(tmp_path / "registry", CID, "snp", render_initdata(BUNDLE))
    entry = _report_dir(mount) / "e1"
    entry.mkdir()
    assert sorted(os.listdir(entry)) == ["auxblob", "generation", "inblob", "outblob", "provider"]
    assert (entry / "provider").read_text() == "sev_guest\n"
    assert (entry / "outblob").read_bytes() == (entry / "auxblob").read_bytes() == b""  # none before inblob
    (entry / "inblob").write_bytes(b"\x02" * 64)
    report = verify_simulated_report((entry / "outblob").read_bytes(), (entry / "auxblob").read_bytes())
    assert report.report_data == b"\x02" * 64
    entry.rmdir()
