"""Shared names (:mod:`cmcp_operator.constants`): they agree with ``cmcp_core.crd`` and the CRD
files, and every label, annotation, finalizer and condition type is a valid Kubernetes key."""

from __future__ import annotations

import re

import pytest
import yaml

from cmcp_core import crd
from cmcp_operator import constants as c
from tests.paths import ROOT

# Kubernetes qualified names: optional DNS-subdomain prefix (<= 253) "/" name (<= 63).
PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def _qualified(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (not prefix or (len(prefix) <= 253 and bool(PREFIX.fullmatch(prefix)))) \
        and len(name) <= 63 and bool(NAME.fullmatch(name))


def test_api_names_are_cmcp_cores() -> None:
    assert (c.GROUP, c.VERSION, c.API_VERSION) == (crd.GROUP, crd.VERSION, crd.API_VERSION)
    assert (c.BUNDLE_PLURAL, c.ROUTE_PLURAL) == (crd.BUNDLE_PLURAL, crd.ROUTE_PLURAL)


@pytest.mark.parametrize(("plural", "kind"),
                         [(c.BUNDLE_PLURAL, c.BUNDLE_KIND), (c.ROUTE_PLURAL, c.ROUTE_KIND)])
def test_crd_files_declare_these_names(plural: str, kind: str) -> None:
    doc = yaml.safe_load((ROOT / "crds" / f"{plural}.{c.GROUP}.yaml").read_text())
    spec = doc["spec"]
    assert doc["metadata"]["name"] == f"{plural}.{c.GROUP}"
    assert (spec["group"], spec["names"]["plural"], spec["names"]["kind"]) == (c.GROUP, plural, kind)
    assert c.VERSION in [v["name"] for v in spec["versions"] if v.get("served")]


def test_label_annotation_and_condition_keys_are_valid() -> None:
    keys = [c.ROUTE_LABEL, c.COMPONENT_LABEL, c.MANAGED_BY_LABEL, c.BUNDLE_LABEL, c.BUNDLE_HASH_LABEL,
            c.BUNDLE_HASH_ANNOTATION, c.INITDATA_DIGEST_ANNOTATION, c.ATTESTED_CONDITION, c.FINALIZER,
            c.BUNDLE_FINALIZER, c.NFD_TDX, c.NFD_SNP, c.KATA_TDX, c.KATA_SNP]
    for key in keys:
        assert _qualified(key), key
    owned = [c.ROUTE_LABEL, c.BUNDLE_LABEL, c.BUNDLE_HASH_LABEL, c.ATTESTED_CONDITION, c.FINALIZER,
             c.BUNDLE_FINALIZER]
    assert all(k.startswith(f"{c.GROUP}/") for k in owned)  # ours live under our group
    assert c.FINALIZER != c.BUNDLE_FINALIZER  # Kopf's on routes, ours on bundles
    for value in (c.COMPONENT_ENCLAVE, c.MANAGED_BY, c.FIELD_MANAGER):
        assert len(value) <= 63 and NAME.fullmatch(value)


def test_condition_types_are_distinct_camel_case() -> None:
    types = [c.COND_VALID, c.COND_READY, c.COND_ATTESTED, c.COND_DEGRADED, c.COND_ROLLOUT]
    assert len(set(types)) == len(types)
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", t) for t in types)


def test_ports_and_paths() -> None:
    assert 0 < c.ENCLAVE_PORT < 65536 and 0 < c.METRICS_PORT < 65536 and c.ENCLAVE_PORT != c.METRICS_PORT
    assert c.INITDATA_PATH.startswith(c.INITDATA_DIR + "/") and c.BUNDLE_MOUNT.startswith("/")
