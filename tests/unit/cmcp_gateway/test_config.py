"""Gateway config: every route pins something, and appraisal needs a signed release manifest.

A config that would make the gateway trust "any attested enclave" is refused when it is read,
not discovered later as a route that serves nobody (or, worse, anybody).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cmcp_core.errors import CmcpError, Code
from cmcp_devkit.release import write_dev_release
from cmcp_gateway.config import AUDIT_FILE, default_state_dir, parse

STATIC = {"name": "demo", "upstream": "http://127.0.0.1:9/mcp", "audience": "a", "enclaves": ["127.0.0.1:1"]}


def _doc(tmp_path: Path, *routes: dict[str, Any]) -> dict[str, Any]:
    return {"allow_simulated": True, "release": write_dev_release(tmp_path).config(), "routes": list(routes)}


def test_a_pinned_route_and_a_followed_route_load_with_enforce_only_by_default(tmp_path: Path) -> None:
    config = parse(_doc(tmp_path, {**STATIC, "expected_bundle_hashes": ["sha256:b"]},
                        {**STATIC, "name": "k8s", "kubernetes": {"namespace": "ns", "name": "r"}}))
    static, followed = config.routes
    assert static.expected_bundle_hashes == {"sha256:b"} and static.enforcement_modes == {"enforce"}
    assert static.expected().route is None and static.expected().audience == "a"
    assert followed.expected_bundle_hashes == frozenset() and followed.expected().route == "ns/r"
    assert config.appraisal.allow_simulated and len(config.appraisal.releases) == 1


def test_a_route_that_pins_nothing_is_refused(tmp_path: Path) -> None:
    for unpinned in (STATIC, {**STATIC, "expected_bundle_hashes": []}):
        with pytest.raises(ValueError, match="pins nothing"):
            parse(_doc(tmp_path, unpinned))


def test_enforcement_modes_are_enforce_or_advisory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="enforcement_modes"):
        parse(_doc(tmp_path, {**STATIC, "expected_bundle_hashes": ["sha256:b"],
                              "enforcement_modes": ["off"]}))


def test_no_release_manifest_refuses_every_guest_so_the_config_is_refused(tmp_path: Path) -> None:
    doc = _doc(tmp_path, {**STATIC, "expected_bundle_hashes": ["sha256:b"]})
    for release in ({}, {"keys": doc["release"]["keys"]}, None):
        with pytest.raises(CmcpError) as missing:
            parse({**doc, "release": release})
        assert missing.value.code is Code.REFERENCE_VALUES_MISSING, release


def test_a_manifest_not_signed_by_a_configured_key_is_refused(tmp_path: Path) -> None:
    doc = _doc(tmp_path / "one", {**STATIC, "expected_bundle_hashes": ["sha256:b"]})
    stranger = write_dev_release(tmp_path / "two")
    manifests = doc["release"]["manifests"]
    for keys in ([str(stranger.key)], []):
        with pytest.raises(CmcpError) as forged:
            parse({**doc, "release": {"manifests": manifests, "keys": keys}})
        assert forged.value.code is Code.RELEASE_MANIFEST_INVALID, keys


def test_the_audit_store_defaults_to_sqlite_under_the_state_dir(tmp_path: Path) -> None:
    pinned = {**STATIC, "expected_bundle_hashes": ["sha256:b"]}
    assert parse(_doc(tmp_path, pinned)).audit_store == f"sqlite:{default_state_dir() / AUDIT_FILE}"
    assert parse({**_doc(tmp_path, pinned), "state_dir": "/var/lib/gw"}).audit_store == \
        "sqlite:/var/lib/gw/audit.sqlite"
    dsn = "postgresql://gw@db:5432/cmcp"
    assert parse({**_doc(tmp_path, pinned), "audit": {"store": dsn}}).audit_store == dsn
    with pytest.raises(ValueError):
        parse({**_doc(tmp_path, pinned), "audit": "sqlite:/x"})


def test_the_audit_dsn_may_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = {**STATIC, "expected_bundle_hashes": ["sha256:b"]}
    doc = {**_doc(tmp_path, pinned), "audit": {"store_from_env": "TEST_AUDIT_DSN"}}
    with pytest.raises(ValueError, match="not set"):
        parse(doc)
    monkeypatch.setenv("TEST_AUDIT_DSN", "postgresql://gw:secret@db/cmcp")
    assert parse(doc).audit_store == "postgresql://gw:secret@db/cmcp"
