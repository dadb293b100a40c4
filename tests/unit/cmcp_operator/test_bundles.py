"""PolicyBundle logic: hashing agrees with cmcp_core, errors name file and policy, signatures,
ConfigMap key flattening and the hash-chained history."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core.bundle import load_bundle, read_bundle_files, signing_payload
from cmcp_core.crypto import public_bytes
from cmcp_core.digest import b64url
from cmcp_operator import bundles
from tests.paths import EXAMPLES

EXAMPLE = EXAMPLES / "minimal"


@pytest.fixture
def files() -> dict[str, str]:
    return read_bundle_files(EXAMPLE)


def test_valid_bundle_hash_matches_core(files: dict[str, str]) -> None:
    a = bundles.analyse({"files": files})
    assert a.valid, a.summary()
    assert a.bundle is not None
    assert a.bundle.bundle_hash == load_bundle(EXAMPLE).bundle_hash
    assert a.signature_state == "Unsigned"


def test_configmap_source_is_unflattened_and_inline_wins(files: dict[str, str]) -> None:
    cm = {bundles.path_to_key(p): t for p, t in files.items()}
    assert "policies__allow.cedar" in cm
    a = bundles.analyse({"configMapRef": {"name": "x"}}, cm)
    assert a.valid and a.bundle is not None
    assert a.bundle.bundle_hash == load_bundle(EXAMPLE).bundle_hash
    edited = bundles.analyse({"files": {"policies/allow.cedar": files["policies/allow.cedar"] + "\n"}}, cm)
    assert edited.bundle is not None and edited.bundle.bundle_hash != a.bundle.bundle_hash


def test_invalid_policy_names_file_and_policy(files: dict[str, str]) -> None:
    files["policies/bad.cedar"] = ('@id("uses-unknown-attr")\nforbid (principal, action, resource)'
                                   ' when { resource.nonexistent == 1 };\n')
    a = bundles.analyse({"files": files})
    assert not a.valid
    issue = next(i for i in a.issues if i.file == "policies/bad.cedar")
    assert issue.policy_id == "uses-unknown-attr"
    assert "policies/bad.cedar policy uses-unknown-attr" in a.summary()


def test_parse_error_and_missing_schema(files: dict[str, str]) -> None:
    files["policies/broken.cedar"] = "permit (principal, action, resource"
    assert any(i.file == "policies/broken.cedar" for i in bundles.analyse({"files": files}).issues)
    del files["schema.cedarschema"]
    missing = bundles.analyse({"files": files})
    assert [i.file for i in missing.issues] == ["schema.cedarschema"]


def test_mode_assertion_must_match_manifest(files: dict[str, str]) -> None:
    a = bundles.analyse({"files": files, "enforcementMode": "advisory"})
    assert not a.valid and a.issues[0].file == "manifest.json"


def test_signature_verified_invalid_and_required(files: dict[str, str]) -> None:
    key = Ed25519PrivateKey.generate()
    bundle_hash = load_bundle(EXAMPLE).bundle_hash
    sig = b64url(key.sign(signing_payload(bundle_hash)))
    signer = {"name": "sec", "publicKey": b64url(public_bytes(key.public_key()))}
    ok = bundles.analyse({"files": files, "signature": sig, "trustedSigners": [signer]})
    assert ok.valid and ok.signature_state == "Verified" and ok.signer == "sec"
    other = Ed25519PrivateKey.generate()
    bad_sig = b64url(other.sign(signing_payload(bundle_hash)))
    bad = bundles.analyse({"files": files, "signature": bad_sig, "trustedSigners": [signer]})
    assert not bad.valid and bad.signature_state == "Invalid"
    unsigned = bundles.analyse({"files": files, "trustedSigners": [signer], "requireSignature": True})
    assert not unsigned.valid and "unsigned" in unsigned.summary()


@pytest.mark.parametrize("path", ["a__b.cedar", "../x.cedar", "/abs.cedar", "sp ace.cedar"])
def test_unstorable_paths_rejected(path: str) -> None:
    with pytest.raises(ValueError):
        bundles.path_to_key(path)


def test_configmap_and_volume_items_restore_layout(files: dict[str, str]) -> None:
    a = bundles.analyse({"files": files})
    cm = bundles.configmap_body("demo", "ns", a, {"kind": "PolicyBundle"})
    assert cm["immutable"] is True
    assert cm["metadata"]["name"] == "cmcp-bundle-demo-" + load_bundle(EXAMPLE).bundle_hash[7:17]
    items = bundles.volume_items(files)
    assert {"key": "policies__allow.cedar", "path": "policies/allow.cedar"} in items
    assert {i["key"] for i in items} == set(cm["data"])


def test_history_chain_extends_once_and_detects_tampering() -> None:
    status: dict[str, object] = {}
    h1, head1, n1 = bundles.extend_history(status, "sha256:aa", "2026-01-01T00:00:00Z", 3)
    assert n1 == 1 and h1[0]["prev"] == bundles.GENESIS and head1 == h1[0]["hash"]
    same = bundles.extend_history({"history": h1, "historyHead": head1, "historyLength": n1},
                                  "sha256:aa", "2026-01-02T00:00:00Z", 3)
    assert same == (h1, head1, 1)  # idempotent: reconciling again adds nothing
    state = {"history": h1, "historyHead": head1, "historyLength": n1}
    for i, h in enumerate(["sha256:bb", "sha256:cc", "sha256:dd"]):
        hist, head, n = bundles.extend_history(state, h, f"2026-01-0{i + 3}T00:00:00Z", 3)
        state = {"history": hist, "historyHead": head, "historyLength": n}
    assert state["historyLength"] == 4 and len(state["history"]) == 3  # type: ignore[arg-type]
    assert bundles.verify_history(state["history"], str(state["historyHead"]))  # type: ignore[arg-type]
    forged = [dict(e) for e in state["history"]]  # type: ignore[union-attr]
    forged[1]["bundleHash"] = "sha256:ee"
    assert not bundles.verify_history(forged, str(state["historyHead"]))
