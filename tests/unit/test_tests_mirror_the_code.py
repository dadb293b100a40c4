"""Every product module has its test where a newcomer looks for it.

For ``<member>/<cmcp_pkg>/<path>/<module>.py`` that is ``tests/unit/<cmcp_pkg>/<path>/test_<module>.py``
(or ``test_<module>_<aspect>.py`` when one module has several, e.g. ``test_appraise_fuzz.py``).
Generated protobuf code and the conformance suite itself (which *is* tests) are not modules to
test. A new module without its test file fails here, so the layout cannot drift back.
"""

from __future__ import annotations

from pathlib import Path

from tests.paths import ROOT
from tests.unit.test_layers import product_folders

UNIT = ROOT / "tests" / "unit"


def _is_exempt(relative: Path) -> bool:
    parts = relative.parts
    return (relative.name == "__init__.py" or "proto" in parts
            or parts[:2] == ("cmcp_conformance", "suite"))


def modules() -> list[Path]:
    """Every product module, relative to its member folder (``cmcp_core/verify/tdx.py``)."""
    found: list[Path] = []
    for folder in product_folders():
        for path in sorted(folder.glob("cmcp_*/**/*.py")):
            relative = path.relative_to(folder)
            if not _is_exempt(relative):
                found.append(relative)
    return found


def has_test(module: Path) -> bool:
    stem = "__main__" if module.stem == "__main__" else module.stem
    directory = UNIT / module.parent
    return (directory / f"test_{stem}.py").exists() or any(directory.glob(f"test_{stem}_*.py"))


def test_the_rule_sees_every_member() -> None:
    packages = {m.parts[0] for m in modules()}
    assert {"cmcp_core", "cmcp_enclave", "cmcp_gateway", "cmcp_guard", "cmcp_operator", "cmcp_ctl",
            "cmcp_conformance", "cmcp_devkit"} <= packages


def test_every_module_has_its_unit_test_file() -> None:
    missing = [str(m) for m in modules() if not has_test(m)]
    assert missing == [], "modules without tests/unit/<package>/test_<module>.py:\n" + "\n".join(missing)
