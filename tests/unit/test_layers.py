"""No product module imports ``tests`` or ``bench``, not even inside a function.

import-linter (``make lint``) checks the layers on its import graph; this test reads every
module's syntax tree itself, so an import tucked into a function body, or a literal
``importlib.import_module("tests...")``, fails here too and a product image never needs the
repository's test or benchmark code to run.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import ROOT

NOT_PRODUCT = frozenset({"tests", "bench"})


def product_folders() -> list[Path]:
    """Every workspace member: each ships as a distribution of its own."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return [ROOT / member for member in pyproject["tool"]["uv"]["workspace"]["members"]]


def imported_names(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import anywhere in ``tree``, plus literal dynamic ones."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def forbidden_imports(source: str) -> list[tuple[int, str]]:
    return [
        (line, module)
        for line, module in imported_names(ast.parse(source))
        if module.split(".", 1)[0] in NOT_PRODUCT
    ]


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import tests.helpers", [(1, "tests.helpers")]),
        ("def f():\n    from bench.common import write_json\n", [(2, "bench.common")]),
        ("import importlib\nimportlib.import_module('tests.e2e.cluster')\n", [(2, "tests.e2e.cluster")]),
        ("from . import tests\nimport testsuite\nfrom cmcp_core import bench\n", []),
    ],
)
def test_forbidden_imports_are_found_anywhere_in_a_module(source: str, found: list[tuple[int, str]]) -> None:
    assert forbidden_imports(source) == found


def test_no_product_module_imports_tests_or_bench() -> None:
    folders = product_folders()
    assert folders
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for folder in folders
        for path in sorted(folder.rglob("*.py"))
        for line, module in forbidden_imports(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "\n".join(offenders)
