"""``cmcp-gateway`` refuses to start (exit 2, the reason on stderr) on a config it must not serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cmcp_devkit.release import write_dev_release
from cmcp_gateway.main import main

ROUTE = {"name": "demo", "upstream": "http://127.0.0.1:9/mcp", "audience": "a", "enclaves": ["127.0.0.1:1"]}


def _exit(tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(path)])
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_an_unpinned_route_exits_2_naming_the_route(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {"allow_simulated": True, "release": write_dev_release(tmp_path).config(), "routes": [ROUTE]}
    err = _exit(tmp_path, doc, capsys)
    assert "route 'demo' pins nothing" in err and "expected_bundle_hashes" in err


def test_a_config_without_release_exits_2_with_reference_values_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {"allow_simulated": True, "routes": [{**ROUTE, "expected_bundle_hashes": ["sha256:b"]}]}
    assert "REFERENCE_VALUES_MISSING" in _exit(tmp_path, doc, capsys)
