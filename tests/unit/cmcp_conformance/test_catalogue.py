"""The conformance catalogue: stable, well-formed IDs, the README table in step, loud look-ups."""

from __future__ import annotations

import re

import pytest

from cmcp_conformance import catalogue
from tests.paths import ROOT

README = ROOT / "conformance" / "README.md"


def test_readme_lists_exactly_the_catalogue() -> None:
    rows = re.findall(
        r"^\| ([A-Z]+(?:-TEE)?-\d{3}) \| (MUST|SHOULD) \|",
        README.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    assert rows == [(r.id, r.level.value) for r in catalogue.REQUIREMENTS]
    assert "cmcpctl conformance --target https://" in README.read_text(encoding="utf-8"), (
        "README must show how to run against a user's cluster"
    )


def test_ids_are_unique_and_well_formed() -> None:
    ids = [r.id for r in catalogue.REQUIREMENTS]
    assert len(ids) == len(set(ids))
    groups = "ATTEST|POLICY|AUDIT|FAIL|TRACE|POLICY-TEE|REPLICA|STATE|IDENT|METHOD"
    assert all(re.fullmatch(rf"({groups})-\d{{3}}", i) for i in ids)
    expected = {
        f"{group}-{n:03d}"
        for group, count in (
            ("ATTEST", 7),
            ("POLICY", 5),
            ("AUDIT", 6),
            ("FAIL", 3),
            ("TRACE", 3),
            ("POLICY-TEE", 6),
            ("REPLICA", 1),
            ("STATE", 1),
            ("IDENT", 3),
            ("METHOD", 3),
        )
        for n in range(1, count + 1)
    }
    assert set(ids) == expected



def test_get_returns_the_row_and_names_an_unknown_id() -> None:
    assert catalogue.get("POLICY-TEE-004") is catalogue.BY_ID["POLICY-TEE-004"]
    assert catalogue.get("POLICY-TEE-004").id == "POLICY-TEE-004"
    with pytest.raises(KeyError) as caught:
        catalogue.get("POLICY-999")
    assert caught.value.args[0] == "unknown conformance ID 'POLICY-999'"


def test_by_id_indexes_every_requirement_once() -> None:
    assert list(catalogue.BY_ID) == [r.id for r in catalogue.REQUIREMENTS]
    assert all(catalogue.BY_ID[r.id] is r for r in catalogue.REQUIREMENTS)


def test_active_keeps_catalogue_order_and_drops_only_withdrawn_rows() -> None:
    active = catalogue.active()
    assert list(active) == [r for r in catalogue.REQUIREMENTS if not r.withdrawn]
    assert all(not r.withdrawn for r in active)


def test_every_row_is_complete() -> None:
    for r in catalogue.REQUIREMENTS:
        assert isinstance(r.level, catalogue.Level), r.id
        assert r.title.strip() and r.title == r.title.strip(), r.id
        # ``checks`` says how the suite attacks the property: a sentence, not a placeholder
        assert len(r.checks.split()) >= 8 and r.checks.rstrip().endswith("."), r.id


def test_rows_are_frozen() -> None:
    row = catalogue.get("ATTEST-001")
    with pytest.raises(AttributeError):
        row.level = catalogue.Level.SHOULD  # type: ignore[misc]
