"""JCS digests and the REPORT_DATA binding: stable, unambiguous, non-ASCII safe."""

from __future__ import annotations

import hashlib

import pytest

from cmcp_core.binding import GPU_NONCE_DOMAIN, Binding, check_nonce, gpu_nonce
from cmcp_core.digest import b64url, b64url_decode, jcs, json_digest


def test_jcs_orders_keys_and_keeps_non_ascii_as_utf8() -> None:
    assert jcs({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    assert json_digest({"b": 1, "a": 2}) == json_digest({"a": 2, "b": 1})
    assert json_digest({"a": 1}) == "sha256:" + hashlib.sha256(b'{"a":1}').hexdigest()


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xff" * 31, bytes(range(64))])
def test_b64url_round_trip(raw: bytes) -> None:
    assert b64url_decode(b64url(raw)) == raw


@pytest.mark.parametrize("text", ["abc=", "a+b/", "!!!!", "A"])
def test_b64url_rejects_non_canonical_or_foreign_text(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


def _binding(**overrides: object) -> Binding:
    fields: dict[str, object] = dict(public_key=b"\x01" * 32, bundle_hash="sha256:" + "a" * 64,
                                     catalog_hash="sha256:" + "b" * 64, enforcement_mode="enforce",
                                     nonce=b"\x02" * 32)
    fields.update(overrides)
    return Binding(**fields)  # type: ignore[arg-type]


def test_report_data_is_64_bytes_and_changes_with_every_field() -> None:
    base = _binding().report_data()
    assert len(base) == 64
    variants = [
        _binding(public_key=b"\x03" * 32), _binding(bundle_hash="sha256:" + "c" * 64),
        _binding(catalog_hash="sha256:" + "d" * 64), _binding(enforcement_mode="advisory"),
        _binding(nonce=b"\x04" * 32),
    ]
    digests = {v.report_data() for v in variants}
    assert base not in digests and len(digests) == len(variants)


def test_nonce_size_is_bounded() -> None:
    check_nonce(b"\x00" * 16)
    check_nonce(b"\x00" * 64)
    for bad in (b"", b"\x00" * 15, b"\x00" * 65):
        with pytest.raises(ValueError):
            check_nonce(bad)


def test_the_gpu_nonce_is_a_domain_separated_hash_of_the_cpu_report_data() -> None:
    report_data = Binding(bytes(32), "sha256:b", "sha256:c", "enforce", b"n" * 16).report_data()
    nonce = gpu_nonce(report_data)
    assert len(nonce) == 32
    assert nonce == hashlib.sha256(GPU_NONCE_DOMAIN + b"\x00" + report_data).digest()
    assert nonce != hashlib.sha256(report_data).digest() and nonce not in report_data
    assert gpu_nonce(bytes(64)) != gpu_nonce(b"\x01" + bytes(63))
    assert Binding(bytes(32), "sha256:b", "sha256:c", "enforce", b"n" * 16).gpu_nonce() == nonce


def test_the_gpu_nonce_needs_a_whole_report_data() -> None:
    for size in (0, 32, 63, 65):
        with pytest.raises(ValueError):
            gpu_nonce(bytes(size))
