"""Initdata rendering is deterministic and its measured placement follows the Kata rules."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cmcp_core import initdata
from cmcp_core.gateway_identity import initdata_value
from cmcp_core.initdata import (
    CMCP_KEY,
    INITDATA_VERSION,
    CmcpEntry,
    Initdata,
    InitdataError,
    digest,
    parse,
)

ENTRY = CmcpEntry(bundle_hash="sha256:" + "a" * 64, catalog_hash="sha256:" + "b" * 64,
                  enforcement_mode="enforce", route="team-a/crm", audience="http://crm.team-a:8080/mcp")
IMAGE = "ghcr.io/cmcp-k8s/cmcp-enclave@sha256:" + "0" * 64
COMMAND = ["cmcp-enclave", "--bundle", "/etc/cmcp/bundle"]


def render(algorithm: str = "sha384", entry: CmcpEntry = ENTRY) -> bytes:
    return initdata.render(entry, image=IMAGE, command=COMMAND, algorithm=algorithm)


def test_render_is_byte_stable_and_round_trips() -> None:
    first, second = render(), render()
    assert first == second
    parsed = initdata.parse(first)
    assert parsed.version == "0.1.0"
    assert parsed.algorithm == "sha384"
    policy_digest = "sha256:" + hashlib.sha256(parsed.data["policy.rego"].encode()).hexdigest()
    assert parsed.cmcp == dataclasses.replace(ENTRY, launch_policy_digest=policy_digest, image=IMAGE)
    assert "default SetPolicyRequest := false" in parsed.data["policy.rego"]
    assert "default ExecProcessRequest := false" in parsed.data["policy.rego"]
    assert IMAGE in parsed.data["policy.rego"]


def test_any_field_change_changes_the_measurement() -> None:
    base = initdata.tdx_mrconfigid(render())
    for changed in (
        CmcpEntry(ENTRY.bundle_hash[:-1] + "c", ENTRY.catalog_hash, "enforce", ENTRY.route, ENTRY.audience),
        CmcpEntry(ENTRY.bundle_hash, ENTRY.catalog_hash, "advisory", ENTRY.route, ENTRY.audience),
        CmcpEntry(ENTRY.bundle_hash, ENTRY.catalog_hash, "enforce", ENTRY.route, "http://other/mcp"),
    ):
        assert initdata.tdx_mrconfigid(render(entry=changed)) != base


def test_tdx_placement_pads_sha256_and_keeps_sha384() -> None:
    doc256, doc384 = render("sha256"), render("sha384")
    assert initdata.tdx_mrconfigid(doc256) == hashlib.sha256(doc256).digest() + b"\x00" * 16
    assert initdata.tdx_mrconfigid(doc384) == hashlib.sha384(doc384).digest()
    with pytest.raises(InitdataError, match="does not fit"):
        initdata.tdx_mrconfigid(render("sha512"))


def test_snp_placement_truncates_to_32_bytes() -> None:
    for algorithm in ("sha256", "sha384", "sha512"):
        doc = render(algorithm)
        assert initdata.snp_host_data(doc) == hashlib.new(algorithm, doc).digest()[:32]
    assert initdata.expected_measurement(render(), "snp") == initdata.snp_host_data(render())
    with pytest.raises(InitdataError):
        initdata.expected_measurement(render(), "sgx")


def test_annotation_is_base64_of_gzip_and_reproducible() -> None:
    doc = render()
    value = initdata.encode_annotation(doc)
    assert value == initdata.encode_annotation(doc)
    assert gzip.decompress(base64.b64decode(value)) == doc
    assert initdata.decode_annotation(value) == doc


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"plain, not gzip").decode()])
def test_bad_annotation_is_a_clear_error(bad: str) -> None:
    with pytest.raises(InitdataError, match="base64 of gzip"):
        initdata.decode_annotation(bad)


@pytest.mark.parametrize("text, message", [
    (b'version = "0.2.0"\nalgorithm = "sha384"\n[data]\n', "version"),
    (b'version = "0.1.0"\nalgorithm = "md5"\n[data]\n', "algorithm"),
    (b'version = "0.1.0"\nalgorithm = "sha384"\ndata = 3\n', "table of strings"),
    (b"version = ", "not valid TOML"),
])
def test_parse_rejects_malformed_documents(text: bytes, message: str) -> None:
    with pytest.raises(InitdataError, match=message):
        initdata.parse(text)


def test_cmcp_entry_must_be_complete() -> None:
    doc = b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"cmcp.json" = \'{"bundle_hash": "x"}\'\n'
    with pytest.raises(InitdataError, match="lacks string field"):
        _ = initdata.parse(doc).cmcp


def test_values_that_would_break_the_literal_string_are_refused() -> None:
    with pytest.raises(InitdataError, match="three single quotes"):
        initdata.render(ENTRY, image="evil'''image", command=COMMAND)


def test_gateway_keys_are_measured_when_named_and_absent_otherwise() -> None:
    key = initdata_value(Ed25519PrivateKey.generate())
    plain_bytes = render()
    keyed_bytes = render(entry=replace(ENTRY, gateway_keys=(key,)))
    assert b"gateway_keys" not in plain_bytes and parse(plain_bytes).cmcp.gateway_keys == ()
    assert parse(keyed_bytes).cmcp.gateway_keys == (key,)
    assert digest(plain_bytes) != digest(keyed_bytes)  # a host cannot add or swap a gateway unseen


@pytest.mark.parametrize("keys", ["one", [1], ["not-a-key"]])
def test_gateway_keys_that_are_not_ed25519_keys_are_refused(keys: object) -> None:
    entry = ENTRY.to_json()
    entry.update(image="img", launch_policy_digest="sha256:" + "d" * 64, gateway_keys=keys)
    doc = Initdata(version=INITDATA_VERSION, algorithm="sha384", data={CMCP_KEY: json.dumps(entry)})
    with pytest.raises(InitdataError, match="gateway_keys"):
        _ = doc.cmcp


def test_annotation_bomb_is_refused_without_inflating_it() -> None:
    """A small annotation that inflates past the limit is refused after at most limit+1 bytes."""
    bomb = base64.b64encode(gzip.compress(bytes(initdata.MAX_INITDATA_BYTES * 40), mtime=0)).decode()
    assert len(bomb) < initdata.MAX_ANNOTATION_CHARS
    with pytest.raises(InitdataError, match="expands past the size limit"):
        initdata.decode_annotation(bomb)


@pytest.mark.parametrize("bad", [
    "A" * (initdata.MAX_ANNOTATION_CHARS + 4),  # over the encoded bound before any decoding
    base64.b64encode(gzip.compress(b"x", mtime=0)[:-3]).decode(),  # truncated member
    base64.b64encode(gzip.compress(b"x", mtime=0) + b"trailing").decode(),  # bytes after the member
])
def test_oversized_truncated_or_padded_annotation_is_refused(bad: str) -> None:
    with pytest.raises(InitdataError, match="initdata annotation"):
        initdata.decode_annotation(bad)
