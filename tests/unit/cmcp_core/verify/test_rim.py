"""NVIDIA RIMs: the real signed SWID tags verify to the pinned RIM root; forgeries and damage do not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from cmcp_core.errors import Code
from cmcp_core.evidence.gpu_simulated import SimulatedGpu
from cmcp_core.verify.certchain import fingerprint
from cmcp_core.verify.rim import RIM_ROOT_SHA256, pinned_rim_root, signing_chain, verify_rim
from cmcp_core.verify.verdict import VerifyFailure
from tests.helpers import gpu_samples

AT = int(gpu_samples.PINNED.timestamp())


def _code(blob: bytes, now: int = AT, **kwargs) -> Code:  # type: ignore[no-untyped-def]
    with pytest.raises(VerifyFailure) as info:
        verify_rim(blob, now, **kwargs)
    return info.value.code


def test_the_real_driver_and_vbios_rims_verify_to_the_pinned_root() -> None:
    driver, vbios = (verify_rim(blob, AT) for blob in gpu_samples.rims())
    assert (driver.product, driver.version) == ("GH100", "545.00")
    assert (vbios.product, vbios.version) == ("GH100", "96.00.5e.00.01")
    assert driver.chain[-1] == pinned_rim_root() and fingerprint(pinned_rim_root()) == RIM_ROOT_SHA256
    assert 7 in driver.measurements and 7 not in vbios.measurements
    assert all(len(alt) == 48 for m in driver.measurements.values() for alt in m.alternatives)


def test_a_changed_golden_value_breaks_the_signature() -> None:
    driver = gpu_samples.rims()[0]
    changed = driver.replace(b'index="7" active="True" alternatives="1" ns2:Hash0="0e',
                             b'index="7" active="True" alternatives="1" ns2:Hash0="1e')
    assert changed != driver
    assert _code(changed) == Code.GPU_RIM_BAD_SIGNATURE


def test_an_inactive_measurement_switched_on_breaks_the_signature() -> None:
    driver = gpu_samples.rims()[0]
    changed = driver.replace(b'index="0" active="False"', b'index="0" active="True"', 1)
    assert _code(changed) == Code.GPU_RIM_BAD_SIGNATURE


def test_a_rim_signed_by_another_root_fails_at_the_chain() -> None:
    assert _code(SimulatedGpu().rim("driver")) == Code.GPU_RIM_CHAIN_INVALID


def test_the_simulators_rim_verifies_to_its_own_root_only_when_given() -> None:
    gpu = SimulatedGpu()
    rim = verify_rim(gpu.rim("vbios"), AT, root=gpu.rim_root)
    assert rim.version == "96.00.9f.00.01" and signing_chain(gpu.rim("vbios"))[-1] == gpu.rim_root


def test_a_rim_whose_signer_has_expired_fails_as_expired() -> None:
    today = int(datetime(2026, 12, 6, tzinfo=UTC).timestamp())
    assert _code(gpu_samples.rims()[0], today) == Code.GPU_CERT_EXPIRED


def test_a_rim_without_its_signature_or_not_a_swid_tag_is_invalid() -> None:
    driver = gpu_samples.rims()[0]
    doc = etree.fromstring(driver)
    for sig in doc.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        doc.remove(sig)
    assert _code(etree.tostring(doc)) == Code.GPU_RIM_INVALID
    assert _code(b"<html/>") == Code.GPU_RIM_INVALID
    assert _code(b"not xml") == Code.GPU_RIM_INVALID


def test_a_rim_carrying_too_many_certificates_is_invalid() -> None:
    driver = gpu_samples.rims()[0]
    start = driver.index(b"<ds:X509Certificate>")
    end = driver.index(b"</ds:X509Certificate>") + len(b"</ds:X509Certificate>")
    padded = driver[:start] + driver[start:end] * 9 + driver[end:]
    assert _code(padded) == Code.GPU_RIM_INVALID


def test_an_entity_expansion_is_not_resolved() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaaaaaaaa">]>'
            b'<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd">&a;</SoftwareIdentity>')
    assert _code(bomb) == Code.GPU_RIM_INVALID


def test_an_unsigned_payload_added_to_a_rim_breaks_its_signature() -> None:
    """The enveloped signature covers the whole tag, so a second Payload cannot ride along."""
    gpu = SimulatedGpu()
    rim = gpu.rim("driver")
    doc = etree.fromstring(rim)
    assert _code(etree.tostring(doc).replace(b"</SoftwareIdentity>", b"<Payload/></SoftwareIdentity>"),
                 root=gpu.rim_root) == Code.GPU_RIM_BAD_SIGNATURE


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_changed_rim_byte_fails_with_a_rim_code(data: st.DataObject) -> None:
    driver = bytearray(gpu_samples.rims()[0])
    offset = data.draw(st.integers(min_value=0, max_value=len(driver) - 1))
    driver[offset] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        rim = verify_rim(bytes(driver), AT)
    except VerifyFailure as exc:
        assert exc.code in {Code.GPU_RIM_INVALID, Code.GPU_RIM_BAD_SIGNATURE, Code.GPU_RIM_CHAIN_INVALID,
                            Code.GPU_CERT_EXPIRED}, exc.detail
    else:  # only whitespace between attributes or in base64 is free to change
        assert rim.measurements == verify_rim(gpu_samples.rims()[0], AT).measurements
