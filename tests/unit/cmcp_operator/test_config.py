"""Operator settings (:mod:`cmcp_operator.config`): safe defaults that fail closed, and the
runtime-class choice per TEE."""

from __future__ import annotations

import dataclasses

import pytest

from cmcp_core.launch_policy import IMAGE_DIGEST_RE
from cmcp_devkit.release import dev_appraisal
from cmcp_operator.config import DEFAULT_IMAGE, OperatorConfig


def test_default_image_is_pinned_but_names_no_image() -> None:
    assert IMAGE_DIGEST_RE.fullmatch(DEFAULT_IMAGE)
    assert DEFAULT_IMAGE.endswith("@sha256:" + "0" * 64)
    assert OperatorConfig().enclave_image == DEFAULT_IMAGE


def test_defaults_accept_no_guest() -> None:
    """Without a configured release nothing is accepted, simulated evidence least of all."""
    cfg = OperatorConfig()
    assert cfg.appraisal.releases == () and not cfg.allow_simulated
    assert not cfg.all_namespaces and cfg.namespaces == ()
    assert cfg.webhook_port is None and cfg.peering is None


def test_allow_simulated_follows_the_appraisal_policy() -> None:
    assert OperatorConfig(appraisal=dev_appraisal()).allow_simulated


def test_runtime_class_prefers_the_route_override_then_the_tee_default() -> None:
    cfg = OperatorConfig()
    assert cfg.runtime_class("tdx", None) == "kata-qemu-tdx"
    assert cfg.runtime_class("snp", None) == "kata-qemu-snp"
    assert cfg.runtime_class("any", None) == "kata-cc"
    assert cfg.runtime_class("tdx", "custom") == "custom"
    assert cfg.runtime_class("simulated", None) is None  # empty default: no runtime class at all
    assert cfg.runtime_class("sgx", None) is None  # unknown TEE
    assert cfg.runtime_class("simulated", "") is None


def test_config_is_frozen_and_instances_do_not_share_mutable_defaults() -> None:
    a, b = OperatorConfig(), OperatorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.verbose = True  # type: ignore[misc]
    a.runtime_classes["tdx"] = "changed"
    assert b.runtime_class("tdx", None) == "kata-qemu-tdx"
