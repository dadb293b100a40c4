"""cmcp_devkit.enclave: starting cmcp-enclave on the simulated TEE as a process or in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmcp_core.bundle import load_bundle
from cmcp_core.errors import Code
from cmcp_devkit.enclave import (
    DEFAULT_AUDIENCE,
    EnclaveRefused,
    inprocess_enclave,
    render_initdata,
    start_enclave,
)
from cmcp_devkit.ports import wait_port
from tests.paths import EXAMPLES

BUNDLE = EXAMPLES / "realistic"


def test_refused_parses_the_last_refusal_event() -> None:
    stderr = "\n".join([
        "not json",
        json.dumps({"event": "refused", "error": "FIRST"}),
        json.dumps({"event": "starting"}),
        json.dumps({"event": "refused", "error": "INITDATA_MISMATCH"}),
        "[1, 2]",
    ])
    err = EnclaveRefused(2, stderr)
    assert (err.returncode, err.code, err.stderr) == (2, "INITDATA_MISMATCH", stderr)
    assert "enclave exited 2 (INITDATA_MISMATCH)" in str(err)


def test_refused_without_an_event_has_no_code() -> None:
    err = EnclaveRefused(1, "Traceback ...\nboom")
    assert err.code is None
    assert str(err).endswith("boom")


def test_honest_process_start_serves_and_stops(tmp_path: Path) -> None:
    with start_enclave(BUNDLE, tmp_path / "work", audience="urn:cmcp:devkit-test") as proc:
        assert proc.audience == "urn:cmcp:devkit-test"
        assert proc.initdata == render_initdata(BUNDLE, audience="urn:cmcp:devkit-test")
        assert proc.address == f"127.0.0.1:{proc.port}"
        wait_port(proc.port, timeout=10.0)
        assert proc.bundle_hash == load_bundle(BUNDLE).bundle_hash
        assert proc.kid and proc.public_key.public_bytes_raw()
    assert proc.process.poll() is not None
    assert proc.stop() == proc.process.returncode  # stopping twice is harmless


def test_initdata_other_than_the_measured_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EnclaveRefused) as info:
        start_enclave(BUNDLE, tmp_path, measured_initdata=render_initdata(BUNDLE, audience="urn:other"))
    assert info.value.code == Code.INITDATA_MISMATCH.value
    assert info.value.returncode != 0


def test_inprocess_enclave_runs_the_same_start_up(tmp_path: Path) -> None:
    enc = inprocess_enclave(BUNDLE, tmp_path / "in", audience=DEFAULT_AUDIENCE)
    assert enc.bundle_hash == load_bundle(BUNDLE).bundle_hash
    assert list((tmp_path / "in").glob("initdata-*.toml"))
