"""TEE providers on their real code paths: configfs-tsm (TDX and SNP) against an emulated
configfs directory, the CoCo attestation agent over real HTTP, and start-up through each."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from cmcp_core import initdata
from cmcp_core.digest import json_digest
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.simulated import SIMULATED_QE_VENDOR_ID, SimulatedQuoteSigner
from cmcp_core.evidence.simulated_snp import is_simulated_report
from cmcp_core.evidence.snp import parse_report
from cmcp_core.evidence.tdx import parse_quote
from cmcp_devkit.enclave import NO_TRAIL, render_initdata
from cmcp_enclave.startup import StartupError, start
from cmcp_enclave.tee import CocoAaProvider, ConfigfsTsmProvider
from tests.helpers.tsm_emulator import TsmEmulator
from tests.paths import EXAMPLES


@pytest.fixture
def tsm(tmp_path: Path) -> Iterator[TsmEmulator]:
    root = tmp_path / "tsm"
    root.mkdir()
    emulators: list[TsmEmulator] = []

    def make(platform: str, measured: bytes, provider_name: str | None = None,
             simulator: bool = False) -> TsmEmulator:
        emu = TsmEmulator(root, platform, measured, provider_name, simulator)
        emu.thread.start()
        emulators.append(emu)
        return emu

    yield make  # type: ignore[misc]
    for emu in emulators:
        emu.stop.set()
        emu.thread.join()


def test_tdx_over_configfs_tsm_starts_and_binds(tsm: object, tmp_path: Path) -> None:
    data = render_initdata(EXAMPLES / "realistic")
    emu = tsm("tdx", initdata.tdx_mrconfigid(data))  # type: ignore[operator]
    (tmp_path / "i.toml").write_bytes(data)
    enc = start(bundle_dir=EXAMPLES / "realistic", initdata_path=tmp_path / "i.toml",
                provider=ConfigfsTsmProvider("tdx", str(emu.root)))
    nonce = os.urandom(32)
    report, report_data = enc.attest(nonce)
    assert report.platform == "tdx" and report.report_data == enc.binding(nonce).report_data() == report_data
    session = enc.open_session("a", trail=NO_TRAIL)
    enc.decide(session_id=session, call_id="c", principal="a", method="tools/call", tool="web.search",
               arguments_json=b"{}", arguments_digest=json_digest({}), audience="urn:cmcp:test-upstream")
    assert enc.close(session).record["runtime"]["platform"] == "intel-tdx"


def test_simulator_signed_quote_at_the_tsm_is_labelled_simulated(tsm: object, tmp_path: Path) -> None:
    """The dev kit's node stand-in serves simulator quotes at the TSM path: the provider must not
    pass them on as ``tdx`` (hardware) evidence, whatever device answered."""
    data = render_initdata(EXAMPLES / "realistic")
    emu = tsm("tdx", initdata.tdx_mrconfigid(data), simulator=True)  # type: ignore[operator]
    (tmp_path / "i.toml").write_bytes(data)
    enc = start(bundle_dir=EXAMPLES / "realistic", initdata_path=tmp_path / "i.toml",
                provider=ConfigfsTsmProvider("tdx", str(emu.root)))
    report, report_data = enc.attest(os.urandom(32))
    assert enc.startup_report.platform == report.platform == "simulated"
    assert report.report_data == report_data
    assert parse_quote(report.evidence).header.qe_vendor_id == SIMULATED_QE_VENDOR_ID


def test_snp_over_configfs_tsm_checks_host_data(tsm: object, tmp_path: Path) -> None:
    data = render_initdata(EXAMPLES / "realistic")
    emu = tsm("snp", initdata.snp_host_data(data))  # type: ignore[operator]
    (tmp_path / "i.toml").write_bytes(data)
    enc = start(bundle_dir=EXAMPLES / "realistic", initdata_path=tmp_path / "i.toml",
                provider=ConfigfsTsmProvider("snp", str(emu.root)))
    report, report_data = enc.attest(os.urandom(32))
    parsed = parse_report(report.evidence)
    assert parsed.host_data == initdata.snp_host_data(data) and parsed.report_data == report_data
    assert report.aux == b"certificate-table"
    session = enc.open_session("a", trail=NO_TRAIL)
    enc.decide(session_id=session, call_id="c", principal="a", method="tools/call", tool="web.search",
               arguments_json=b"{}", arguments_digest=json_digest({}), audience="urn:cmcp:test-upstream")
    assert enc.close(session).record["runtime"]["platform"] == "amd-sev-snp"


def test_simulator_signed_snp_report_at_the_tsm_is_labelled_simulated_snp(tsm: object,
                                                                         tmp_path: Path) -> None:
    """An SNP node stand-in's reports are not passed on as ``snp`` (hardware) evidence either."""
    data = render_initdata(EXAMPLES / "realistic")
    emu = tsm("snp", initdata.snp_host_data(data), simulator=True)  # type: ignore[operator]
    (tmp_path / "i.toml").write_bytes(data)
    enc = start(bundle_dir=EXAMPLES / "realistic", initdata_path=tmp_path / "i.toml",
                provider=ConfigfsTsmProvider("snp", str(emu.root)))
    report, report_data = enc.attest(os.urandom(32))
    assert enc.startup_report.platform == report.platform == "simulated-snp"
    assert is_simulated_report(parse_report(report.evidence)) and report.report_data == report_data
    assert report.aux == emu.snp_signer.cert_table
    session = enc.open_session("a", trail=NO_TRAIL)
    enc.decide(session_id=session, call_id="c", principal="a", method="tools/call", tool="web.search",
               arguments_json=b"{}", arguments_digest=json_digest({}), audience="urn:cmcp:test-upstream")
    assert enc.close(session).record["runtime"]["platform"] == "software-only"


def test_snp_host_data_mismatch_refuses(tsm: object, tmp_path: Path) -> None:
    data = render_initdata(EXAMPLES / "realistic")
    other = render_initdata(EXAMPLES / "realistic", audience="x")
    emu = tsm("snp", initdata.snp_host_data(other))  # type: ignore[operator]
    (tmp_path / "i.toml").write_bytes(data)
    with pytest.raises(StartupError) as err:
        start(bundle_dir=EXAMPLES / "realistic", initdata_path=tmp_path / "i.toml",
              provider=ConfigfsTsmProvider("snp", str(emu.root)))
    assert err.value.code == Code.INITDATA_MISMATCH


def test_wrong_tsm_provider_is_refused(tsm: object) -> None:
    emu = tsm("tdx", bytes(48), provider_name="sev_guest")  # type: ignore[operator]
    with pytest.raises(CmcpError) as err:
        ConfigfsTsmProvider("tdx", str(emu.root)).report(bytes(64))
    assert err.value.code == Code.TEE_PROVIDER_FAILED and "sev_guest" in err.value.detail


class _AaHandler(BaseHTTPRequestHandler):
    signer = SimulatedQuoteSigner()
    measured = bytes(48)
    broken = False
    stale = False

    def do_GET(self) -> None:  # http.server API name
        url = urlparse(self.path)
        if url.path != "/aa/evidence":
            self.send_error(404)
            return
        # like the AA's TDX attester: the runtime_data string's bytes, zero-padded to 64
        runtime_data = b"" if self.stale else parse_qs(url.query)["runtime_data"][0].encode()
        quote = self.signer.quote(runtime_data.ljust(64, b"\x00"), self.measured)
        doc = {"quote": base64.b64encode(quote).decode()}
        body = b"not json" if self.broken else json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_coco_attestation_agent_over_http(tmp_path: Path) -> None:
    data = render_initdata(EXAMPLES / "minimal")
    handler = type("H", (_AaHandler,), {"measured": initdata.tdx_mrconfigid(data)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        (tmp_path / "i.toml").write_bytes(data)
        enc = start(bundle_dir=EXAMPLES / "minimal", initdata_path=tmp_path / "i.toml",
                    provider=CocoAaProvider(url))
        report, report_data = enc.attest(os.urandom(16))
        assert report.platform == "coco-aa" and report.report_data == report_data
        from cmcp_core.evidence.tdx import parse_quote
        from cmcp_enclave.tee import aa_report_data

        quote = parse_quote(base64.b64decode(json.loads(report.evidence)["quote"]))
        assert quote.body.report_data == aa_report_data(report_data)
        handler.stale = True  # an agent replaying a report made for other runtime data
        with pytest.raises(CmcpError) as err:
            enc.attest(os.urandom(16))
        assert err.value.code == Code.TEE_PROVIDER_FAILED and "runtime data" in err.value.detail
        handler.stale = False
        handler.broken = True
        with pytest.raises(CmcpError) as err:
            enc.attest(os.urandom(16))
        assert err.value.code == Code.TEE_PROVIDER_FAILED
    finally:
        server.shutdown()
        thread.join()
    with pytest.raises(CmcpError):  # agent gone: fail closed
        CocoAaProvider(url, timeout_s=1).report(bytes(64))
